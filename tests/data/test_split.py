"""Splits: whole records, deterministic per id and seed, no duplicate across splits, atomic."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from homellm.data.layout import SPLITS, DatasetLayout
from homellm.data.records import Conversation, Document, Record, Turn, from_json
from homellm.data.split import (
    AUTO_CHUNK_BELOW_BOOKS,
    assign_split,
    json_line,
    normalise_ratios,
    split_assignments,
    write_splits,
)

_RNG = random.Random(11)
_SYLLABLES = ["ка", "ро", "ми", "на", "то", "ле", "са", "ве", "до", "пру", "ст", "жа", "ны", "ой"]
_VOCAB = ["".join(_RNG.choices(_SYLLABLES, k=_RNG.randint(2, 4))) for _ in range(4000)]


def _words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choices(_VOCAB, k=n))


def _book(n: int, paragraphs: int = 60, seed: int = 0) -> Document:
    rng = random.Random(seed * 1000 + n)
    text = "\n\n".join(_words(40, rng).capitalize() + "." for _ in range(paragraphs))
    return Document(id=f"book{n}", source=f"books/{n}.fb2", text=text, title=f"Книга {n}")


def _conv(n: int, source: str = "dump.sql") -> Conversation:
    rng = random.Random(n)
    return Conversation(id=f"conv{n}", source=source, turns=[
        Turn("user", _words(12, rng) + "?"), Turn("assistant", _words(20, rng) + "."),
        Turn("user", _words(6, rng) + "!")])


def _read(layout: DatasetLayout, split: str) -> list[Record]:
    lines = layout.split_file(split).read_text(encoding="utf-8").splitlines()
    return [from_json(json.loads(line)) for line in lines]


def _ids(layout: DatasetLayout) -> dict[str, set[str]]:
    return {s: {r.id for r in _read(layout, s)} for s in SPLITS}


def test_assignment_deterministic_seeded_and_stable() -> None:
    ids = [f"dump.sql:{i}" for i in range(10_000)]
    first = split_assignments(ids, seed=1)
    assert first == split_assignments(reversed(ids), seed=1)
    other = split_assignments(ids, seed=2)
    assert sum(first[i] != other[i] for i in ids) > 2000
    # more inputs later: the records already there keep their split
    more = split_assignments([*ids, *(f"new:{i}" for i in range(5000))], seed=1)
    assert all(more[i] == first[i] for i in ids)
    shares = Counter(first.values())
    assert abs(shares["train"] / 10_000 - 0.8) < 0.015
    assert abs(shares["val"] / 10_000 - 0.1) < 0.01 and abs(shares["test"] / 10_000 - 0.1) < 0.01
    assert all(assign_split(i, 1, (1, 0, 0)) == "train" for i in ids[:100])
    assert {assign_split(i, 1, {"train": 0.5, "val": 0.5}) for i in ids[:100]} == {"train", "val"}


def test_ratios_checked() -> None:
    assert normalise_ratios((8, 1, 1)) == {"train": 0.8, "val": 0.1, "test": 0.1}
    with pytest.raises(ValueError, match="3 numbers"):
        normalise_ratios((0.9, 0.1))
    with pytest.raises(ValueError, match="non-negative"):
        normalise_ratios((1, -1, 1))


def test_write_splits_round_trip_with_stats(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path / "ds")
    convs = [_conv(i) for i in range(300)]
    contact = Conversation(id="contact", source="chat.sql", turns=[
        Turn("user", "Позвоните мне: +7 916 123-45-67, или пишите на a@b.ru"),
        Turn("assistant", "Хорошо, завтра в 18:30 позвоню.")])
    books = [_book(n) for n in range(3)]
    books[0].text += "\n\nПодробнее: www.azbyka.ru"
    seen: list[int] = []
    stats = write_splits([*convs, contact, *books], layout, seed=5, progress=seen.append)
    out = {s: _read(layout, s) for s in SPLITS}
    convs_out = [r for rs in out.values() for r in rs if isinstance(r, Conversation)]
    assert len(convs_out) == 301
    assert {r.id: len(r.turns) for r in convs_out} == {c.id: 3 for c in convs} | {"contact": 2}
    for split, records in out.items():  # each conversation whole, in its own split
        assert all(assign_split(r.id, 5) == split for r in records if r.kind == "conversation")
    assert all(json.loads(json_line(r)) == r.to_json() for r in [*convs_out[:5], *books])
    scrubbed = next(r for r in convs_out if r.id == "contact")
    assert scrubbed.turns[0].text == "Позвоните мне: <phone>, или пишите на <email>"
    assert scrubbed.turns[1].text.endswith("в 18:30 позвоню.")
    assert stats.scrub == {"phone": 1, "email": 1}  # books are not scrubbed by default
    assert any("www.azbyka.ru" in r.text for rs in out.values() for r in rs
               if isinstance(r, Document))
    saved = json.loads(layout.split_stats.read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(stats.to_json()))
    assert saved["records_in"] == 304 and seen[-1] == 304
    assert sum(saved["kinds"][s].get("conversation", 0) for s in saved["kinds"]) == 301
    assert saved["book_unit"] == "chunk" and saved["scrub"] == {"phone": 1, "email": 1}
    assert saved["dedupe"]["totals"]["dropped"] == 0
    assert saved["totals"] == {s: len(out[s]) for s in SPLITS if out[s]}
    assert not list(layout.splits.glob(".*.tmp"))


def test_duplicates_never_straddle_splits(tmp_path: Path) -> None:
    base = _conv(1)
    # find ids that the seed sends to train and to val
    ids = {assign_split(f"c{i}", 0): f"c{i}" for i in range(50)}
    near = Conversation(id=ids["val"], source="other.sql", turns=[
        Turn(t.role, t.text) for t in base.turns])
    near.turns[1].text = near.turns[1].text.replace(" ", " и ", 1)
    original = Conversation(id=ids["train"], source="dump.sql", turns=base.turns)
    layout = DatasetLayout(tmp_path)
    stats = write_splits([original, near, _conv(2)], layout, seed=0)
    got = _ids(layout)
    assert ids["train"] in got["train"] and ids["val"] not in got["val"] | got["test"]
    assert stats.dedupe is not None and stats.dedupe.near == {"other.sql": 1}
    example = stats.dedupe.examples[0]
    assert (example.kept_id, example.dropped_id) == (ids["train"], ids["val"])


def test_few_books_split_by_chunks_with_gaps(tmp_path: Path) -> None:
    books = [_book(n, paragraphs=120) for n in range(15)]   # ~15 books, ~30 KB each
    repeated = "Отче наш, " + _words(60, random.Random(99))
    books[3].text += "\n\n" + repeated
    books[9].text = repeated + "\n\n" + books[9].text
    layout = DatasetLayout(tmp_path)
    stats = write_splits(books, layout, seed=3, chunk_chars=4000, gap_chars=300)
    assert stats.book_unit == "chunk" and len(books) < AUTO_CHUNK_BELOW_BOOKS
    out = {s: _read(layout, s) for s in SPLITS}
    assert all(out[s] for s in SPLITS)  # every split gets text, not one or two whole books
    units = [r for rs in out.values() for r in rs]
    assert all(isinstance(r, Document) and r.meta["book_id"].startswith("book") for r in units)
    assert all(len(r.text) < 4000 + 400 for r in units)
    assert stats.gap_chars_dropped > 0
    assert sum(r.text.count("Отче наш") for r in units) == 1  # the repeated passage kept once
    assert stats.paragraph_dedupe is not None and stats.paragraph_dedupe.exact == {
        "books/9.fb2": 1}
    shares = Counter(s for s, rs in out.items() for _ in rs)
    assert shares["train"] > shares["val"] and shares["train"] > shares["test"]

    whole = DatasetLayout(tmp_path / "whole")
    assert write_splits(books, whole, seed=3, book_unit="book").book_unit == "book"
    assert sum(len(ids) for ids in _ids(whole).values()) == 15


def test_crash_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)

    def records(fail: bool) -> Iterator[Record]:
        for i in range(2000):
            if fail and i == 1500:
                raise RuntimeError("reader died")
            yield _conv(i)

    with pytest.raises(RuntimeError, match="reader died"):
        write_splits(records(True), layout)
    assert sorted(p.name for p in layout.splits.iterdir()) == []
    write_splits((_conv(i) for i in range(10)), layout)
    before = {s: layout.split_file(s).read_bytes() for s in SPLITS}
    stats_before = layout.split_stats.read_bytes()
    with pytest.raises(RuntimeError):
        write_splits(records(True), layout)
    assert {s: layout.split_file(s).read_bytes() for s in SPLITS} == before
    assert layout.split_stats.read_bytes() == stats_before
    assert not list(layout.splits.glob(".*"))


def test_worker_processes_give_the_same_splits(tmp_path: Path) -> None:
    convs = [_conv(i) for i in range(400)] + [_conv(7, source="copy.sql")]
    one, two = DatasetLayout(tmp_path / "one"), DatasetLayout(tmp_path / "two")
    a = write_splits(convs, one, seed=9)
    b = write_splits(convs, two, seed=9, workers=2)
    assert {s: one.split_file(s).read_bytes() for s in SPLITS} == {
        s: two.split_file(s).read_bytes() for s in SPLITS}
    assert a.dedupe is not None and b.dedupe is not None
    assert a.dedupe.exact == b.dedupe.exact == {"copy.sql": 1}
