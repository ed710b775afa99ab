"""The report of a training run: ``RUN_DIR/report/index.html`` (self-contained) and its PNGs.

Rebuilt from the run log at every eval, so it stays fast on long logs: series longer than
``MAX_POINTS`` are averaged into buckets before plotting.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from homellm.fsutil import atomic_write_bytes, atomic_write_text
from homellm.report.html import Section, Table, html_page
from homellm.report.plots import figure_png, lines_png
from homellm.train.runlog import KINDS, RunLog

MAX_POINTS = 1500
FIGURES = ("loss", "bpb", "throughput", "memory", "loss_by_position", "needle")
Row = dict[str, Any]


def _by_kind(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {kind: [] for kind in KINDS}
    for r in rows:
        out.setdefault(r.get("kind"), []).append(r)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _thin(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Finite points, averaged in runs of equal size down to at most MAX_POINTS."""
    x = np.asarray(xs, dtype=float)  # None becomes NaN
    y = np.asarray(ys, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) <= MAX_POINTS:
        return x.tolist(), y.tolist()
    k = math.ceil(len(x) / MAX_POINTS)
    starts = np.arange(0, len(x), k)
    counts = np.diff(np.append(starts, len(x)))
    return ((np.add.reduceat(x, starts) / counts).tolist(),
            (np.add.reduceat(y, starts) / counts).tolist())


def _best(evals: Sequence[Row], key: str) -> Row | None:
    ok = [r for r in evals if _finite(r.get(key))]
    return min(ok, key=lambda r: r[key]) if ok else None


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    """The summary table's figures; None where the log has nothing to say yet."""
    by = _by_kind(rows)
    train, evals = by["train"], by["eval"]
    val = [r for r in evals if r.get("split") == "val"]
    test = [r for r in evals if r.get("split") == "test"]
    last = train[-1] if train else {}
    tail = train[-math.ceil(len(train) / 5):] if train else []
    tps = [r["tokens_per_s"] for r in tail if _finite(r.get("tokens_per_s"))]
    mfus = [r["mfu"] for r in tail if _finite(r.get("mfu"))]
    mems = np.asarray([r.get("memory_gib") for r in train], dtype=float)
    mems = mems[np.isfinite(mems)]
    times = np.asarray([r.get("time") for r in rows], dtype=float)
    times = times[np.isfinite(times)]
    out: dict[str, Any] = {
        "rows": len(rows),
        "train_rows": len(train),
        "steps": max((r["step"] for r in train), default=None),
        "tokens": last.get("tokens"),
        "last_train_loss": last.get("loss"),
        "last_lr": last.get("lr"),
        "seq_len": last.get("seq_len"),
        "stage": last.get("stage"),
        "mean_tokens_per_s_last20": sum(tps) / len(tps) if tps else None,
        "mean_mfu_last20": sum(mfus) / len(mfus) if mfus else None,
        "peak_memory_gib": float(mems.max()) if len(mems) else None,
        "wall_s": float(times.max() - times.min()) if len(times) else None,
    }
    for key in ("loss", "bpb", "bpc"):
        best = _best(val, key)
        out[f"best_val_{key}"] = best[key] if best else None
        out[f"best_val_{key}_step"] = best["step"] if best else None
    final = test[-1] if test else None
    out["test"] = ({k: final.get(k) for k in ("step", "loss", "ppl", "bpb", "bpc", "tokens")}
                   if final else None)
    return out


def _tokens_at(train: Sequence[Row]) -> Any:
    """step -> tokens seen at the last train row at or before it (0 before the first)."""
    pairs = sorted((r["step"], r.get("tokens") or 0) for r in train)
    steps = [s for s, _ in pairs]

    def at(step: int) -> float:
        i = bisect.bisect_right(steps, step)
        return float(pairs[i - 1][1]) if i else 0.0

    return at


def loss_png(train: Sequence[Row], evals: Sequence[Row]) -> bytes:
    xs, ys = _thin([r.get("tokens") for r in train], [r.get("loss") for r in train])
    at = _tokens_at(train)

    def draw(ax: Any) -> None:
        ax.plot(xs, ys, label="train", linewidth=1)
        for i, split in enumerate(sorted({r.get("split") for r in evals} - {None})):
            pts = [(at(r["step"]), r["loss"]) for r in evals
                   if r.get("split") == split and _finite(r.get("loss"))]
            if pts:
                ex, ey = zip(*pts, strict=True)
                ax.plot(ex, ey, marker="o", linestyle="--", color=f"C{i + 1}", label=split)
        ax.legend()

    return figure_png(draw, title="Loss", xlabel="tokens seen", ylabel="loss (nats per token)")


