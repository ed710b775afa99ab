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

A window belongs to the source of the document holding its first target token (token
``i*T + 1``). ``mix={"books": 0.7, "dialogues": 0.3}`` (keys: a source kind or a source name;
sources no key names are not served) serves a seeded weighted interleave instead: each slot
of global step ``s`` draws a group by weight (``SeedSequence([seed, DRAW, s])``) and takes the
next window of that group's own permutation (``SeedSequence([seed, GROUP, group, epoch])``,
groups in key order). A group that has fewer windows left in its epoch than the step draws
from it starts its next epoch (its tail is dropped, as drop-last does), so a step never serves
a window twice. The state is then {step, cursors: [[epoch, position] per group]}: resuming
is O(1) and exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from homellm.data.shards import FORMAT, KINDS, MANIFEST, ShardError, file_sizes, shard_name

Verify = Literal["size", "sha256"]
DRAW, GROUP = 0x6D6978, 0x67727570  # SeedSequence tags: the mix's draws, a group's order
MAX_NAMES = 20                      # known source names listed in an error


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
        self.sources: list[dict[str, str]] = manifest["sources"]   # index → {"name", "kind"}
        self.source_tokens: dict[str, int] = state["sources"]       # name → tokens, this split
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        doc_sources: list[np.ndarray] = []
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
            doc_sources.append(np.fromfile(folder / f"{name}.src", np.uint32).astype(np.int64))
            if len(doc_sources[-1]) and doc_sources[-1].max() >= len(self.sources):
                raise ShardError(f"{folder / name}.src: a source index past the manifest's "
                                 f"{len(self.sources)} sources (corrupt: re-run `homellm data "
                                 "tokenize`)")
            bounds.append(bounds[-1] + entry["tokens"])
        self._bounds = np.array(bounds, dtype=np.int64)
        empty = np.zeros(0, dtype=np.int64)
        self.doc_start_offsets = np.concatenate(starts) if starts else empty
        self.doc_sources = np.concatenate(doc_sources) if doc_sources else empty

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
            # older formats lack the per-document sources that windows and mixes need;
            # tokenize rebuilds them in place, so refusing costs one command
            raise ShardError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, not "
                             f"{FORMAT}: re-run `homellm data tokenize` on the dataset")
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

    def sources_at(self, positions: np.ndarray) -> np.ndarray:
        """The source index of the document holding each token position."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and not (positions.min() >= 0 and positions.max() < len(self)):
            raise IndexError(f"token positions outside 0..{len(self)} of {self.split}")
        docs = np.searchsorted(self.doc_start_offsets, positions, "right") - 1
        return self.doc_sources[docs]


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
    sources: np.ndarray            # each window's source: an index into ShardSet.sources


class WindowLoader:
    """Seeded, resumable batches of fixed-length windows from a ShardSet."""

    def __init__(self, shards: ShardSet, seq_len: int, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 mix: dict[str, float] | None = None) -> None:
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
        self._window_sources: np.ndarray | None = None
        self.mix = None if mix is None else {str(k): float(v) for k, v in mix.items()}
        self.step = 0
        self._groups: list[np.ndarray] = []
        self._weights = np.zeros(0)
        self._cursors: list[list[int]] = []
        self._group_orders: dict[int, tuple[int, np.ndarray]] = {}
        if self.mix is not None:
            self._groups, self._weights = self._mix_groups(self.mix)
            self._cursors = [[0, 0] for _ in self._groups]

    @property
    def window_sources(self) -> np.ndarray:
        """Every window's source index (into ``shards.sources``)."""
        if self._window_sources is None:
            self._window_sources = self.shards.sources_at(
                np.arange(self.n_windows, dtype=np.int64) * self.seq_len + 1)
        return self._window_sources

    def window_source(self, window: int) -> dict[str, str]:
        """{"name", "kind"} of the document holding the window's first target token."""
        at = window * self.seq_len + 1
        return self.shards.sources[int(self.shards.sources_at(np.array([at]))[0])]

    def _mix_groups(self, mix: dict[str, float]) -> tuple[list[np.ndarray], np.ndarray]:
        """The windows of each key with weight > 0 (in key order) and the weights summing
        to 1."""
        sources, kinds = self.shards.sources, tuple(KINDS.values())
        owner = np.full(len(sources), -1, dtype=np.int64)  # source index → key number
        keys = sorted(mix)
        for number, key in enumerate(keys):
            if not (math.isfinite(mix[key]) and mix[key] >= 0):
                raise ShardError(f"mix weight of {key!r} is {mix[key]}: weights are numbers ≥ 0")
            members = np.array([i for i, s in enumerate(sources) if key in (s["kind"], s["name"])],
                               dtype=np.int64)
            if key not in kinds and not len(members):
                names = sorted({s["name"] for s in sources})
                more = f", … ({len(names) - MAX_NAMES} more)" if len(names) > MAX_NAMES else ""
                raise ShardError(f"mix key {key!r} is neither a source kind ({', '.join(kinds)}) "
                                 f"nor a source of {self.shards.folder}; sources: "
                                 f"{', '.join(names[:MAX_NAMES])}{more}")
            taken = members[owner[members] >= 0]
            if len(taken):
                raise ShardError(f"mix keys {keys[owner[taken[0]]]!r} and {key!r} both take "
                                 f"source {sources[taken[0]]['name']}: give each source one key")
            owner[members] = number
        of_window = owner[self.window_sources]
        groups, weights = [], []
        for number, key in enumerate(keys):
            if mix[key] == 0:
                continue
            windows = np.flatnonzero(of_window == number)
            if len(windows) < self.step_windows:
                raise ShardError(f"mix key {key!r} has {len(windows)} windows of "
                                 f"{self.seq_len + 1} in {self.shards.split}, fewer than one "
                                 f"step's {self.step_windows}")
            groups.append(windows)
            weights.append(mix[key])
        if not groups:
            raise ShardError(f"mix {mix} gives every source weight 0: nothing to serve")
        total = np.array(weights, dtype=np.float64)
        return groups, total / total.sum()

    def order(self, epoch: int) -> np.ndarray:
        """The window numbers of an epoch, in the order they are served (without a mix)."""
        if epoch != self._order_epoch:
            if self.shuffle:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
                self._order = rng.permutation(self.n_windows)
            else:
                self._order = np.arange(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def _group_order(self, group: int, epoch: int) -> np.ndarray:
        cached = self._group_orders.get(group)
        if cached is None or cached[0] != epoch:
            windows = self._groups[group]
            if self.shuffle:
                seq = np.random.SeedSequence([self.seed, GROUP, group, epoch])
                windows = windows[np.random.default_rng(seq).permutation(len(windows))]
            cached = self._group_orders[group] = (epoch, windows)
        return cached[1]

    def _mixed_step(self) -> np.ndarray:
        """Every rank's windows of global step ``self.step``; advances the group cursors."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, DRAW, self.step]))
        draws = rng.choice(len(self._groups), size=self.step_windows, p=self._weights)
        windows = np.empty(self.step_windows, dtype=np.int64)
        for group, cursor in enumerate(self._cursors):
            slots = np.flatnonzero(draws == group)
            if not len(slots):
                continue
            epoch, at = cursor
            if at + len(slots) > len(self._groups[group]):
                epoch, at = epoch + 1, 0
            windows[slots] = self._group_order(group, epoch)[at:at + len(slots)]
            cursor[:] = [epoch, at + len(slots)]
        self.step += 1
        return windows

    def state_dict(self) -> dict[str, Any]:
        fixed = {"seed": self.seed, "seq_len": self.seq_len, "n_windows": self.n_windows}
        if self.mix is None:
            return {"epoch": self.epoch, "index": self.index, **fixed}
        return {"step": self.step, "cursors": [list(c) for c in self._cursors],
                "mix": dict(self.mix), **fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "seq_len", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise ShardError(f"loader state has {key}={state[key]}, this loader "
                                 f"{getattr(self, key)}: resuming would serve other windows")
        if state.get("mix") != self.mix:
            raise ShardError(f"loader state has mix={state.get('mix')}, this loader "
                             f"{self.mix}: resuming would serve other windows")
        if self.mix is None:
            self.epoch, self.index = int(state["epoch"]), int(state["index"])
            return
        cursors = [[int(epoch), int(at)] for epoch, at in state["cursors"]]
        if len(cursors) != len(self._groups):
            raise ShardError(f"loader state has {len(cursors)} mix cursors, this loader "
                             f"{len(self._groups)} groups")
        self.step, self._cursors = int(state["step"]), cursors

    def next_batch(self) -> Batch:
        first = self.rank * self.batch_size
        if self.mix is not None:
            windows = self._mixed_step()[first:first + self.batch_size]
        else:
            if self.index + self.step_windows > self.n_windows:
                self.epoch, self.index = self.epoch + 1, 0
            first += self.index
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
        sources = self.shards.sources_at(windows * self.seq_len + 1)
        return Batch(tokens, mask, starts, windows, sources)

    def __iter__(self) -> WindowLoader:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()
