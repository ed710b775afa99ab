"""The live progress line of a bench run (rich): done, in flight, failed, output tok/s, ETA.

Rendering is driven by ``run_load``'s own 0.5 s progress callback (``auto_refresh=False``), so
there is no drawing thread competing with the client's event loop for the GIL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from homellm.bench.load import Progress


def progress_text(p: Progress) -> str:
    eta = "–" if p.eta_s is None else f"{p.eta_s:,.0f}s"
    total = "" if p.total is None else f"/{p.total}"
    return (f"{p.done}{total} done · {p.in_flight} in flight · {p.failed} failed · "
            f"{p.output_tok_s:,.0f} tok/s · ETA {eta}")


@contextmanager
def live_progress(console: Console, label: str = "bench") -> Iterator[Callable[[Progress], None]]:
    """``with live_progress(console) as hook: run_bench(options, on_progress=hook)``."""
    bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                       console=console, auto_refresh=False, transient=False)
    task = bar.add_task(label, total=None, info="starting")

    def update(p: Progress) -> None:
        if p.total is not None:
            bar.update(task, completed=p.done, total=p.total, info=progress_text(p))
        elif p.duration_s is not None:
            bar.update(task, completed=min(p.elapsed_s, p.duration_s), total=p.duration_s,
                       info=progress_text(p))
        else:
            bar.update(task, info=progress_text(p))
        bar.refresh()

    with bar:
        yield update
