"""Exact and near-duplicate removal: normalised-text hashes, then MinHash with banded LSH.

Shingles (chosen for Russian): the text is lowercased, "ё" read as "е", punctuation and
underscores become spaces. Texts of at least ``LONG_TEXT_WORDS`` words are shingled by word
5-grams (books, long documents: a few changed words cost few shingles out of thousands); shorter
ones (dialogues, paragraphs) by character 5-grams, because a 50-word text has too few word
5-grams for one changed word not to sink its Jaccard similarity. A near-duplicate pair that
falls on both sides of the cut (one text just under, one just over) is not found.

The signatures are datasketch ``MinHash`` values (affine32 scheme: uint32). The index is ours:
datasketch's ``MinHashLSH`` keeps a bytes key and a Python set per band per record, measured at
3.4 KB per record before the signatures (3.4 GB for a million dialogues). Here each band key is
a uint64 in an open-addressing numpy table whose value is the newest record in that bucket,
with a per-record "next" link per band; signatures sit in fixed numpy blocks.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from multiprocessing.pool import Pool
from typing import Any, Literal

import numpy as np
from datasketch import MinHash

from homellm.data.records import Conversation, Record

LONG_TEXT_WORDS = 300
CHAR_NGRAM = 5
WORD_NGRAM = 5
DEFAULT_THRESHOLD = 0.8
DEFAULT_NUM_PERM = 128
_BLOCK = 16384            # signature rows per block: growth never copies the old rows
_NONWORD = re.compile(r"[\W_]+")
_U64 = np.uint64


# ------------------------------------------------------------------------------- shingles

def normalise(text: str) -> str:
    return _NONWORD.sub(" ", text.lower().replace("ё", "е")).strip()


def record_text(record: Record) -> str:
    """The text a record is compared by: a conversation is its turns' texts, one per line."""
    if isinstance(record, Conversation):
        return "\n".join(turn.text for turn in record.turns)
    return record.text


def _ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """uint32 hashes of every run of ``n`` consecutive units (a polynomial, then mixed)."""
    if units.size == 0:
        return np.zeros(0, np.uint32)
    n = min(n, units.size)
    count = units.size - n + 1
    with np.errstate(over="ignore"):
        h = np.zeros(count, _U64)
        for j in range(n):  # wraps modulo 2**64, as intended
            h = h * _U64(0x100000001B3) + units[j:j + count]
        return (_mix64(h) >> _U64(32)).astype(np.uint32)


def _mix64(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> _U64(33))


def shingle_hashes(text: str) -> np.ndarray:
    norm = normalise(text)
    words = norm.split()
    if len(words) >= LONG_TEXT_WORDS:
        # crc32 rather than hash(): the same word must hash alike in every worker process
        ids = np.fromiter((zlib.crc32(w.encode()) for w in words), _U64, count=len(words))
        return _ngram_hashes(ids, WORD_NGRAM)
    return _ngram_hashes(np.frombuffer(norm.encode("utf-32-le"), np.uint32).astype(_U64),
                         CHAR_NGRAM)


def _identity(value: int) -> int:
    return value


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    return MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity).permutations


def signature(text: str, num_perm: int = DEFAULT_NUM_PERM, seed: int = 1) -> np.ndarray:
    """The MinHash of one text as uint32[num_perm]; all 0xFFFFFFFF when it has no shingles."""
    sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32",
                     permutations=_permutations(num_perm, seed))
    hashes = shingle_hashes(text)
    for start in range(0, hashes.size, 8192):  # bounds the (shingles x num_perm) temporaries
        sketch.update_batch(hashes[start:start + 8192].tolist())
    return np.asarray(sketch.hashvalues, np.uint32)


def signature_rows(texts: Sequence[str], num_perm: int = DEFAULT_NUM_PERM,
                   seed: int = 1) -> np.ndarray:
    """Signatures of ``texts`` in this process: what each worker runs on its chunk."""
    out = np.empty((len(texts), num_perm), np.uint32)
    for i, text in enumerate(texts):
        out[i] = signature(text, num_perm, seed)
    return out


def minhash_signatures(texts: Sequence[str], num_perm: int = DEFAULT_NUM_PERM,
                       workers: int = 1, *, seed: int = 1, pool: Pool | None = None,
                       chunk: int = 256) -> np.ndarray:
    """Signatures of ``texts`` as a uint32 array (len(texts), num_perm), row i for text i.

    Picklable and top-level, so a caller may also ``pool.map`` it over chunks itself. With
    ``pool`` (a ``multiprocessing`` pool the caller keeps for many calls) or ``workers`` > 1
    (a pool made for this call) the chunks are signed in worker processes.
    """
    texts = list(texts)
    if pool is None and (workers <= 1 or len(texts) <= chunk):
        return signature_rows(texts, num_perm, seed)
    parts = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
    job = partial(signature_rows, num_perm=num_perm, seed=seed)
    if pool is not None:
        rows = pool.map(job, parts)
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as own:
            rows = own.map(job, parts)
    return np.concatenate(rows) if rows else np.zeros((0, num_perm), np.uint32)


