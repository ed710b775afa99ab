"""A bench run's files: result JSON, per-request JSONL and CSV, PNG figures, one HTML report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from homellm.bench.compare import per_request_values
from homellm.bench.metrics import percentile_word
from homellm.bench.records import RequestRecord
from homellm.bench.result import save_result, write_records_csv, write_records_jsonl
from homellm.fsutil import atomic_write_bytes, atomic_write_text
from homellm.report.html import Section, Table, html_page
from homellm.report.plots import histogram_png, lines_png

_LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL (per message)"),
              ("itl_per_token", "ITL per token"), ("e2el", "E2EL"), ("send_lag", "send lag"))


def _marks(result: dict[str, Any], family: str) -> dict[str, float]:
    out = {}
    for p in result.get("percentiles") or []:
        key = f"p{percentile_word(float(p))}"
        value = result.get(f"{key}_{family}_ms")
        if value is not None:
            out[key] = value
    return out


def distribution_png(result: dict[str, Any], family: str) -> bytes:
    ms = [x * 1000.0 for x in per_request_values(result, family)]
    name = family.upper()
    return histogram_png(ms, title=f"{name} distribution ({len(ms)} requests)",
                         xlabel=f"{name} (ms)", marks=_marks(result, family))


def throughput_png(result: dict[str, Any]) -> bytes:
    tl = result.get("timeline") or {}
    tokens = tl.get("output_tokens") or []
    done = tl.get("completed_requests") or []
    step = float(tl.get("bucket_s") or 1.0)
    xs = [i * step for i in range(len(tokens))]
    steady = result.get("steady_state") or {}
    span = None
    if steady.get("window_start") is not None and steady.get("window_end") is not None:
        span = (steady["window_start"], steady["window_end"], "steady-state window")
    return lines_png({"output tokens/s": (xs, [t / step for t in tokens]),
                      "completed requests/s ×10": (xs, [10 * d / step for d in done])},
                     title="Throughput over time (1-s buckets)", xlabel="time since start (s)",
                     ylabel="per second", step=True, span=span)


def load_of(result: dict[str, Any]) -> tuple[str, float | None]:
    """The x of a sweep point: the target concurrency, else the target rate, else the
    measured request throughput."""
    if result.get("max_concurrency") is not None:
        return "concurrency", float(result["max_concurrency"])
    rate = result.get("request_rate")
    if isinstance(rate, int | float):
        return "request rate (req/s)", float(rate)
    thr = result.get("request_throughput")
    return "request throughput (req/s)", None if thr is None else float(thr)


def sweep_png(results: Sequence[dict[str, Any]], stat: str = "p99") -> bytes:
    """Latency against load, one point per result, for TTFT, TPOT and E2EL."""
    points = sorted(((x, r) for r in results if (x := load_of(r)[1]) is not None),
                    key=lambda pair: pair[0])
    xlabel = load_of(results[0])[0] if results else "load"
    xs = [x for x, _ in points]
    series = {}
    for family in ("ttft", "tpot", "itl", "e2el"):
        for s in ("median", stat):
            series[f"{s} {family.upper()}"] = (xs, [r.get(f"{s}_{family}_ms") for _, r in points])
    return lines_png(series, title=f"Latency vs load (median and {stat})", xlabel=xlabel,
                     ylabel="ms (log scale)", marker="o", logy=True)


def _summary_tables(result: dict[str, Any]) -> list[Table]:
    scal = [("completed", result.get("completed")), ("failed", result.get("failed")),
            ("duration (s)", result.get("duration")),
            ("request throughput (req/s)", result.get("request_throughput")),
            ("request goodput (req/s)", result.get("request_goodput")),
            ("output throughput (tok/s)", result.get("output_throughput")),
            ("total token throughput (tok/s)", result.get("total_token_throughput"))]
    steady = result.get("steady_state") or {}
    scal += [(f"steady {k.replace('_', ' ')}", steady.get(k)) for k in
             ("duration", "request_throughput", "output_throughput", "total_token_throughput")]
    stats = ["mean", "median", "std", "min", "max",
             *(f"p{percentile_word(float(p))}" for p in result.get("percentiles") or [])]
    lat_rows = [[label, *(result.get(f"{s}_{fam}_ms") for s in stats)] for fam, label in _LATENCIES]
    acct = result.get("token_accounting") or {}
    tok_rows = [[k, v] for k, v in (acct.get("sources") or {}).items()]
    tok_rows += [[k, acct.get(k)] for k in ("usage_vs_chunks_checked", "usage_vs_chunks_disagree",
                                            "mean_tokens_per_chunk")]
    errs = [[k, v] for k, v in (result.get("errors_by_kind") or {}).items()]
    tables = [Table(["figure", "value"], scal), Table(["ms", *stats], lat_rows),
              Table(["token accounting", "value"], tok_rows)]
    if errs:
        tables.append(Table(["error kind", "requests"], errs))
    return tables


def report_html(result: dict[str, Any], figures: dict[str, bytes],
                sweep_figure: bytes | None = None) -> str:
    card = result.get("bench_card") or {}
    title = f"homellm bench: {card.get('model') or result.get('model_id') or 'run'}"
    warn = None if result.get("complete", True) else \
        "Partial result: the run was interrupted; figures cover the requests it had."
    card_rows = [[k, v if not isinstance(v, dict) else ", ".join(f"{a}={b}" for a, b in v.items())]
                 for k, v in card.items()]
    sections = [
        Section("Summary", tables=_summary_tables(result), warning=warn),
        Section("Bench card", tables=[Table(["field", "value"], card_rows)]),
        Section("Figures", images=[(name.replace("_", " "), png) for name, png in figures.items()]),
    ]
    if sweep_figure is not None:
        sections.append(Section("Sweep", images=[("latency vs load", sweep_figure)]))
    return html_page(title, sections)


def write_report(result: dict[str, Any], out_dir: str | Path, *, stem: str = "bench",
                 records: Sequence[RequestRecord] | None = None, started_at: float | None = None,
                 sweep: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``{stem}.json``, ``.jsonl`` and ``.csv`` (when given the records), the PNGs and
    ``{stem}.html`` into ``out_dir``; returns what was written, by kind."""
    out = Path(out_dir)
    written = {"json": save_result(result, out / f"{stem}.json")}
    if records is not None:
        written["jsonl"] = write_records_jsonl(records, out / f"{stem}.jsonl")
        t0 = started_at if started_at is not None else min((r.sent_at for r in records),
                                                            default=0.0)
        written["csv"] = write_records_csv(records, out / f"{stem}.csv", t0)
    figures = {"ttft": distribution_png(result, "ttft"), "tpot": distribution_png(result, "tpot"),
               "throughput": throughput_png(result)}
    sweep_figure = sweep_png(sweep) if sweep else None
    extra = {"sweep": sweep_figure} if sweep_figure is not None else {}
    for name, png in {**figures, **extra}.items():
        path = out / f"{stem}.{name}.png"
        atomic_write_bytes(path, png)
        written[f"png_{name}"] = path
    written["html"] = out / f"{stem}.html"
    atomic_write_text(written["html"], report_html(result, figures, sweep_figure))
    return written