def bpb_png(evals: Sequence[Row]) -> bytes:
    series = {}
    for split in sorted({r.get("split") for r in evals} - {None}):
        mine = [r for r in evals if r.get("split") == split]
        steps = [r["step"] for r in mine]
        for key in ("bpb", "bpc"):
            series[f"{split} {key}"] = (steps, [r.get(key) if _finite(r.get(key)) else None
                                                for r in mine])
    return lines_png(series, title="Bits per byte and per character", xlabel="step",
                     ylabel="bits", marker="o")


def throughput_png(train: Sequence[Row]) -> bytes:
    steps = [r["step"] for r in train]
    xs, ys = _thin(steps, [r.get("tokens_per_s") for r in train])
    mx, my = _thin(steps, [100 * r["mfu"] if _finite(r.get("mfu")) else None for r in train])

    def draw(ax: Any) -> None:
        ax.plot(xs, ys, color="C0", label="tokens/s")
        if mx:
            twin = ax.twinx()
            twin.plot(mx, my, color="C1", label="MFU %")
            twin.set_ylabel("MFU (%)")
            twin.legend(loc="lower right")
        ax.legend(loc="lower left")

    return figure_png(draw, title="Throughput", xlabel="step", ylabel="tokens/s")


def memory_png(train: Sequence[Row]) -> bytes:
    xs, ys = _thin([r["step"] for r in train], [r.get("memory_gib") for r in train])
    return lines_png({"peak GPU memory": (xs, ys)}, title="Peak GPU memory", xlabel="step",
                     ylabel="GiB")


def positions_png(latest: dict[str, Row]) -> bytes:
    series = {}
    for split, r in sorted(latest.items()):
        bucket = int(r.get("bucket") or 1)
        losses = [x if _finite(x) else None for x in r.get("loss") or []]
        series[f"{split} (step {r['step']})"] = ([i * bucket for i in range(len(losses))], losses)
    return lines_png(series, title="Loss by position (falling = context is used)",
                     xlabel="position in sequence (tokens)", ylabel="mean loss", step=True)


def needle_png(needles: Sequence[Row]) -> bytes:
    lengths = sorted({r["length"] for r in needles})
    depths = sorted({r["depth"] for r in needles})
    grid = [[math.nan] * len(lengths) for _ in depths]
    for r in needles:
        grid[depths.index(r["depth"])][lengths.index(r["length"])] = float(r["accuracy"])

    def draw(ax: Any) -> None:
        im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower",
                       zorder=1)
        ax.set_axisbelow(True)  # figure_png turns the grid on after draw: keep it under the cells
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.2g}" for d in depths])
        for yi, row in enumerate(grid):
            for xi, acc in enumerate(row):
                if not math.isnan(acc):
                    ax.text(xi, yi, f"{acc:.2f}", ha="center", va="center",
                            color="white" if acc < 0.5 else "black", fontsize=8)
        ax.figure.colorbar(im, ax=ax, label="accuracy")

    return figure_png(draw, title=f"Needle retrieval accuracy (step {needles[0]['step']})",
                      xlabel="context length (tokens)", ylabel="needle depth")


