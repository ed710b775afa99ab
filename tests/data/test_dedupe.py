"""Deduplication: exact and near duplicates within and across sources, the report, the index."""

from __future__ import annotations

import json
import random

import numpy as np

from homellm.data.dedupe import (
    LONG_TEXT_WORDS,
    Deduper,
    _Table,
    minhash_signatures,
    optimal_bands,
    signature,
)
from homellm.data.records import Conversation, Document, Turn

PARAGRAPH = (
    "Старец говорил, что молитва без внимания подобна дыму, который поднимается от сырых дров: "
    "огня почти нет, а глаза ест. Поэтому, начиная правило, не спеши, но каждое слово "
    "произноси так, будто слышишь его впервые. Если ум убежал, верни его тихо, без досады и "
    "без самоосуждения, ибо досада тоже уводит от Бога. Лучше прочесть один псалом со "
    "вниманием, чем целую кафизму в рассеянии. Так понемногу сердце привыкает к тишине, и "
    "тогда молитва становится не обязанностью, а радостью, которой ждёшь весь день."
)
OTHER = (
    "Весной река разливалась до самого монастырского сада, и послушники на лодках возили "
    "хлеб в соседнюю деревню. Игумен сам садился на вёсла, хотя был уже стар, и шутил, что "
    "на воде лучше всего думается о смерти. Деревенские дети бежали по берегу и кричали, "
    "а собаки лаяли так, что было слышно в трапезной. К вечеру вода спадала, оставляя на "
    "траве ил и щепки, и все шли убирать сад до темноты, а потом пили чай с мёдом."
)


def _changed(text: str, pairs: dict[str, str]) -> str:
    for old, new in pairs.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def _doc(id_: str, text: str, source: str = "a.txt") -> Document:
    return Document(id=id_, source=source, text=text)


def test_exact_duplicates_across_sources_ignore_case_and_punctuation() -> None:
    d = Deduper()
    assert d.add(_doc("a-0", PARAGRAPH, "books/a.fb2")).keep
    shouted = PARAGRAPH.upper().replace(",", "").replace("ё", "е")
    decision = d.add(_doc("b-0", shouted, "books/b.epub"))
    assert not decision.keep and decision.kind == "exact"
    assert (decision.kept_id, decision.kept_source, decision.similarity) == (
        "a-0", "books/a.fb2", 1.0)
    report = d.report.as_dict()
    assert report["exact"] == {"books/b.epub": 1}
    assert report["kept"] == {"books/a.fb2": 1, "books/b.epub": 0}
    assert report["cross_source"] == 1
    assert report["totals"] == {"seen": 2, "exact": 1, "near": 0, "dropped": 1}


def test_near_duplicate_russian_paragraph_caught_distinct_kept() -> None:
    d = Deduper(threshold=0.8)
    near = _changed(PARAGRAPH, {"Старец говорил": "Старец сказал",
                                "не спеши": "не торопись", "сердце": "душа"})
    assert d.add(_doc("p1", PARAGRAPH, "src1")).keep
    assert d.add(_doc("o1", OTHER, "src1")).keep
    decision = d.add(_doc("p2", near, "src2"))
    assert not decision.keep and decision.kind == "near"
    assert decision.kept_id == "p1" and 0.8 <= decision.similarity < 1.0
    example = d.report.examples[0]
    assert (example.kept_id, example.kept_source, example.dropped_id, example.dropped_source) \
        == ("p1", "src1", "p2", "src2")
    assert example.dropped_preview.startswith("Старец сказал")
    assert d.report.near == {"src2": 1}
    json.dumps(d.report.as_dict(), ensure_ascii=False)  # stats.json takes it as it is
    # the same texts, but near-duplicate detection off: only exact matches go
    exact_only = Deduper(threshold=None)
    assert exact_only.add(_doc("p1", PARAGRAPH)).keep and exact_only.add(_doc("p2", near)).keep


def test_conversations_compared_by_their_turns() -> None:
    def conv(id_: str, *texts: str) -> Conversation:
        roles = ("user", "assistant")
        return Conversation(id=id_, source="dump.sql",
                            turns=[Turn(roles[i % 2], t) for i, t in enumerate(texts)])

    d = Deduper()
    assert d.add(conv("c1", "Здравствуйте! Подскажите, когда служба?", "В субботу в 17:00.")).keep
    assert not d.add(conv("c2", "Здравствуйте, подскажите: когда служба?",
                          "В субботу в 17:00")).keep
    assert d.add(conv("c3", "Здравствуйте! Где купить свечи?", "В лавке у входа.")).keep
    assert d.add(conv("c4")).keep                  # empty: nothing to compare, kept once
    assert d.report.exact == {"dump.sql": 1}


def test_long_texts_use_word_shingles_and_still_match() -> None:
    rng = random.Random(3)
    words = PARAGRAPH.split() + OTHER.split()
    text = " ".join(rng.choice(words) for _ in range(LONG_TEXT_WORDS * 2))
    tokens = text.split()
    for i in (50, 200, 400):
        tokens[i] = "изменено"
    d = Deduper()
    assert d.add(_doc("long", text)).keep
    decision = d.add(_doc("long2", " ".join(tokens)))
    assert decision.kind == "near" and decision.similarity > 0.9


def test_signatures_same_in_workers_and_in_process() -> None:
    texts = [PARAGRAPH, OTHER, "", "коротко"] * 3
    one = minhash_signatures(texts, 64, workers=1)
    two = minhash_signatures(texts, 64, workers=2, chunk=2)
    assert one.shape == (12, 64) and one.dtype == np.uint32
    assert np.array_equal(one, two)
    assert np.array_equal(one[0], signature(PARAGRAPH, 64))


def test_many_distinct_records_all_kept_and_index_grows() -> None:
    rng = random.Random(7)
    syllables = ["ка", "ро", "ми", "на", "то", "ле", "са", "ве", "до", "пру", "ст", "жа"]
    vocab = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(3000)]
    d = Deduper()
    texts = [" ".join(rng.choices(vocab, k=40)) for _ in range(1500)]
    sigs = minhash_signatures(texts)
    kept = sum(d.add_text(f"t{i}", "s", t, sigs[i]).keep for i, t in enumerate(texts))
    assert kept == 1500
    assert len(d) == 1500 and d.nbytes > 1500 * 256


def test_table_probing_and_growth() -> None:
    table = _Table(capacity=8)
    keys = [(i * 0x9E3779B97F4A7C15 & (2**64 - 1)) | 1 for i in range(1, 2000)]
    for n, key in enumerate(keys):
        assert table.put(key, n) == -1
    assert all(table.get(key) == n for n, key in enumerate(keys))
    assert table.put(keys[5], 99) == 5 and table.get(keys[5]) == 99
    assert table.get(2) == -1


def test_band_choice() -> None:
    assert optimal_bands(0.8, 128, false_negative_weight=0.5) == (9, 13)  # datasketch
    assert optimal_bands(0.8, 128) == (14, 9)
