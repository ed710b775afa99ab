"""Terminal views (rich) of a result and of a comparison; the CLI calls these."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from homellm.bench.compare import CompareTable
from homellm.bench.metrics import percentile_word

_FAMILIES = (("ttft", "TTFT"), ("tpot", "TPOT (excl. 1st token)"), ("itl", "ITL per message"),
             ("itl_per_token", "ITL per token"), ("e2el", "E2EL"), ("send_lag", "send lag"))


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:,.{digits}f}"


def render_summary(result: dict[str, Any], console: Console) -> None:
    card = result.get("bench_card") or {}
    head = Table(title=f"bench: {card.get('model') or result.get('model_id') or ''}",
                 show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    if result.get("complete") is False:
        head.add_row("[yellow]partial[/]", "[yellow]interrupted run: figures cover what it had[/]")
    rows = [("successful requests", result.get("completed")),
            ("failed requests", result.get("failed")),
            ("duration (s)", result.get("duration")),
            ("request throughput (req/s)", result.get("request_throughput")),
            ("output token throughput (tok/s)", result.get("output_throughput")),
            ("total token throughput (tok/s)", result.get("total_token_throughput")),
            ("peak output messages/s", result.get("max_output_tokens_per_s")),
            ("peak concurrent requests", result.get("max_concurrent_requests"))]
    if result.get("request_goodput") is not None:
        slos = ", ".join(f"{k}≤{v:g}ms" for k, v in (result.get("slos_ms") or {}).items())
        rows.append((f"request goodput (req/s) [{slos}]", result.get("request_goodput")))
    steady = result.get("steady_state") or {}
    if steady.get("duration") is not None:
        rows += [("steady window (s)", steady.get("duration")),
                 ("steady request throughput (req/s)", steady.get("request_throughput")),
                 ("steady output throughput (tok/s)", steady.get("output_throughput"))]
    else:
        rows.append(("steady window", "none (target load never held)"))
    for label, value in rows:
        head.add_row(label, value if isinstance(value, str) else _num(value))
    for kind, n in (result.get("errors_by_kind") or {}).items():
        head.add_row(f"  failed: {kind}", str(n))
    console.print(head)

    stats = ["mean", "median", "std", "min", "max",
             *(f"p{percentile_word(float(p))}" for p in result.get("percentiles") or [])]
    lat = Table(title="latency (ms)", title_justify="left")
    lat.add_column("metric")
    for s in stats:
        lat.add_column(s, justify="right")
    for fam, label in _FAMILIES:
        lat.add_row(label, *(_num(result.get(f"{s}_{fam}_ms")) for s in stats))
    console.print(lat)

    acct = result.get("token_accounting") or {}
    src = ", ".join(f"{k} {v}" for k, v in (acct.get("sources") or {}).items())
    console.print(f"output tokens from: {src}; usage ≠ chunk count in "
                  f"{acct.get('usage_vs_chunks_disagree', 0)} of "
                  f"{acct.get('usage_vs_chunks_checked', 0)} requests; "
                  f"mean tokens per message {_num(acct.get('mean_tokens_per_chunk'))}")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}%"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"
    return f"[bold]{text}[/]" if value < 0.05 else text


def render_compare(table: CompareTable, console: Console) -> None:
    out = Table(title=f"{table.a_name} → {table.b_name}", title_justify="left")
    for name, justify in (("metric", "left"), (table.a_name, "right"), (table.b_name, "right"),
                          ("change", "right"), ("p (Mann-Whitney)", "right")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    shown: set[str] = set()
    for row in table.rows:
        change = _pct(row.change_pct)
        if row.change_pct is not None and row.change_pct != 0:
            good = (row.change_pct > 0) == row.higher_is_better
            change = f"[{'green' if good else 'red'}]{change}[/]"
        p = ""
        if row.family is not None and row.family not in shown:
            shown.add(row.family)
            n_a, n_b = table.samples.get(row.family, (0, 0))
            p = f"{_p(row.p_value)} (n={n_a}/{n_b})"
        out.add_row(row.label, _num(row.a), _num(row.b), change, p)
    console.print(out)
    for note in table.notes:
        console.print(f"[yellow]note:[/] {note}")
