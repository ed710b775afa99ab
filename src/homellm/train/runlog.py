"""The run log of ``homellm train``: ``RUN_DIR/metrics.jsonl``, one JSON object per line.

Every row has ``kind``, ``step`` and ``time`` (unix seconds). Kinds and their other fields:

- ``train``: tokens (seen so far), loss, lr, grad_norm (null when not measured), tokens_per_s,
  mfu (fraction 0..1, null on CPU), memory_gib (peak GPU memory, null on CPU), seq_len, stage
- ``eval``: split ("val" or "test"), loss, ppl, bpb, bpc, tokens (tokens the eval scored)
- ``sample``: prompt, text
- ``positions``: split, bucket (tokens per bucket), loss (mean loss per bucket; bucket i covers
  positions [i * bucket, (i + 1) * bucket))
- ``needle``: length, depth (0..1), accuracy (0..1), trials, chance
- ``event``: message (resumed, stage change, checkpoint saved, stopped by Ctrl-C)

Each append is flushed and fsynced, so a crash leaves at most a torn last line, which ``read``
skips. On resume from a checkpoint at step S, ``truncate_after(S)`` drops the rows written
after it, so the log reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from homellm.errors import HomellmError
from homellm.fsutil import atomic_write_bytes

FILENAME = "metrics.jsonl"
KINDS = ("train", "eval", "sample", "positions", "needle", "event")


def _parse(line: str | bytes) -> dict[str, Any] | None:
    """The row on ``line``, or None when it is not a JSON object with a kind and a step."""
    try:
        row = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(row, dict) or not isinstance(row.get("kind"), str):
        return None
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return row


def _lines(path: Path) -> list[tuple[str | bytes, dict[str, Any]]]:
    """Each valid line with its row; a bad last line is a torn write and is left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    raw: list[bytes] | list[str]
    try:  # decoding once is faster than per line; a torn multi-byte character needs the latter
        raw = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raw = data.split(b"\n")
    if raw and not raw[-1]:
        raw.pop()
    out = []
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        row = _parse(line)
        if row is None:
            if number == len(raw):
                break
            raise HomellmError(f"{path}:{number}: not a run-log row (JSON object with a kind "
                               f"and an integer step): {line[:80]!r}")
        out.append((line, row))
    return out


class RunLog:
    """Appends rows to ``RUN_DIR/metrics.jsonl``; use as a context manager or call ``close``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / FILENAME
        self._handle: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_tail()
            self._handle = open(self.path, "ab")  # noqa: SIM115 -- kept open across appends
        return self._handle

    def _drop_torn_tail(self) -> None:
        # A row appended after a torn line would sit glued to it in the middle of the file,
        # where read refuses bad lines: cut the torn line off first.
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            start = _last_line_start(f, size)
            f.seek(start)
            last = f.read()
            valid = bool(last.strip()) and _parse(last) is not None
            if valid and last.endswith(b"\n"):
                return
            if valid:  # complete row whose newline did not make it to disk
                f.write(b"\n")
            else:
                f.truncate(start)
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (``time`` added when missing), flushed and fsynced."""
        kind, step = row.get("kind"), row.get("step")
        if kind not in KINDS:
            raise ValueError(f"row kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"row step must be an int, got {step!r}")
        full = {"kind": kind, "step": step, "time": row.get("time", time.time()), **row}
        line = json.dumps(full, ensure_ascii=False, separators=(",", ":")) + "\n"
        handle = self._open()
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())

    def truncate_after(self, step: int) -> int:
        """Keep only the rows with ``step <= step`` (atomic rewrite); returns how many stayed."""
        self.close()
        kept = [line.encode("utf-8") if isinstance(line, str) else line
                for line, row in _lines(self.path) if row["step"] <= step]
        if self.path.exists():
            atomic_write_bytes(self.path, b"".join(line + b"\n" for line in kept))
        return len(kept)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def read(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """All rows in file order; [] when there is no log yet."""
        return [row for _, row in _lines(Path(run_dir) / FILENAME)]


def _last_line_start(f: BinaryIO, size: int) -> int:
    """Offset just past the newline before the file's last line (a trailing newline belongs
    to the last line)."""
    end = size - 1 if size > 0 else 0
    pos, chunk = end, 65536
    while pos > 0:
        lo = max(0, pos - chunk)
        f.seek(lo)
        block = f.read(pos - lo)
        i = block.rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        pos = lo
    return 0
