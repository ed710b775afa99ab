"""``homellm plan calibrate``: fit the planner's efficiency factors to this machine's own
measurements, store them, and cite them in later plans.

A ``homellm bench`` result (vLLM's field names) says what a closed loop of C streams with given
prompt and output lengths measured. The planner predicts the same run (``closed_loop``); the
factor is found by bisection so that the prediction meets the measurement:

- ``decode_bw_eff``: the fraction of memory bandwidth decode reaches, fitted to median TPOT;
- ``prefill_mfu``: the fraction of dense BF16 peak prefill reaches, fitted to mean TTFT, only
  from runs at concurrency 1 (at higher concurrency TTFT is mostly queueing).

A ``homellm train`` run folder (``metrics.jsonl``, ``run.json``, ``checkpoints/``) gives the
train factor ``mfu`` for engine ``homellm-train``: per steady-state train row (warmup and
compile steps dropped, see :func:`steady_rows`) MFU = tokens/s × training FLOPs per token at
the row's seq_len / (dense BF16 peak of one GPU × GPUs in the run); the run's figure is the
median over those rows. The FLOPs count is the one ``plan train`` and the trainer's own ``mfu``
column use (``ModelSpec.train_flops_per_token``), so the fitted factor plugs straight back in.

The store is ``$HOMELLM_HOME/plan/calibration.json`` (written atomically), keyed by GPU and
engine: each factor keeps its median over the results (or runs), their spread, how many, which
files and when.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homellm.errors import ConfigError, HomellmError
from homellm.fsutil import atomic_write_text, homellm_home
from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure, fig

SERVE_FACTORS = ("decode_bw_eff", "prefill_mfu")
TRAIN_FACTORS = ("mfu",)
TRAIN_ENGINE = "homellm-train"
MIN_STEADY_ROWS = 5
WARMUP_FRACTION = 0.1  # of the train rows, dropped from the start (compile, allocator, caches)
WARMUP_STEPS = 3       # dropped whatever the run's length


def store_path() -> Path:
    return homellm_home() / "plan" / "calibration.json"


@dataclass
class Fitted:
    factor: str
    value: float
    measured: float       # the figure it was fitted to (ms; tok/s for a training run)
    predicted_default: float  # the planner's prediction with the default factor (same unit)
    source: str           # the result file or run folder
    unit: str = "ms"
    figure: Figure | None = None  # how the value was computed, when it is a formula


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


# -- training runs -------------------------------------------------------------------------------

def is_training_run(path: Path) -> bool:
    from homellm.train.runlog import FILENAME

    return path.is_dir() and (path / FILENAME).is_file()


def steady_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The train rows past warmup: sorted by step, the first 10 % of them (at least 3) dropped,
    and any row at step 3 or earlier, since the first steps pay for compilation and caches."""
    train = sorted((r for r in rows if r.get("kind") == "train"), key=lambda r: r["step"])
    skip = max(WARMUP_STEPS, math.ceil(len(train) * WARMUP_FRACTION))
    return [r for r in train[skip:] if r["step"] > WARMUP_STEPS]


