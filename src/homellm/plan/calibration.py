"""``homellm plan calibrate``: fit the planner's efficiency factors to this machine's own
measurements, store them, and cite them in later plans.

A ``homellm bench`` result (vLLM's field names) says what a closed loop of C streams with given
prompt and output lengths measured. The planner predicts the same run (``closed_loop``); the
factor is found by bisection so that the prediction meets the measurement:

- ``decode_bw_eff``: the fraction of memory bandwidth decode reaches, fitted to median TPOT;
- ``prefill_mfu``: the fraction of dense BF16 peak prefill reaches, fitted to mean TTFT, only
  from runs at concurrency 1 (at higher concurrency TTFT is mostly queueing).

The store is ``$HOMELLM_HOME/plan/calibration.json`` (written atomically), keyed by GPU and
engine: each factor keeps its median over the results, their spread, how many, which files and
when. Training MFU joins when ``homellm train`` writes its metrics (issue 8).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homellm.errors import ConfigError
from homellm.fsutil import atomic_write_text, homellm_home
from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec

SERVE_FACTORS = ("decode_bw_eff", "prefill_mfu")
TRAIN_FACTORS = ("mfu",)


def store_path() -> Path:
    return homellm_home() / "plan" / "calibration.json"


@dataclass
class Fitted:
    factor: str
    value: float
    measured: float       # the figure it was fitted to (ms)
    predicted_default: float  # the planner's prediction with the default factor (ms)
    source: str           # the result file


@dataclass
class Calibration:
    entries: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @staticmethod
    def key(gpu_key: str, engine: str) -> str:
        return f"{gpu_key}|{engine}"

    def factors_for(self, gpu_key: str, engine: str, kind: str
                    ) -> tuple[dict[str, float], list[str]]:
        """The stored factors of ``kind`` (serve or train) for this GPU and engine, and one line
        per factor saying where it came from."""
        names = SERVE_FACTORS if kind == "serve" else TRAIN_FACTORS
        stored = self.entries.get(self.key(gpu_key, engine), {})
        factors, cited = {}, []
        for name in names:
            entry = stored.get(name)
            if entry is None:
                continue
            factors[name] = float(entry["value"])
            cited.append(f"{name} = {entry['value']:.3g} calibrated on {gpu_key} ({engine}) from "
                         f"{entry['n']} measurement(s), {entry['fitted_at']} (range "
                         f"{entry['min']:.3g}–{entry['max']:.3g})")
        return factors, cited

    def record(self, gpu_key: str, engine: str, model: str, fits: Sequence[Fitted]) -> None:
        entry = self.entries.setdefault(self.key(gpu_key, engine), {})
        for name in {f.factor for f in fits}:
            values = [f.value for f in fits if f.factor == name]
            entry[name] = {"value": statistics.median(values), "n": len(values),
                           "min": min(values), "max": max(values), "model": model,
                           "sources": [f.source for f in fits if f.factor == name],
                           "fitted_at": time.strftime("%Y-%m-%d")}

    def save(self, path: Path | None = None) -> Path:
        path = path or store_path()
        atomic_write_text(path, json.dumps({"version": 1, "entries": self.entries}, indent=1)
                          + "\n")
        return path


def load_calibration(path: Path | None = None) -> Calibration:
    path = path or store_path()
    try:
        data = json.loads(path.read_text("utf-8"))
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise TypeError("entries is not a mapping")
    except FileNotFoundError:
        return Calibration()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a homellm calibration file ({exc}); delete it or run "
                          "`homellm plan calibrate` again") from None
    return Calibration(entries)


def bisect(predict: Callable[[float], float], target: float, lo: float = 0.02,
           hi: float = 2.0) -> float:
    """The factor at which ``predict`` (decreasing in the factor, as times are) meets ``target``;
    clamped to [lo, hi] when the measurement is out of what the model can reach."""
    if predict(hi) >= target:
        return hi
    if predict(lo) <= target:
        return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        if predict(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _mean(values: Any) -> float:
    if not values:
        raise ValueError("empty")
    return float(statistics.fmean(values))


def fit_bench_result(result: dict[str, Any], source: str, model: ModelSpec, gpu: GPUSpec, *,
                     tp: int = 1, dtype: str = "bfloat16") -> list[Fitted]:
    """Fit the serve factors to one ``homellm bench`` (or ``vllm bench serve``) result."""
    from homellm.plan.serve_memory import vllm_batch_defaults
    from homellm.plan.serve_speed import closed_loop, efficiency_defaults

    try:
        prompt = round(_mean(result["input_lens"]))
        output = round(_mean(result["output_lens"]))
        concurrency = int(result.get("max_concurrency") or 1)
        tpot_ms = float(result["median_tpot_ms"])
        ttft_ms = float(result["mean_ttft_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: not a bench result with per-request lengths and TPOT/TTFT "
                          f"({type(exc).__name__}: {exc})") from None
    if output < 2:
        raise ConfigError(f"{source}: outputs of {output} token(s) give no TPOT to fit")
    chunk = vllm_batch_defaults(gpu)[0]
    defaults = efficiency_defaults()

    def predict(name: str, figure: str) -> Callable[[float], float]:
        def run(value: float) -> float:
            figures = closed_loop(model, gpu, prompt=prompt, output=output,
                                  concurrency=concurrency, chunk=chunk, tp=tp, dtype=dtype,
                                  efficiency={name: value})
            return float(figures[figure].value)
        return run

    tpot = predict("decode_bw_eff", "decode.tpot")
    fits = [Fitted("decode_bw_eff", bisect(tpot, tpot_ms), tpot_ms,
                   tpot(defaults["decode_bw_eff"]), source)]
    if concurrency == 1:
        ttft = predict("prefill_mfu", "ttft")
        fits.append(Fitted("prefill_mfu", bisect(ttft, ttft_ms), ttft_ms,
                           ttft(defaults["prefill_mfu"]), source))
    return fits
