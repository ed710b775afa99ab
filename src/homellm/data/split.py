"""Train/val/test splits of whole records, deterministic per record id, written atomically.

Assignment: ``blake2b(seed, id)`` read as a number in [0, 1) picks the split by the cumulative
ratios. A record's split depends on nothing but its id and the seed, so adding inputs never
moves an existing record to another split.

Leaks: every exact or near duplicate is dropped before assignment, keeping the first record
seen, so a duplicate cluster lives in one split only: that of its kept representative.

Books: a 80/10/10 split of ~15 whole books leaves one or two books in val and test, and the
loss there measures those books' style more than the model. So with ``book_unit="auto"`` a
run with fewer than ``AUTO_CHUNK_BELOW_BOOKS`` documents (after deduplication) splits books
into chunks of about ``chunk_chars`` characters at paragraph boundaries, each chunk a unit
with its own id (``<book id>#c<n>``). Where two neighbouring chunks land in different
splits, the later one loses its first paragraphs (at least ``gap_chars`` characters), so no
sentence runs across the border. Chunk ids depend on ``chunk_chars``: changing it reshuffles
the chunks. Long paragraphs (``min_paragraph_chars``) repeated within or among books are
dropped after their first occurrence (prefaces, publishers' notes, prayers quoted in full);
shorter repeats (refrains, headings) are legitimate text and stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache, partial
from itertools import chain, islice
from typing import IO, Any, Literal

import numpy as np

from homellm.data.dedupe import (
    DEFAULT_NUM_PERM,
    DEFAULT_THRESHOLD,
    Deduper,
    DedupeReport,
    record_text,
    signature_rows,
)
from homellm.data.layout import SPLITS, DatasetLayout
from homellm.data.records import Conversation, Document, Record
from homellm.data.scrub import scrub_record
from homellm.fsutil import atomic_write_text

BookUnit = Literal["auto", "book", "chunk"]
Ratios = Mapping[str, float] | Sequence[float]

DEFAULT_RATIOS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
AUTO_CHUNK_BELOW_BOOKS = 100
DEFAULT_CHUNK_CHARS = 20_000
DEFAULT_GAP_CHARS = 500
MIN_PARAGRAPH_CHARS = 200
_LONG_BLOCK = 4000        # a "paragraph" this long without blank lines is split into lines
_BLANK = re.compile(r"(\n[ \t]*\n\s*)")


# ------------------------------------------------------------------------------ assignment

def normalise_ratios(ratios: Ratios = DEFAULT_RATIOS) -> dict[str, float]:
    """``{"train": .8, ...}`` or three numbers for train/val/test, made to sum to 1."""
    if isinstance(ratios, Mapping):
        pairs = [(str(k), float(v)) for k, v in ratios.items()]
    else:
        values = [float(v) for v in ratios]
        if len(values) != len(SPLITS):
            raise ValueError(f"ratios: give {len(SPLITS)} numbers ({'/'.join(SPLITS)}), "
                             f"not {len(values)}")
        pairs = list(zip(SPLITS, values, strict=True))
    total = sum(v for _, v in pairs)
    if any(v < 0 for _, v in pairs) or total <= 0:
        raise ValueError(f"ratios must be non-negative and not all zero: {dict(pairs)}")
    return {k: v / total for k, v in pairs}


@lru_cache(maxsize=8)
def _bounds(key: tuple[Any, ...]) -> tuple[tuple[str, float], ...]:
    """Cumulative upper bounds of the splits that get anything; the last one is open."""
    ratios = normalise_ratios(dict(key) if key and isinstance(key[0], tuple) else key)
    out, acc = [], 0.0
    for name, value in ratios.items():
        if value > 0:
            acc += value
            out.append((name, acc))
    out[-1] = (out[-1][0], float("inf"))  # float sums may end a hair below 1
    return tuple(out)


def assign_split(record_id: str, seed: int = 0, ratios: Ratios = DEFAULT_RATIOS) -> str:
    """The split of one record: a function of (seed, id) only, so it never changes later."""
    bounds = _bounds(tuple(ratios.items()) if isinstance(ratios, Mapping) else tuple(ratios))
    digest = hashlib.blake2b(f"{seed}\0{record_id}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2.0**64
    return next(name for name, upper in bounds if point < upper)


def split_assignments(ids: Iterable[str], seed: int = 0,
                      ratios: Ratios = DEFAULT_RATIOS) -> dict[str, str]:
    return {record_id: assign_split(record_id, seed, ratios) for record_id in ids}


# ------------------------------------------------------------------------------ book units

def paragraphs(text: str) -> list[tuple[str, str]]:
    """(paragraph, the separator after it): blank-line blocks, lines of very long blocks."""
    parts = _BLANK.split(text)
    pieces: list[tuple[str, str]] = []
    for para, sep in zip(parts[0::2], [*parts[1::2], ""], strict=True):
        if len(para) > _LONG_BLOCK and "\n" in para:
            lines = para.split("\n")
            pieces.extend((line, "\n") for line in lines[:-1])
            pieces.append((lines[-1], sep))
        else:
            pieces.append((para, sep))
    return pieces


def _join(pieces: Sequence[tuple[str, str]]) -> str:
    return "".join(p + s for p, s in pieces).strip()


def book_units(doc: Document, unit: Literal["book", "chunk"], *, seed: int = 0,
               ratios: Ratios = DEFAULT_RATIOS, chunk_chars: int = DEFAULT_CHUNK_CHARS,
               gap_chars: int = DEFAULT_GAP_CHARS, paragraph_dedupe: Deduper | None = None,
               min_paragraph_chars: int = MIN_PARAGRAPH_CHARS,
               ) -> Iterator[tuple[str, Document, int]]:
    """(split, unit, characters dropped as a gap) for each unit of one book."""
    pieces = paragraphs(doc.text)
    if paragraph_dedupe is not None:
        pieces = [(p, s) for i, (p, s) in enumerate(pieces)
                  if len(p) < min_paragraph_chars
                  or paragraph_dedupe.add_text(f"{doc.id}#p{i}", doc.source, p).keep]
    if unit == "book":
        yield assign_split(doc.id, seed, ratios), replace(doc, text=_join(pieces)), 0
        return
    chunks: list[list[tuple[str, str]]] = [[]]
    size = 0
    for piece in pieces:
        if size >= chunk_chars:
            chunks.append([])
            size = 0
        chunks[-1].append(piece)
        size += len(piece[0]) + len(piece[1])
    previous = None
    for n, chunk in enumerate(chunks):
        chunk_id = f"{doc.id}#c{n}"
        split = assign_split(chunk_id, seed, ratios)
        dropped = 0
        if previous is not None and previous != split:
            while chunk and dropped < gap_chars:
                dropped += len(chunk[0][0]) + len(chunk[0][1])
                chunk = chunk[1:]
        previous = split
        text = _join(chunk)
        if text:
            meta = {**doc.meta, "book_id": doc.id, "chunk": n, "chunks": len(chunks)}
            yield split, replace(doc, id=chunk_id, text=text, meta=meta), dropped


# ------------------------------------------------------------------------------ writing

@dataclass
class SplitStats:
    seed: int
    ratios: dict[str, float]
    book_unit: str = "auto"             # what "auto" resolved to
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    gap_chars: int = DEFAULT_GAP_CHARS
    records_in: int = 0
    records: dict[str, Counter[str]] = field(default_factory=dict)   # split → source → units
    kinds: dict[str, Counter[str]] = field(default_factory=dict)     # split → kind → units
    chars: Counter[str] = field(default_factory=Counter)             # split → characters
    gap_chars_dropped: int = 0
    scrub: Counter[str] = field(default_factory=Counter)
    dedupe: DedupeReport | None = None
    paragraph_dedupe: DedupeReport | None = None
    dedupe_index_bytes: int = 0

    def count(self, split: str, record: Record) -> None:
        self.records.setdefault(split, Counter())[record.source] += 1
        self.kinds.setdefault(split, Counter())[record.kind] += 1
        self.chars[split] += len(record_text(record))

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("records", "kinds"):
            data[name] = {split: dict(c) for split, c in data[name].items()}
        data["chars"], data["scrub"] = dict(self.chars), dict(self.scrub)
        data["dedupe"] = self.dedupe.as_dict() if self.dedupe else None
        data["paragraph_dedupe"] = (self.paragraph_dedupe.as_dict()
                                    if self.paragraph_dedupe else None)
        data["totals"] = {s: sum(c.values()) for s, c in self.records.items()}
        return data

    def to_json(self) -> dict[str, Any]:  # the name records.py uses for the same thing
        return self.as_dict()


def json_line(record: Record) -> str:
    """``json.dumps(record.to_json())`` without asdict's deep copy (a third of the time)."""
    data = dict(vars(record))
    if isinstance(record, Conversation):
        data["turns"] = [vars(turn) for turn in record.turns]
    return json.dumps(data, ensure_ascii=False)