def _number(row: dict[str, Any], name: str, source: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(f"{source}: train row at step {row.get('step')} has no positive "
                          f"{name} ({value!r})")
    return float(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def run_model_config(run_dir: Path) -> dict[str, Any]:
    """The HF config dict saved with the run's newest checkpoint that has one."""
    steps = []
    for folder in (run_dir / "checkpoints").glob("step-*"):
        number = folder.name.removeprefix("step-")
        if number.isdigit() and folder.is_dir():
            steps.append((int(number), folder))
    for _, folder in sorted(steps, reverse=True):
        state = _read_json(folder / "trainer_state.json")
        config = state.get("config") if isinstance(state, dict) else None
        model_config = config.get("model_config") if isinstance(config, dict) else None
        if isinstance(model_config, dict):
            return model_config
    raise ConfigError(f"{run_dir}: no checkpoint with a model config "
                      "(checkpoints/step-N/trainer_state.json); the MFU needs the model's shape: "
                      "let the run save a checkpoint")


def run_world_size(run: dict[str, Any], gpus_here: int) -> int:
    """GPUs the run trained on: its ``gpus`` list; [] is CPU (one process); None meant every
    visible GPU, i.e. the ones this calibration is for."""
    gpus = run.get("gpus")
    if gpus is None:
        return max(gpus_here, 1)
    return max(len(gpus), 1)


def _train_rows(rows: Sequence[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    train = [r for r in rows if r.get("kind") == "train"]
    if not train:
        raise ConfigError(f"{source}: no train rows in metrics.jsonl (did the run take a step?)")
    return train


def run_mfu(rows: Sequence[dict[str, Any]], model: ModelSpec, gpu: GPUSpec, world: int,
            source: str) -> tuple[float, list[dict[str, Any]], Figure]:
    """The median MFU of the steady rows, those rows, and the figure saying how."""
    train = _train_rows(rows, source)
    steady = steady_rows(train)
    if len(steady) < MIN_STEADY_ROWS:
        raise ConfigError(f"{source}: {len(steady)} steady-state train row(s) after dropping "
                          f"the warmup ({len(train) - len(steady)} of {len(train)}); need at "
                          f"least {MIN_STEADY_ROWS}: train longer")
    if not gpu.bf16_tflops or gpu.bf16_tflops <= 0:
        raise ConfigError(f"{gpu.key}: no dense BF16 peak to measure MFU against (--gpu-spec "
                          "bf16=…)")
    peak = gpu.bf16_tflops
    tps = [_number(r, "tokens_per_s", source) for r in steady]
    flops = [model.train_flops_per_token(int(_number(r, "seq_len", source))) for r in steady]
    mfus = [t * f / (peak * 1e12 * world) for t, f in zip(tps, flops, strict=True)]
    value = statistics.median(mfus)
    label = f"measured MFU, median over {len(steady)} steady steps of {Path(source).name}"
    src = "training FLOPs per token F = 6·N + 12·L·H·Q·T (PaLM App. B), as plan train counts them"
    if len(set(flops)) == 1:
        # one F for every row: the median MFU is the median tokens/s scaled, so the figure
        # can show the exact arithmetic
        figure = fig("calibrate.train_mfu", label, "", "tps * F / (n * peak * 1e12)",
                     source=src, tps=statistics.median(tps), F=flops[0], n=world, peak=peak)
    else:
        figure = fig("calibrate.train_mfu", label, "", value=value, source=src,
                     note="seq_len changes over the run (curriculum): the median of "
                          "tps_i * F(seq_len_i) / (n * peak * 1e12) over the rows, "
                          f"n={world}, peak={peak:g} TFLOPS")
    return value, steady, figure


def fit_training_run(run_dir: Path, gpu: GPUSpec, gpus_here: int = 1
                     ) -> tuple[Fitted, ModelSpec]:
    """Fit the train factor ``mfu`` to one ``homellm train`` run folder."""
    from homellm.plan.train import DEFAULT_MFU
    from homellm.train.presets import config_spec
    from homellm.train.runlog import RunLog

    source = str(run_dir)
    try:
        rows = RunLog.read(run_dir)
    except HomellmError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _train_rows(rows, source)
    run = _read_json(run_dir / "run.json")
    if not isinstance(run, dict):
        raise ConfigError(f"{source}: no readable run.json (the run's config, written by "
                          "homellm train)")
    name = str(run.get("model") or "")
    try:
        model = config_spec(run_model_config(run_dir), name=f"homellm-{name}" if name else "")
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: the checkpoint's model config is not one homellm can "
                          f"count ({type(exc).__name__}: {exc})") from None
    world = run_world_size(run, gpus_here)
    value, steady, figure = run_mfu(rows, model, gpu, world, source)
    if not 0 < value <= 1:
        raise ConfigError(f"{source}: measured MFU {value:.3g} is outside (0, 1]: is --gpus the "
                          f"GPU the run trained on ({gpu.key})?")
    measured = statistics.median(float(r["tokens_per_s"]) for r in steady)
    predicted = statistics.median(world * gpu.bf16_tflops * 1e12 * DEFAULT_MFU
                                  / model.train_flops_per_token(int(r["seq_len"]))
                                  for r in steady)
    return Fitted("mfu", value, measured, predicted, source, unit="tok/s", figure=figure), model
