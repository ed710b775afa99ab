"""Crash-safe training checkpoints with exact resume.

Layout: ``RUN_DIR/checkpoints/step-000123/`` holding ``model.safetensors``, ``optimizer.pt``
(optimizer and scheduler state), ``rng.pt``, ``trainer_state.json`` and ``manifest.json`` (the
sha256 and size of every other file, and the format version). A checkpoint is built in a
``.tmp-*`` folder, every file and the folder are fsynced, then the folder is renamed into place,
so a reader sees a whole checkpoint or none. Old ones are first renamed to ``.del-*`` and then
removed, so a kill during deletion leaves only a temp name behind, never a half-deleted step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from homellm.errors import HomellmError
from homellm.fsutil import fsync_dir, fsync_file

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
_REQUIRED = (MODEL_FILE, RNG_FILE, STATE_FILE)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TEMP_PREFIXES = (".tmp-", ".del-", ".old-")

log = logging.getLogger(__name__)


class CheckpointError(HomellmError):
    """Checkpoints exist but none can be used, or one cannot be restored into these objects."""


@dataclass
class TrainState:
    """What ``CheckpointManager.save`` writes besides the step number."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    tokens_seen: int = 0
    data_position: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None
    # a sharded (FSDP2) run gathers the full optimizer state itself; it replaces
    # optimizer.state_dict(), which would hold only this rank's shards
    optimizer_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint folder and its trainer state (weights stay on disk until restore)."""

    path: Path
    step: int
    tokens_seen: int
    data_position: dict[str, Any]
    config: dict[str, Any]
    val_loss: float | None


class Latest(NamedTuple):
    checkpoint: Checkpoint | None
    problems: list[str]


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _rng_state() -> dict[str, Any]:
    # numpy's legacy state holds an ndarray, which torch.load(weights_only=True) refuses.
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        count = min(len(state["cuda"]), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(state["cuda"][index], index)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete-looking ``step-N`` folders, newest first."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, key=lambda item: item[0], reverse=True)


def _leftovers(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_TEMP_PREFIXES))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def verify(path: str | os.PathLike[str]) -> list[str]:
    """Problems with one checkpoint folder (empty when every file matches its manifest)."""
    folder = Path(path)
    name = folder.name
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        version = int(manifest["format_version"])
        files = {str(k): (int(v["bytes"]), str(v["sha256"])) for k, v in manifest["files"].items()}
        if any("/" in k or k.startswith(".") for k in files):
            raise ValueError("a file name points outside the folder")
    except FileNotFoundError:
        return [f"{name}: {MANIFEST_FILE} is missing"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{name}: {MANIFEST_FILE} is unreadable ({type(exc).__name__})"]
    if version > FORMAT_VERSION:
        return [f"{name}: format version {version} is newer than this homellm ({FORMAT_VERSION})"]
    problems = [f"{name}: {f} is not in the manifest" for f in _REQUIRED if f not in files]
    for file_name, (want, digest) in files.items():
        target = folder / file_name
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: {file_name} is missing")
            continue
        if size != want:
            problems.append(f"{name}: {file_name} has {size} bytes, manifest says {want}")
        elif _sha256(target) != digest:
            problems.append(f"{name}: {file_name} fails its sha256 check")
    if not problems and _read_state(folder) is None:
        problems.append(f"{name}: {STATE_FILE} is unreadable")
    return problems


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """One checkpoint folder, verified; ``CheckpointError`` naming the first problem if not."""
    folder = Path(path)
    problems = verify(folder)
    if problems:
        raise CheckpointError(f"checkpoint {folder} is corrupt: {'; '.join(problems)}")
    return _checkpoint(folder)


def _checkpoint(folder: Path) -> Checkpoint:
    state = _read_state(folder) or {}
    return Checkpoint(
        path=folder,
        step=int(state["step"]),
        tokens_seen=int(state.get("tokens_seen", 0)),
        data_position=dict(state.get("data_position") or {}),
        config=dict(state.get("config") or {}),
        val_loss=state.get("val_loss"),
    )


def load_latest(run_dir: str | os.PathLike[str]) -> Latest:
    """The newest valid checkpoint, falling back past corrupt ones, and the problems seen.

    Each problem is also logged as a warning. No checkpoints at all → ``(None, problems)``, a
    fresh start; checkpoints that all fail verification → ``CheckpointError``, so a run is
    never silently restarted from scratch.
    """
    root = checkpoints_dir(run_dir)
    problems = [f"{p.name}: left over from an interrupted save or delete, ignored"
                for p in _leftovers(root)]
    found = None
    steps = _step_dirs(root)
    newest_problem = ""
    for _, folder in steps:
        bad = verify(folder)
        if not bad:
            found = _checkpoint(folder)
            break
        newest_problem = newest_problem or bad[0]
        problems.extend(bad)
    for problem in problems:
        log.warning("checkpoint: %s", problem)
    if found is None and steps:
        raise CheckpointError(
            f"all {len(steps)} checkpoints in {root} are corrupt (newest: {newest_problem}); "
            "move the folder aside to start fresh"
        )
    if found is not None and found.path != steps[0][1]:
        log.warning("checkpoint: resuming from the older %s", found.path.name)
    return Latest(found, problems)


def restore(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> None:
    """Load weights, optimizer and scheduler state, and every RNG, as they were at ``save``."""
    restore_model(checkpoint, model)
    if optimizer is not None or scheduler is not None:
        restore_optimizer(checkpoint, optimizer, scheduler)


def restore_model(checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """Load the weights (strictly) and every RNG state."""
    try:
        missing, unexpected = load_model(model, checkpoint.path / MODEL_FILE, strict=False)
    except RuntimeError as exc:  # shape mismatch: torch's message spans several lines
        first = str(exc).splitlines()[-1].strip()
        message = f"{checkpoint.path}: weights do not fit this model ({first})"
        raise CheckpointError(message) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.path}: weights do not fit this model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    _set_rng_state(torch.load(checkpoint.path / RNG_FILE, weights_only=True))


def restore_optimizer(
    checkpoint: Checkpoint,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    load_optimizer: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Load the optimizer and scheduler state; ``load_optimizer`` replaces
    ``optimizer.load_state_dict`` (a sharded run scatters the full state itself)."""
    opt_path = checkpoint.path / OPTIMIZER_FILE
    if not opt_path.exists():
        raise CheckpointError(f"{checkpoint.path}: no {OPTIMIZER_FILE} to restore from")
    states = torch.load(opt_path, map_location="cpu", weights_only=True)
    if load_optimizer is not None:
        load_optimizer(states["optimizer"])
    elif optimizer is not None:
        optimizer.load_state_dict(states["optimizer"])
    if scheduler is not None:
        if states.get("scheduler") is None:
            raise CheckpointError(f"{checkpoint.path}: saved without a scheduler state")
        scheduler.load_state_dict(states["scheduler"])


