"""PNG figures as bytes, drawn with matplotlib's Agg canvas (no pyplot state, no display)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from homellm.errors import HomellmError


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise HomellmError("plots need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(draw: Callable[[Any], None], *, title: str, xlabel: str, ylabel: str,
               size: tuple[float, float] = (7.0, 4.0)) -> bytes:
    """Call ``draw(axes)`` on a fresh figure and return it as PNG bytes."""
    fig = _figure(size)
    ax = fig.add_subplot()
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def histogram_png(values: Sequence[float], *, title: str, xlabel: str, bins: int = 50,
                  marks: Mapping[str, float] | None = None) -> bytes:
    """A histogram with optional vertical lines (e.g. ``{"p50": 12.0, "p99": 40.0}``)."""

    def draw(ax: Any) -> None:
        if len(values) == 0:
            _empty(ax)
            return
        lo, hi = min(values), max(values)
        # a near-constant sample (float noise only) cannot be cut into many finite bins
        n_bins = bins if hi - lo > 1e-9 * max(abs(hi), 1e-12) else 1
        ax.hist(values, bins=n_bins, color="#4878a8")
        for i, (name, x) in enumerate((marks or {}).items()):
            ax.axvline(x, color=f"C{i + 1}", linestyle="--", label=f"{name} {x:.3g}")
        if marks:
            ax.legend()

    return figure_png(draw, title=title, xlabel=xlabel, ylabel="count")


def lines_png(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
              xlabel: str, ylabel: str, marker: str | None = None, step: bool = False,
              logy: bool = False, span: tuple[float, float, str] | None = None) -> bytes:
    """One line per named (xs, ys) series; ``step``: ys[i] holds from xs[i] to xs[i + 1]."""

    def draw(ax: Any) -> None:
        drawn = False
        if logy:
            ax.set_yscale("log")
        for name, (xs, ys) in series.items():
            pts = [(x, y) for x, y in zip(xs, ys, strict=True)
                   if y is not None and (y > 0 or not logy)]
            if not pts:
                continue
            px, py = zip(*pts, strict=True)
            if step:  # repeat the last value so the last bucket is drawn as wide as the others
                width = px[-1] - px[-2] if len(px) > 1 else 1.0
                ax.step([*px, px[-1] + width], [*py, py[-1]], where="post", label=name)
            else:
                ax.plot(px, py, marker=marker, label=name)
            drawn = True
        if span is not None:  # (start, end, label): a shaded interval, e.g. a steady window
            ax.axvspan(span[0], span[1], color="0.85", zorder=0, label=span[2])
        if not drawn:
            _empty(ax)
        elif len(series) > 1 or span is not None:
            ax.legend()

    return figure_png(draw, title=title, xlabel=xlabel, ylabel=ylabel)