def _figures(by: dict[str, list[Row]]) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, PNG) for each figure the log has data for."""
    train, evals = by["train"], by["eval"]
    out = []
    if train:
        k = math.ceil(len(train) / MAX_POINTS)
        thinned = f" (train points are means of {k} steps)" if k > 1 else ""
        out.append(("loss", f"train loss vs tokens seen; eval loss by split{thinned}",
                    loss_png(train, evals)))
        out.append(("throughput", "tokens/s and MFU by step", throughput_png(train)))
        if any(_finite(r.get("memory_gib")) for r in train):
            out.append(("memory", "peak GPU memory by step", memory_png(train)))
    if evals:
        out.append(("bpb", "eval bits per byte and per character by split", bpb_png(evals)))
    latest: dict[str, Row] = {}
    for r in by["positions"]:
        split = str(r.get("split") or "?")
        if split not in latest or r["step"] >= latest[split]["step"]:
            latest[split] = r
    if latest:
        out.append(("loss_by_position", "mean eval loss per position bucket, latest per split",
                    positions_png(latest)))
    needles = by["needle"]
    if needles:
        step = max(r["step"] for r in needles)
        now = [r for r in needles if r["step"] == step]
        chance = sorted({float(r.get("chance", math.nan)) for r in now})
        trials = sum(int(r.get("trials") or 0) for r in now)
        cap = (f"needle accuracy at step {step} by length × depth, {trials} trials; chance level "
               + ", ".join(f"{c:.3g}" for c in chance))
        out.append(("needle", cap, needle_png(now)))
    return out


def _summary_table(s: dict[str, Any]) -> Table:
    def at(key: str) -> str | None:
        return None if s[f"{key}_step"] is None else f"step {s[f'{key}_step']}"

    rows: list[list[object]] = [
        ["steps", s["steps"], None], ["tokens seen", s["tokens"], None],
        ["last train loss", s["last_train_loss"], None], ["last lr", s["last_lr"], None],
        ["seq len / stage", f"{s['seq_len']} / {s['stage']}", None],
        ["best val loss", s["best_val_loss"], at("best_val_loss")],
        ["best val bpb", s["best_val_bpb"], at("best_val_bpb")],
        ["best val bpc", s["best_val_bpc"], at("best_val_bpc")],
        ["mean tokens/s, last 20% of steps", s["mean_tokens_per_s_last20"], None],
        ["mean MFU, last 20% of steps", s["mean_mfu_last20"], None],
        ["peak GPU memory (GiB)", s["peak_memory_gib"], None],
        ["wall time (s)", s["wall_s"], None],
    ]
    if s["test"]:
        t = s["test"]
        rows += [[f"test {k}", t[k], f"step {t['step']}"] for k in ("loss", "ppl", "bpb", "bpc")]
    return Table(["figure", "value", "where"], rows)


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if _finite(t) else ""


def report_html(rows: Sequence[Row], title: str, figures: Sequence[tuple[str, str, bytes]]) -> str:
    by = _by_kind(rows)
    events = [[r["step"], _when(r.get("time")), r.get("message")]
              for r in by["event"][-200:]]
    events_section = Section("Events", tables=[Table(["step", "time", "event"], events)])
    if not by["train"]:
        sec = Section("Summary", paragraphs=["No steps yet: the run has not logged a train step."])
        return html_page(title, [sec, events_section] if events else [sec])
    s = summary(rows)
    evals = by["eval"][-60:]
    eval_rows = [[r["step"], r.get("split"), r.get("loss"), r.get("ppl"), r.get("bpb"),
                  r.get("bpc"), r.get("tokens")] for r in evals]
    samples = by["sample"]
    last = max((r["step"] for r in samples), default=None)
    sample_rows = [[r.get("prompt"), r.get("text")] for r in samples if r["step"] == last]
    sections = [Section("Summary", tables=[_summary_table(s)]),
                Section("Figures", images=[(cap, png) for _, cap, png in figures])]
    if eval_rows:
        sections.append(Section("Evaluations", tables=[
            Table(["step", "split", "loss", "ppl", "bpb", "bpc", "tokens"], eval_rows)]))
    if sample_rows:
        sections.append(Section(f"Samples at step {last}",
                                tables=[Table(["prompt", "text"], sample_rows)]))
    if events:
        sections.append(events_section)
    return html_page(title, sections)


def write_report(run_dir: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write ``RUN_DIR/report/index.html`` and the PNGs beside it; returns the page's path.
    Figures the log no longer has data for (e.g. after a resume truncated it) are removed."""
    run = Path(run_dir)
    rows = RunLog.read(run)
    out = run / "report"
    figures = _figures(_by_kind(rows))
    for stem, _, png in figures:
        atomic_write_bytes(out / f"{stem}.png", png)
    for stale in set(FIGURES) - {stem for stem, _, _ in figures}:
        with contextlib.suppress(FileNotFoundError):
            (out / f"{stale}.png").unlink()
    page = out / "index.html"
    atomic_write_text(page, report_html(rows, title or f"homellm train: {run.resolve().name}",
                                        figures))
    return page
