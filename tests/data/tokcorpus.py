"""A small Russian + English dataset folder (splits/*.jsonl) for the tokenizer and shard tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from homellm.data.layout import SPLITS, DatasetLayout
from homellm.data.records import Conversation, Document, Record, Turn

_RU = ("привет мир как дела сегодня хорошая погода книга читать дом улица ёлка "
      "человек время жизнь говорить знать рука день глаз работа слово место")
_EN = "hello world the book read house street time life word place hand day"
RU, EN = _RU.split(), _EN.split()


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    text = " ".join(rng.choice(words) for _ in range(n))
    return text[0].upper() + text[1:] + rng.choice([".", "!", "?", "…"])


def make_records(split: str, count: int = 40, seed: int = 0) -> list[Record]:
    rng = random.Random(f"{seed}-{split}")
    records: list[Record] = []
    for i in range(count):
        if i % 3 == 0:
            turns = [Turn("system", "Ты — помощник.")] if i % 2 else []
            for _ in range(rng.randint(1, 3)):
                turns.append(Turn("user", _sentence(rng, RU + EN, rng.randint(2, 8))))
                turns.append(Turn("assistant", _sentence(rng, RU, rng.randint(2, 12))))
            records.append(Conversation(id=f"{split}-c{i}", source="chats.sql", turns=turns))
        else:
            words = RU if i % 2 else EN
            paragraphs = [" ".join(_sentence(rng, words, rng.randint(3, 12))
                                   for _ in range(rng.randint(1, 4)))
                          for _ in range(rng.randint(1, 4))]
            records.append(Document(id=f"{split}-d{i}", source=f"book{i % 2}.txt",
                                    text="\n\n".join(paragraphs)))
    return records


def write_dataset(root: Path, count: int = 40) -> tuple[DatasetLayout, dict[str, list[Record]]]:
    layout = DatasetLayout(root)
    layout.splits.mkdir(parents=True, exist_ok=True)
    records = {split: make_records(split, count) for split in SPLITS}
    for split, items in records.items():
        layout.split_file(split).write_text(
            "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in items), "utf-8")
    return layout, records
