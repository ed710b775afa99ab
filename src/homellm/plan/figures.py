"""A figure that can say how it was computed: every number ``plan`` prints is one of these.

``--explain`` prints each figure with its formula, the inputs plugged into it and the source of
any constant; ``--json`` gives the same as data. Build figures with :func:`fig`, passing the
inputs by name, so the formula text and the arithmetic cannot drift apart unnoticed: a test
re-evaluates every formula from its inputs (see :meth:`Figure.check`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Number = int | float


@dataclass(frozen=True)
class Figure:
    key: str                      # stable id for scripts: "serve.kv_bytes_per_token"
    label: str                    # for people: "KV cache per token"
    value: Number
    unit: str                     # "B", "GiB", "tok/s", "ms", "h", "USD", "" ...
    formula: str = ""             # a Python expression over the input names: "2 * L * kv * d * b"
    inputs: dict[str, Number] = field(default_factory=dict)
    source: str = ""              # where a constant or a fact came from ("vLLM gpu_worker.py")
    note: str = ""                # a caveat people should read

    def check(self, rel: float = 1e-9) -> bool:
        """Re-evaluate ``formula`` from ``inputs`` and compare with ``value``."""
        if not self.formula:
            return True
        got = eval(self.formula, {"__builtins__": {}, "math": math, "min": min, "max": max,
                                  "ceil": math.ceil, "floor": math.floor}, dict(self.inputs))
        return math.isclose(float(got), float(self.value), rel_tol=rel, abs_tol=1e-12)

    def explain(self) -> str:
        text = f"{self.label} = {_fmt(self.value)} {self.unit}".rstrip()
        if self.formula:
            plugged = ", ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
            text += f"\n    = {self.formula}   [{plugged}]"
        if self.source:
            text += f"\n    source: {self.source}"
        if self.note:
            text += f"\n    note: {self.note}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "value": self.value, "unit": self.unit,
                "formula": self.formula, "inputs": self.inputs, "source": self.source,
                "note": self.note}


def fig(key: str, label: str, unit: str, formula: str = "", source: str = "", note: str = "",
        value: Number | None = None, **inputs: Number) -> Figure:
    """A figure whose value is ``formula`` evaluated over ``inputs`` (or ``value`` when the
    figure is a fact, not a computation)."""
    if value is None:
        if not formula:
            raise ValueError(f"{key}: give a formula or a value")
        value = eval(formula, {"__builtins__": {}, "math": math, "min": min, "max": max,
                               "ceil": math.ceil, "floor": math.floor}, dict(inputs))
    return Figure(key, label, value, unit, formula, dict(inputs), source, note)


def _fmt(value: Number) -> str:
    if isinstance(value, bool):
        return str(value)
    if abs(value) >= 1e13:
        return f"{value:.3e}"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"