class CheckpointManager:
    """Writes checkpoints into ``RUN_DIR/checkpoints`` and keeps the last K plus the best."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        keep_last: int = 3,
        every_steps: int | None = None,
        every_minutes: float | None = None,
    ) -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.root = checkpoints_dir(run_dir)
        self.keep_last = keep_last
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self._last_step: int | None = None
        self._last_time: float | None = None

    def due(self, step: int, now: float | None = None) -> bool:
        """Whether ``step`` should be saved: every N steps or M minutes since the last save.

        ``now`` is ``time.monotonic()``; the minute clock starts at the first call.
        """
        now = time.monotonic() if now is None else now
        if self._last_time is None:
            self._last_time = now
        if step == self._last_step:
            return False
        if self.every_steps and step > 0 and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes and now - self._last_time >= self.every_minutes * 60)

    @property
    def last_saved_step(self) -> int | None:
        return self._last_step

    def save(self, step: int, state: TrainState) -> Checkpoint:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir()
        try:
            save_model(state.model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
            fsync_file(tmp / MODEL_FILE)
            if state.optimizer is not None or state.optimizer_state is not None:
                scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
                optimizer_state = (state.optimizer_state if state.optimizer_state is not None
                                   else state.optimizer.state_dict())   # type: ignore[union-attr]
                _write(tmp / OPTIMIZER_FILE,
                       _torch_bytes({"optimizer": optimizer_state,
                                     "scheduler": scheduler}))
            _write(tmp / RNG_FILE, _torch_bytes(_rng_state()))
            trainer_state = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "tokens_seen": state.tokens_seen,
                "data_position": state.data_position,
                "config": state.config,
                "val_loss": state.val_loss,
                "saved_at": time.time(),
                "torch": torch.__version__,
            }
            _write(tmp / STATE_FILE, json.dumps(trainer_state, indent=2).encode("utf-8"))
            files = {
                entry.name: {"sha256": _sha256(entry), "bytes": entry.stat().st_size}
                for entry in sorted(tmp.iterdir())
            }
            manifest = {"format_version": FORMAT_VERSION, "step": step, "files": files}
            _write(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode("utf-8"))
            fsync_dir(tmp)
            if final.exists():
                # Same step saved again (a resumed run re-reaching it): the newer one wins.
                old = self.root / f".old-{final.name}-{os.getpid()}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._last_step = step
        self._last_time = time.monotonic()
        self._prune()
        return Checkpoint(final, step, state.tokens_seen, dict(state.data_position),
                          dict(state.config), state.val_loss)

    def best(self) -> Path | None:
        """The checkpoint with the lowest validation loss (the earliest on a tie)."""
        best: tuple[float, int, Path] | None = None
        for step, folder in _step_dirs(self.root):
            loss = (_read_state(folder) or {}).get("val_loss")
            if not isinstance(loss, int | float) or math.isnan(loss):
                continue
            if best is None or (loss, step) < best[:2]:
                best = (float(loss), step, folder)
        return best[2] if best else None

    def _prune(self) -> None:
        keep = {folder for _, folder in _step_dirs(self.root)[: self.keep_last]}
        best = self.best()
        if best is not None:
            keep.add(best)
        for _, folder in _step_dirs(self.root):
            if folder not in keep:
                doomed = self.root / f".del-{folder.name}-{os.getpid()}"
                folder.rename(doomed)
                fsync_dir(self.root)
                shutil.rmtree(doomed, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        for leftover in _leftovers(self.root):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