class _SplitFiles:
    """One temp file per split beside its target; all renamed only when the run completes."""

    def __init__(self, layout: DatasetLayout, splits: Iterable[str]) -> None:
        layout.splits.mkdir(parents=True, exist_ok=True)
        self._layout = layout
        self._files: dict[str, tuple[str, IO[str]]] = {}
        try:
            for split in splits:
                fd, tmp = tempfile.mkstemp(prefix=f".{split}.jsonl.", suffix=".tmp",
                                           dir=layout.splits)
                self._files[split] = (tmp, os.fdopen(fd, "w", encoding="utf-8"))
        except BaseException:
            self.abort()
            raise

    def write(self, split: str, record: Record) -> None:
        self._files[split][1].write(json_line(record) + "\n")

    def commit(self) -> None:
        for tmp, handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(tmp, 0o644)
        for split, (tmp, _) in self._files.items():
            os.replace(tmp, self._layout.split_file(split))
        self._files.clear()
        dir_fd = os.open(self._layout.splits, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        for tmp, handle in self._files.values():
            handle.close()
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        self._files.clear()


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


class _Run:
    """One write_splits run: the state that records flow through."""

    def __init__(self, stats: SplitStats, out: _SplitFiles, dedupe: Deduper,
                 unit_options: dict[str, Any], mode: Literal["book", "chunk"] | None) -> None:
        self.stats, self.out, self.dedupe = stats, out, dedupe
        self.unit_options, self.mode = unit_options, mode
        self.pending: list[Document] = []   # documents until the auto rule is decided

    def take(self, record: Record, sig: Any) -> None:
        if not self.dedupe.add(record, sig).keep:
            return
        if isinstance(record, Conversation):
            split = assign_split(record.id, self.stats.seed, self.stats.ratios)
            self.out.write(split, record)
            self.stats.count(split, record)
        elif self.mode is not None:
            self.emit_book(record)
        else:
            self.pending.append(record)
            if len(self.pending) >= AUTO_CHUNK_BELOW_BOOKS:
                self.decide("book")

    def decide(self, mode: Literal["book", "chunk"]) -> None:
        self.mode = mode
        for doc in self.pending:
            self.emit_book(doc)
        self.pending.clear()

    def emit_book(self, doc: Document) -> None:
        assert self.mode is not None
        for split, unit, dropped in book_units(doc, self.mode, seed=self.stats.seed,
                                               ratios=self.stats.ratios, **self.unit_options):
            self.out.write(split, unit)
            self.stats.count(split, unit)
            self.stats.gap_chars_dropped += dropped


def write_splits(records: Iterable[Record], layout: DatasetLayout, *, seed: int = 0,
                 ratios: Ratios = DEFAULT_RATIOS,
                 dedupe_threshold: float | None = DEFAULT_THRESHOLD,
                 num_perm: int = DEFAULT_NUM_PERM, scrub_dialogues: bool = True,
                 scrub_books: bool = False, book_unit: BookUnit = "auto",
                 chunk_chars: int = DEFAULT_CHUNK_CHARS, gap_chars: int = DEFAULT_GAP_CHARS,
                 min_paragraph_chars: int = MIN_PARAGRAPH_CHARS, workers: int = 1,
                 examples: int = 20, progress: Callable[[int], None] | None = None,
                 ) -> SplitStats:
    """Scrub, deduplicate and split cleaned records into ``layout.split_file(s)``.

    Records stream through; what stays in memory is the dedupe index (signatures and ids)
    and, with ``book_unit="auto"``, up to ``AUTO_CHUNK_BELOW_BOOKS`` documents until the rule
    is decided. ``dedupe_threshold=None`` removes exact duplicates only. Each split file and
    ``stats.json`` is replaced atomically; an error anywhere leaves the previous files as
    they were. ``workers`` > 1 computes signatures in that many processes while this one
    deduplicates and writes the batch before.
    """
    if book_unit not in ("auto", "book", "chunk"):
        raise ValueError(f"book_unit must be auto, book or chunk, not {book_unit!r}")
    shares = normalise_ratios(ratios)
    stats = SplitStats(seed, shares, book_unit, chunk_chars, gap_chars)
    dedupe = Deduper(dedupe_threshold, num_perm, examples=examples)
    para_dedupe = Deduper(dedupe_threshold, num_perm, examples=examples)
    unit_options = {"chunk_chars": chunk_chars, "gap_chars": gap_chars,
                    "paragraph_dedupe": para_dedupe, "min_paragraph_chars": min_paragraph_chars}
    batch_size = max(512, 256 * workers)
    chunk = max(8, batch_size // workers // 4)

    def prepare(batch: list[Record]) -> list[Record]:
        prepared = []
        for record in batch:
            stats.records_in += 1
            if scrub_dialogues if isinstance(record, Conversation) else scrub_books:
                record, counts = scrub_record(record)
                stats.scrub.update(counts)
            prepared.append(record)
        return prepared

    pool_cm: Any = nullcontext(None)
    if workers > 1 and dedupe_threshold is not None:
        import multiprocessing

        pool_cm = multiprocessing.get_context("spawn").Pool(workers)
    with pool_cm as pool:
        out = _SplitFiles(layout, shares)
        run = _Run(stats, out, dedupe, unit_options, None if book_unit == "auto" else book_unit)
        try:
            ahead: tuple[list[Record], Any] | None = None
            for batch in chain(_batches(records, batch_size), [None]):
                submitted = None
                if batch is not None:
                    prepared = prepare(batch)
                    texts = [record_text(r) for r in prepared]
                    job = (pool.map_async(partial(signature_rows, num_perm=num_perm),
                                          [texts[i:i + chunk] for i in range(0, len(texts), chunk)])
                           if pool is not None else None)
                    submitted = (prepared, job)
                if ahead is not None:  # the batch before, while the workers sign this one
                    done, job = ahead
                    sigs = np.concatenate(job.get()) if job is not None else [None] * len(done)
                    for record, sig in zip(done, sigs, strict=True):
                        run.take(record, sig)
                    if progress is not None:
                        progress(stats.records_in)
                ahead = submitted
            if run.mode is None:
                run.decide("chunk")
            out.commit()
        except BaseException:
            out.abort()
            raise
    stats.book_unit = run.mode or book_unit
    stats.dedupe, stats.paragraph_dedupe = dedupe.report, para_dedupe.report
    stats.dedupe_index_bytes = dedupe.nbytes + para_dedupe.nbytes
    atomic_write_text(layout.split_stats,
                      json.dumps(stats.as_dict(), ensure_ascii=False, indent=2) + "\n")
    return stats
