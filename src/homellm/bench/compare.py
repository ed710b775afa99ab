"""``bench compare A.json B.json``: the two results side by side, with a Mann-Whitney U test on
the per-request latencies stored in each result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homellm.bench.metrics import percentile_word

#: families tested with Mann-Whitney U, and where each result keeps its per-request values
SAMPLES: dict[str, str] = {"ttft": "ttfts", "tpot": "tpots", "itl": "itls", "e2el": "latencies"}

#: (key, label, higher_is_better) for the scalar rows
_SCALARS: tuple[tuple[str, str, bool], ...] = (
    ("completed", "completed requests", True),
    ("failed", "failed requests", False),
    ("request_throughput", "request throughput (req/s)", True),
    ("request_goodput", "request goodput (req/s)", True),
    ("output_throughput", "output throughput (tok/s)", True),
    ("total_token_throughput", "total token throughput (tok/s)", True),
    ("steady_state.request_throughput", "steady request throughput (req/s)", True),
    ("steady_state.output_throughput", "steady output throughput (tok/s)", True),
    ("max_output_tokens_per_s", "peak output messages/s (vLLM's max_output_tokens_per_s)", True),
)


@dataclass(slots=True)
class CompareRow:
    key: str                # the result key, e.g. "p99_ttft_ms"
    label: str
    a: float | None
    b: float | None
    change_pct: float | None  # (b − a)/a × 100
    higher_is_better: bool
    family: str | None = None  # ttft/tpot/itl/e2el for latency rows
    p_value: float | None = None  # Mann-Whitney U (two-sided) on the family's per-request values


@dataclass(slots=True)
class CompareTable:
    a_name: str
    b_name: str
    rows: list[CompareRow] = field(default_factory=list)
    samples: dict[str, tuple[int, int]] = field(default_factory=dict)  # family → (n_a, n_b)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a_name, "b": self.b_name, "notes": self.notes,
                "samples": {k: list(v) for k, v in self.samples.items()},
                "rows": [{"key": r.key, "label": r.label, "a": r.a, "b": r.b,
                          "change_pct": r.change_pct, "p_value": r.p_value,
                          "higher_is_better": r.higher_is_better, "family": r.family}
                         for r in self.rows]}


def _get(result: dict[str, Any], dotted: str) -> float | None:
    value: Any = result
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def change_pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return (b - a) / abs(a) * 100.0


def per_request_values(result: dict[str, Any], family: str) -> list[float]:
    """The stored per-request values of one family (ITL: pooled over requests, as vLLM)."""
    raw = result.get(SAMPLES[family]) or []
    if family == "itl":
        return [float(x) for per in raw if per for x in per if x is not None]
    return [float(x) for x in raw if x is not None]


def mann_whitney_p(x: list[float], y: list[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value; ``None`` with fewer than 2 values on a side."""
    if len(x) < 2 or len(y) < 2:
        return None
    from scipy.stats import mannwhitneyu

    if len(set(x)) == 1 and set(x) == set(y):
        return 1.0  # all values tied: scipy's normal approximation divides by a zero variance
    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)


def compare_results(a: dict[str, Any], b: dict[str, Any], *, a_name: str = "A",
                    b_name: str = "B") -> CompareTable:
    table = CompareTable(a_name, b_name)
    for key, label, hib in _SCALARS:
        va, vb = _get(a, key), _get(b, key)
        if va is None and vb is None:
            continue
        table.rows.append(CompareRow(key, label, va, vb, change_pct(va, vb), hib))
    pa = [float(p) for p in a.get("percentiles") or []]
    common = [p for p in pa if p in {float(q) for q in b.get("percentiles") or []}]
    # p50 is the median: one row for it
    stats = ["mean", "median", *(f"p{percentile_word(p)}" for p in common if p != 50.0)]
    try:
        import scipy.stats  # noqa: F401
        have_scipy = True
    except ImportError:
        have_scipy = False
        table.notes.append("scipy is not installed: no p-values (pip install scipy)")
    for family in SAMPLES:
        xa, xb = per_request_values(a, family), per_request_values(b, family)
        table.samples[family] = (len(xa), len(xb))
        p = mann_whitney_p(xa, xb) if have_scipy else None
        for stat in stats:
            key = f"{stat}_{family}_ms"
            va, vb = _get(a, key), _get(b, key)
            table.rows.append(CompareRow(key, f"{stat} {family.upper()} (ms)", va, vb,
                                         change_pct(va, vb), False, family, p))
    for res, name in ((a, a_name), (b, b_name)):
        if res.get("complete") is False:
            table.notes.append(f"{name} is a partial result (the run was interrupted)")
    if not common:
        table.notes.append("the two results share no percentile: only mean and median compared")
    return table
