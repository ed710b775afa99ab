"""What the engine probes (vllm_probe.py, sglang_probe.py) share: one JSON job a line in,
one ``PROBE {json}`` line out, each job in a forked child, and the engine line that raised.

Runs under an engine's venv, so it imports nothing from homellm.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

PREFIX = "PROBE "


def relative(path: str, package_dir: str) -> str:
    return os.path.relpath(path, os.path.dirname(package_dir))


class RaiseSpy:
    """Remembers where inside the engine package each exception was first raised: a pydantic
    ValidationError wrapping a ValueError from ``__post_init__`` no longer carries that frame."""

    def __init__(self, package_dir: str) -> None:
        self.package_dir = package_dir
        self.origins: list[tuple[BaseException, str]] = []
        self._seen: set[int] = set()

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception" and id(arg[1]) not in self._seen:
            self._seen.add(id(arg[1]))
            where = f"{relative(frame.f_code.co_filename, self.package_dir)}:{frame.f_lineno}"
            self.origins.append((arg[1], where))
        return self._local

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_filename.startswith(self.package_dir):
            return self._local
        return None

    def where(self, exc: BaseException) -> str:
        """The engine line that raised ``exc``, or the earlier exception whose words it carries."""
        text = str(exc)
        for origin, where in self.origins:
            inner = str(origin)
            if origin is not exc and len(inner) >= 20 and inner in text:
                return where
        for origin, where in self.origins:
            if origin is exc:
                return where
        return last_frame_in(exc.__traceback__, self.package_dir)


def last_frame_in(tb: TracebackType | None, package_dir: str) -> str:
    where = ""
    for frame, line in traceback.walk_tb(tb):
        if frame.f_code.co_filename.startswith(package_dir):
            where = f"{relative(frame.f_code.co_filename, package_dir)}:{line}"
    return where


def error_text(exc: BaseException) -> str:
    """The exception in one line; a pydantic ValidationError as its errors' own messages
    (without the echo of every input field)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and getattr(exc, "title", None):
        try:
            parts = [f"{'.'.join(map(str, e.get('loc', ()))) or exc.title}: {e['msg']}"
                     for e in errors()]
            return f"{type(exc).__name__} ({exc.title}): " + "; ".join(parts)
        except (TypeError, KeyError):
            pass
    return f"{type(exc).__name__}: {exc}"


def rope_of(config: Any) -> Any:
    """The RoPE scaling a transformers config holds (``rope_parameters`` in transformers 5,
    ``rope_scaling`` before), JSON-able; None if it has neither."""
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        if isinstance(value, dict) and value:
            return {k: v for k, v in value.items() if isinstance(v, str | int | float | bool)}
    return None


class Stages:
    """Runs a job's stages in order, recording the first that raises."""

    def __init__(self, package_dir: str, result: dict[str, Any]) -> None:
        self.spy = RaiseSpy(package_dir)
        self.result = result

    def run(self, stage: str, fn: Callable[[], Any], into: dict[str, Any] | None = None) -> Any:
        out = self.result if into is None else into
        sys.settrace(self.spy)
        try:
            return fn()
        except SystemExit as exc:  # argparse: its message went to stderr, captured by caller
            said = out.pop("stderr", "")
            said = said[said.rfind("error:"):] if "error:" in said else said[-300:]
            out.update(stage=stage, error=f"argparse exit {exc.code}: {said}".strip(), where="")
        except BaseException as exc:
            out.update(stage=stage, error=error_text(exc), where=self.spy.where(exc))
        finally:
            sys.settrace(None)
        return None


def run_forked(probe: Callable[[list[str]], dict[str, Any]], job: dict[str, Any],
               package_dir: str) -> dict[str, Any]:
    """``probe(job["argv"])`` in a forked child, so no job's state leaks into the next."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            out = probe(job["argv"])
        except BaseException as exc:
            out = {"accepted": False, "stage": "probe", "error": error_text(exc),
                   "where": last_frame_in(exc.__traceback__, package_dir)}
        out.pop("stderr", None)
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write(json.dumps(out, default=str))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return {"accepted": False, "stage": "probe", "error": f"probe child died ({status})",
                "where": ""}
    return json.loads(text)


def serve_jobs(probe: Callable[[list[str]], dict[str, Any]], package_dir: str,
               warm: Callable[[], None] | None = None) -> int:
    """Answer every job on stdin. ``warm`` imports, once in the parent, what each forked
    child would otherwise import again (the engines import lazily)."""
    if warm is not None:
        with contextlib.suppress(Exception):  # a job meets and reports the same error
            warm()
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            started = time.monotonic()
            out = {"id": job["id"], "argv": job["argv"], **run_forked(probe, job, package_dir)}
            out["seconds"] = round(time.monotonic() - started, 2)
            print(PREFIX + json.dumps(out, default=str), flush=True)
    return 0
