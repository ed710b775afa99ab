"""What a person watching a run sees: a progress bar (step, loss, tokens/s, MFU, ETA) on a
terminal, a plain line every ``log_every`` steps otherwise (logs, CI), and one-line notes.
Only rank 0 prints."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _info(loss: float, tokens_per_s: float, mfu: float | None) -> str:
    text = f"loss {loss:.4f} · {tokens_per_s:,.0f} tok/s"
    return text + (f" · MFU {mfu:.1%}" if mfu is not None else "")


class TrainProgress:
    def __init__(self, console: Console, *, enabled: bool = True, log_every: int = 10) -> None:
        self.console, self.enabled, self.log_every = console, enabled, log_every
        self._bar: Progress | None = None
        self._task = None
        self._total = 0
        self._started = 0.0
        self._first_step = 0
        self._rate: float | None = None     # smoothed tokens/s: single steps are noisy

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, highlight=False)

    def start(self, total_steps: int, step: int) -> None:
        self._total, self._first_step, self._started = total_steps, step, time.monotonic()
        if not self.enabled or not self.console.is_terminal:
            return
        self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        self._task = self._bar.add_task("train", total=total_steps, completed=step, info="")
        self._bar.start()

    def step(self, step: int, *, loss: float, tokens_per_s: float, mfu: float | None) -> None:
        if not self.enabled:
            return
        if self._rate is not None and mfu is not None and tokens_per_s:
            mfu *= (0.9 * self._rate + 0.1 * tokens_per_s) / tokens_per_s
        self._rate = (tokens_per_s if self._rate is None
                      else 0.9 * self._rate + 0.1 * tokens_per_s)
        info = _info(loss, self._rate, mfu)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self._total:
            done = step - self._first_step
            spent = time.monotonic() - self._started
            eta = spent / done * (self._total - step) if done else 0.0
            self.console.print(f"step {step}/{self._total} · {info} · ETA {eta:,.0f}s",
                               markup=False, highlight=False)

    def finish(self, step: int, *, stopped: bool) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if stopped:
            self.note(f"stopped at step {step}: checkpoint saved, resume with --resume")
