"""``bench compare``: the side-by-side rows and the Mann-Whitney p-values."""

from __future__ import annotations

import random

import pytest

from homellm.bench.compare import change_pct, compare_results, mann_whitney_p
from homellm.bench.records import RequestRecord
from homellm.bench.result import RunInfo, build_result

pytest.importorskip("scipy")


def run(ttft_shift: float, seed: int, n: int = 60) -> dict:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        sent = i * 0.05
        first = sent + 0.100 + ttft_shift + rng.uniform(0.0, 0.020)
        chunks = [first]
        for _ in range(7):
            chunks.append(chunks[-1] + rng.uniform(0.009, 0.011))
        records.append(RequestRecord(i, sent, sent, first, chunks, output_tokens=8,
                                     token_source="usage"))
    return build_result(records, RunInfo(0.0, n * 0.05 + 1.0, max_concurrency=4))


def row(table, key: str):  # type: ignore[no-untyped-def]
    return next(r for r in table.rows if r.key == key)


def test_identical_results() -> None:
    a = run(0.0, seed=1)
    table = compare_results(a, a)
    ttft = row(table, "median_ttft_ms")
    assert ttft.a == ttft.b and ttft.change_pct == 0.0
    assert ttft.p_value == pytest.approx(1.0)
    assert row(table, "mean_e2el_ms").p_value == pytest.approx(1.0)
    assert table.samples["ttft"] == (60, 60) and table.samples["itl"] == (420, 420)


def test_shifted_ttft_is_significant_and_tpot_is_not_compared_wrongly() -> None:
    table = compare_results(run(0.0, seed=1), run(0.050, seed=2), a_name="old", b_name="new")
    ttft = row(table, "median_ttft_ms")
    assert ttft.p_value is not None and ttft.p_value < 1e-6  # 50 ms shift, 20 ms spread
    assert ttft.change_pct is not None and ttft.change_pct > 30
    # TPOT distributions are drawn the same way in both runs: no evidence of a difference
    assert row(table, "median_tpot_ms").p_value > 0.001
    assert {r.key for r in table.rows} >= {"request_throughput", "p99_ttft_ms", "p90_itl_ms"}
    assert "p50_ttft_ms" not in {r.key for r in table.rows}  # the median row says it


def test_mann_whitney_small_and_tied_samples() -> None:
    assert mann_whitney_p([1.0], [2.0, 3.0]) is None
    assert mann_whitney_p([5.0, 5.0, 5.0], [5.0, 5.0]) == 1.0
    # fully separated samples of 5 and 5: exact two-sided p = 2 / C(10, 5) = 2/252 = 0.00794
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)


def test_change_pct() -> None:
    assert change_pct(200.0, 150.0) == pytest.approx(-25.0)  # (150 − 200)/200
    assert change_pct(0.0, 1.0) is None and change_pct(None, 1.0) is None


def test_partial_and_empty_results_compare() -> None:
    empty = build_result([], RunInfo(0.0, 0.0, complete=False))
    table = compare_results(empty, run(0.0, seed=1))
    assert row(table, "median_ttft_ms").p_value is None
    assert row(table, "median_ttft_ms").a is None
    assert any("partial" in note for note in table.notes)
    assert table.to_json()["rows"]