@lru_cache(maxsize=16)
def optimal_bands(threshold: float, num_perm: int,
                  false_negative_weight: float = 0.9) -> tuple[int, int]:
    """Bands b and rows r (b*r <= num_perm) minimising weighted false positives and negatives.

    datasketch weighs both equally (0.8 and 128 → 9 x 13), which finds only 69 % of pairs
    with a true similarity of 0.85. Here every candidate is checked against its stored
    signature, so a false candidate costs one comparison while a missed one leaves a duplicate
    in: the default weight 0.9 gives 14 x 9, which finds 97.5 % at 0.85 and 87 % at 0.8.
    """
    xs = np.linspace(0.0, 1.0, 2001)
    below = xs < threshold
    best = (np.inf, 1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs ** r) ** b           # chance a pair of similarity x is a candidate
            fp = p[below].sum() / xs.size
            fn = (1.0 - p[~below]).sum() / xs.size
            cost = (1.0 - false_negative_weight) * fp + false_negative_weight * fn
            if cost < best[0]:
                best = (cost, b, r)
    return best[1], best[2]


# ------------------------------------------------------------------------------- index

class _Table:
    """uint64 key → int32 value, open addressing with linear probing; key 0 means empty.

    Scalar probing on ``array`` objects: for the nine keys of one record this is several times
    faster than numpy calls, whose fixed cost dominates at that size.
    """

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._keys = array("Q", bytes(8 * capacity))
        self._vals = array("i", [-1]) * capacity
        self._mask = capacity - 1
        self._used = 0

    @property
    def nbytes(self) -> int:
        return 12 * len(self._keys)

    def _slot(self, key: int) -> int:
        keys, i = self._keys, key & self._mask
        while True:
            found = keys[i]
            if found == key or found == 0:
                return i
            i = (i + 1) & self._mask

    def get(self, key: int) -> int:
        return self._vals[self._slot(key)]

    def put(self, key: int, val: int) -> int:
        """Store ``val`` under ``key`` (nonzero); returns the previous value, -1 if none."""
        if 2 * (self._used + 1) > len(self._keys):
            self._grow()
        i = self._slot(key)
        old = self._vals[i]
        if self._keys[i] == 0:
            self._keys[i] = key
            self._used += 1
        self._vals[i] = val
        return old

    def _grow(self) -> None:
        old_keys, old_vals = self._keys, self._vals
        capacity = 2 * len(old_keys)
        self._keys = array("Q", bytes(8 * capacity))
        self._vals = array("i", [-1]) * capacity
        self._mask = capacity - 1
        for key, val in zip(old_keys, old_vals, strict=True):
            if key:
                i = self._slot(key)
                self._keys[i], self._vals[i] = key, val


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") | 1


# ------------------------------------------------------------------------------- deduper

DupKind = Literal["unique", "exact", "near"]


@dataclass(frozen=True)
class DedupeDecision:
    keep: bool
    kind: DupKind
    kept_id: str | None = None        # for a dropped record: the record it duplicates
    kept_source: str | None = None
    similarity: float = 0.0           # estimated Jaccard (1.0 for exact)


@dataclass
class DedupeExample:
    kind: DupKind
    similarity: float
    kept_id: str
    kept_source: str
    dropped_id: str
    dropped_source: str
    dropped_preview: str


@dataclass
class DedupeReport:
    threshold: float | None
    num_perm: int
    bands: int
    rows: int
    seen: Counter[str] = field(default_factory=Counter)      # per source
    exact: Counter[str] = field(default_factory=Counter)     # dropped, by the dropped's source
    near: Counter[str] = field(default_factory=Counter)
    cross_source: int = 0                                     # dropped for another source's record
    examples: list[DedupeExample] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return sum(self.exact.values()) + sum(self.near.values())

    def as_dict(self) -> dict[str, Any]:
        # not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs
        data: dict[str, Any] = {
            "threshold": self.threshold, "num_perm": self.num_perm, "bands": self.bands,
            "rows": self.rows, "seen": dict(self.seen), "exact": dict(self.exact),
            "near": dict(self.near), "cross_source": self.cross_source,
            "examples": [asdict(e) for e in self.examples]}
        data["kept"] = {s: n - self.exact[s] - self.near[s] for s, n in self.seen.items()}
        data["totals"] = {"seen": sum(self.seen.values()), "exact": sum(self.exact.values()),
                          "near": sum(self.near.values()), "dropped": self.dropped}
        return data


