"""Predictions against published measurements (issue 6 §5): memory within 10 %, speed within
30 %, one set of defaults for every row (no per-row factors)."""

from __future__ import annotations

import pytest

from tests.plan.reference_measurements import (
    MEMORY_ROWS,
    MEMORY_TOLERANCE,
    SPEED_ROWS,
    SPEED_TOLERANCE,
    predict_memory,
    predict_speed,
)


def _close(predicted: float, published: float, tol: float) -> bool:
    return abs(predicted - published) <= tol * published


@pytest.mark.parametrize("row", MEMORY_ROWS, ids=[r["id"] for r in MEMORY_ROWS])
def test_memory_rows(row: dict) -> None:
    figures = predict_memory(row)
    skipped = set(row.get("unpredicted", ()))
    for name, published in row["published"].items():
        if name in skipped:
            continue
        got = float(figures[name].value)
        assert _close(got, published, MEMORY_TOLERANCE), (row["id"], name, got, published)
    if "kv_cache" in skipped:
        # the budget arithmetic itself, with the activation the log reports
        f = figures
        kv = (f["budget"].value - f["weights"].value - row["published"]["activation"]
              - f["non_torch"].value - f["cudagraph"].value)
        assert _close(kv, row["published"]["kv_cache"], MEMORY_TOLERANCE)


@pytest.mark.parametrize("row", SPEED_ROWS, ids=[r["id"] for r in SPEED_ROWS])
def test_speed_rows(row: dict) -> None:
    predicted = predict_speed(row)
    for name, published in row["published"].items():
        got = float(predicted[name])
        assert _close(got, published, SPEED_TOLERANCE), (row["id"], name, got, published)
