"""Token shards for trainers: random access by token offset, seeded windows, exact resume.

    shards = ShardSet.open(DATASET / "tokens" / tok_id, "train")
    loader = WindowLoader(shards, seq_len=2048, batch_size=8, seed=0)
    loader.load_state_dict(saved)            # from a checkpoint, or not at all
    batch = loader.next_batch()              # tokens (8, 2049): x = [:, :-1], y = [:, 1:]
    saved = loader.state_dict()              # {epoch, index}: the next batch is the same one

Window ``i`` is tokens ``[i*T, i*T + T + 1)``: stride T, so every token is a target exactly
once per epoch. An epoch's order is a permutation of the windows drawn from
``SeedSequence([seed, epoch])``; a batch that would not be full ends the epoch (drop-last).
With ``world_size`` ranks, each global step takes ``batch_size * world_size`` windows and rank
``r`` the r-th ``batch_size`` of them, so ranks never share a window.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from homellm.data.shards import FORMAT, MANIFEST, ShardError, file_sizes, shard_name

Verify = Literal["size", "sha256"]


class ShardSet:
    """The shards of one split as one token array (memory-mapped; slices inside a shard are
    views, never copies)."""

    def __init__(self, folder: Path, split: str, manifest: dict[str, Any],
                 verify: Verify = "size") -> None:
        self.folder, self.split = folder, split
        state = manifest["splits"].get(split)
        if state is None:
            raise ShardError(f"{folder}: no {split} shards (run `homellm data tokenize`)")
        if not state.get("complete"):
            raise ShardError(f"{folder}: the {split} shards are incomplete (re-run "
                             "`homellm data tokenize` to finish them)")
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.eot_id: int = manifest["tokenizer"]["eot_id"]
        self.tokenizer_id: str = manifest["tokenizer"]["id"]
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        bounds = [0]
        for entry in state["shards"]:
            name = shard_name(split, entry["index"])
            _check(folder, name, entry, self.dtype.itemsize, verify)
            if entry["tokens"] == 0:
                continue
            self._tokens.append(np.memmap(folder / f"{name}.bin", self.dtype, "r"))
            self._masks.append(np.memmap(folder / f"{name}.mask", np.uint8, "r"))
            docs = np.fromfile(folder / f"{name}.docs", np.uint32).astype(np.int64)
            starts.append(docs + bounds[-1])
            bounds.append(bounds[-1] + entry["tokens"])
        self._bounds = np.array(bounds, dtype=np.int64)
        self.doc_start_offsets = (np.concatenate(starts) if starts
                                  else np.zeros(0, dtype=np.int64))

    @classmethod
    def open(cls, folder: Path | str, split: str, *, verify: Verify = "size") -> ShardSet:
        """``verify="size"`` checks every file's size against the manifest (instant);
        ``"sha256"`` also hashes every file (reads them all)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            raise ShardError(f"{folder}: no {MANIFEST} (run `homellm data tokenize`)") from None
        except (OSError, ValueError) as exc:
            raise ShardError(f"{folder / MANIFEST}: unreadable ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise ShardError(f"{folder / MANIFEST}: not a {FORMAT} manifest")
        return cls(folder, split, manifest, verify)

    def __len__(self) -> int:
        return int(self._bounds[-1])

    def _slice(self, arrays: list[np.ndarray], start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"tokens [{start}, {stop}) outside 0..{len(self)} of {self.split}")
        i = int(np.searchsorted(self._bounds, start, "right")) - 1
        if start == stop:
            return arrays[0][:0] if arrays else np.zeros(0, self.dtype)
        base = int(self._bounds[i])
        if stop <= self._bounds[i + 1]:
            return arrays[i][start - base:stop - base]
        parts = []
        while start < stop:
            base, end = int(self._bounds[i]), int(self._bounds[i + 1])
            parts.append(arrays[i][start - base:min(stop, end) - base])
            start, i = min(stop, end), i + 1
        return np.concatenate(parts)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self._slice(self._tokens, start, stop)

    def mask(self, start: int, stop: int) -> np.ndarray:
        return self._slice(self._masks, start, stop)

    def doc_starts(self, start: int, stop: int) -> np.ndarray:
        """Positions, relative to ``start``, where a document starts inside [start, stop)."""
        lo, hi = np.searchsorted(self.doc_start_offsets, [start, stop], "left")
        return self.doc_start_offsets[lo:hi] - start


def _check(folder: Path, name: str, entry: dict[str, Any], itemsize: int,
           verify: Verify) -> None:
    for kind, size in file_sizes(entry, itemsize).items():
        path = folder / f"{name}.{kind}"
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"{path}: missing (re-run `homellm data tokenize`)") from None
        if actual != size:
            raise ShardError(f"{path}: {actual} bytes, manifest says {size} (truncated or "
                             "corrupt: re-run `homellm data tokenize`)")
        if verify == "sha256":
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 22), b""):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"][kind]:
                raise ShardError(f"{path}: sha256 differs from the manifest (corrupt: re-run "
                                 "`homellm data tokenize`)")


@dataclass
class Batch:
    tokens: np.ndarray             # (batch, T + 1) int64: inputs [:, :-1], targets [:, 1:]
    mask: np.ndarray               # (batch, T + 1) uint8 loss mask aligned with tokens
    doc_starts: list[np.ndarray]   # per row: positions in the window where a document starts
    windows: np.ndarray            # the window numbers (window i starts at token i*T)


class WindowLoader:
    """Seeded, resumable batches of fixed-length windows from a ShardSet."""

    def __init__(self, shards: ShardSet, seq_len: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards, self.seq_len, self.batch_size = shards, seq_len, batch_size
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.n_windows = max(0, (len(shards) - 1) // seq_len)
        self.step_windows = batch_size * world_size
        if self.n_windows < self.step_windows:
            raise ShardError(f"{shards.folder}: {len(shards)} {shards.split} tokens make "
                             f"{self.n_windows} windows of {seq_len + 1}, fewer than one "
                             f"step's {self.step_windows}")
        self.epoch = self.index = 0
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The window numbers of an epoch, in the order they are served."""
        if epoch != self._order_epoch:
            if self.shuffle:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
                self._order = rng.permutation(self.n_windows)
            else:
                self._order = np.arange(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "seq_len": self.seq_len, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "seq_len", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise ShardError(f"loader state has {key}={state[key]}, this loader "
                                 f"{getattr(self, key)}: resuming would serve other windows")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def next_batch(self) -> Batch:
        if self.index + self.step_windows > self.n_windows:
            self.epoch, self.index = self.epoch + 1, 0
        first = self.index + self.rank * self.batch_size
        windows = self.order(self.epoch)[first:first + self.batch_size]
        self.index += self.step_windows
        width = self.seq_len + 1
        tokens = np.empty((len(windows), width), dtype=np.int64)
        mask = np.empty((len(windows), width), dtype=np.uint8)
        starts = []
        for row, window in enumerate(windows.tolist()):
            at = window * self.seq_len
            tokens[row] = self.shards.tokens(at, at + width)
            mask[row] = self.shards.mask(at, at + width)
            starts.append(self.shards.doc_starts(at, at + width))
        return Batch(tokens, mask, starts, windows)

    def __iter__(self) -> WindowLoader:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()