class Deduper:
    """Streaming: each ``add`` says keep or drop; the first record of a cluster is kept.

    Holds per kept record its id, a source number, its signature's low 16 bits (a chance
    agreement of 1 in 65536 per slot changes the similarity estimate by ~0.00002), a 64-bit
    exact key and one link per band, never the text. ``threshold=None``: exact matches only.
    """

    def __init__(self, threshold: float | None = DEFAULT_THRESHOLD,
                 num_perm: int = DEFAULT_NUM_PERM, *, seed: int = 1, examples: int = 20,
                 preview_chars: int = 120) -> None:
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedupe threshold must be in (0, 1], not {threshold}")
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.bands, self.rows = optimal_bands(threshold, num_perm) if threshold else (0, 0)
        self.report = DedupeReport(threshold, num_perm, self.bands, self.rows)
        self._max_examples, self._preview = examples, preview_chars
        rng = np.random.default_rng(0x5EED)
        self._mult = rng.integers(1, 2**63, (self.bands, self.rows), dtype=_U64) | _U64(1)
        self._salt = rng.integers(1, 2**63, self.bands, dtype=_U64)
        self._ids: list[str] = []
        self._sources: list[str] = []
        self._source_no: dict[str, int] = {}
        self._src = array("i")
        self._sigs: list[np.ndarray] = []
        self._next = array("i")        # per kept record and band: the previous record there
        self._exact = _Table()
        self._lsh = _Table()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def nbytes(self) -> int:
        """Memory the index holds, ids and their list included (for the memory figure)."""
        ids = sum(sys.getsizeof(i) + 8 for i in self._ids)
        arrays = sum(a.itemsize * len(a) for a in (self._src, self._next))
        sigs = sum(b.nbytes for b in self._sigs)
        return ids + arrays + sigs + self._exact.nbytes + self._lsh.nbytes

    def add(self, record: Record, sig: np.ndarray | None = None) -> DedupeDecision:
        return self.add_text(record.id, record.source, record_text(record), sig)

    def add_text(self, key: str, source: str, text: str,
                 sig: np.ndarray | None = None) -> DedupeDecision:
        """``sig``: the text's signature when a worker has computed it already."""
        self.report.seen[source] += 1
        exact = _hash64(normalise(text))
        hit = self._exact.get(exact)
        if hit >= 0:
            return self._dropped("exact", hit, key, source, text, 1.0)
        bands: list[int] = []
        if self.threshold is not None:
            if sig is None:
                sig = signature(text, self.num_perm, self.seed)
            if sig[0] != np.uint32(0xFFFFFFFF):  # no shingles, nothing to be near to
                bands = self._band_keys(sig)
                best, similarity = self._nearest(sig, [self._lsh.get(b) for b in bands])
                if similarity >= self.threshold:
                    return self._dropped("near", best, key, source, text, similarity)
        self._keep(key, source, exact, sig, bands)
        return DedupeDecision(True, "unique")

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        rows = sig[: self.bands * self.rows].reshape(self.bands, self.rows).astype(_U64)
        with np.errstate(over="ignore"):
            keys = _mix64((rows * self._mult).sum(axis=1, dtype=_U64) + self._salt) | _U64(1)
        return keys.tolist()

    def _nearest(self, sig: np.ndarray, heads: list[int]) -> tuple[int, float]:
        candidates: set[int] = set()
        for band, idx in enumerate(heads):
            while idx >= 0 and idx not in candidates:
                candidates.add(idx)
                idx = self._next[idx * self.bands + band]
        if not candidates:
            return -1, 0.0
        order = sorted(candidates)
        rows = np.stack([self._sigs[i // _BLOCK][i % _BLOCK] for i in order])
        scores = (rows == sig.astype(np.uint16)).mean(axis=1)
        best = int(np.argmax(scores))  # ties go to the earliest record
        return order[best], float(scores[best])

    def _keep(self, key: str, source: str, exact: int, sig: np.ndarray | None,
              bands: list[int]) -> None:
        idx = len(self._ids)
        if self.threshold is not None:
            if idx % _BLOCK == 0:
                self._sigs.append(np.zeros((_BLOCK, self.num_perm), np.uint16))
            self._sigs[-1][idx % _BLOCK] = sig
        self._ids.append(key)
        if source not in self._source_no:
            self._source_no[source] = len(self._sources)
            self._sources.append(source)
        self._src.append(self._source_no[source])
        self._exact.put(exact, idx)
        if bands:
            self._next.extend(self._lsh.put(b, idx) for b in bands)
        else:
            self._next.extend([-1] * self.bands)

    def _dropped(self, kind: DupKind, idx: int, key: str, source: str, text: str,
                 similarity: float) -> DedupeDecision:
        kept_source = self._sources[self._src[idx]]
        (self.report.exact if kind == "exact" else self.report.near)[source] += 1
        self.report.cross_source += kept_source != source
        if len(self.report.examples) < self._max_examples:
            preview = " ".join(text.split())[: self._preview]
            self.report.examples.append(DedupeExample(kind, round(similarity, 3), self._ids[idx],
                                                      kept_source, key, source, preview))
        return DedupeDecision(False, kind, self._ids[idx], kept_source, similarity)
