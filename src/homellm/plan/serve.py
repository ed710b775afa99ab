"""``homellm plan serve``: what fits, which layout, how fast — each number with its working.

Entry: :func:`plan_serve`. Efficiency keys (``efficiency=``; defaults in
:func:`homellm.plan.serve_speed.efficiency_defaults`): ``decode_bw_eff``, ``moe_b1_eff``,
``prefill_mfu``, ``allreduce_us``, ``custom_allreduce_us``, ``pcie_gbs``, ``pp_hop_us`` (speed)
and ``non_torch_gib``, ``non_torch_tp_extra_gib``, ``cudagraph_gib``,
``sampler_bytes_per_logit`` (memory). Unknown keys are refused so a typo cannot pass silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from homellm.errors import ConfigError, HomellmError
from homellm.hardware import GPUSpec
from homellm.longcontext import ContextWindow, extension_for, window_for_source
from homellm.models_catalog import catalog_entry
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure
from homellm.plan.serve_choice import check_prefer, recommend
from homellm.plan.serve_layouts import Layout, build_layout
from homellm.plan.serve_memory import precision
from homellm.plan.serve_speed import efficiency_defaults

DEFAULT_PROMPT = 2048  # prompt length for TTFT/prefill and decode context when none is asked


class NothingFitsError(HomellmError):
    """No layout of the model fits the GPUs (exit 1: the plan ran, the answer is no)."""


@dataclass(frozen=True)
class ServePlan:
    model: ModelSpec
    gpus: list[GPUSpec]
    engine: str
    dtype: str
    context: int | None            # as asked (None: the model's max_position_embeddings)
    concurrency: int
    gpu_memory_utilization: float
    layouts: dict[str, Layout]     # "replicas", "tp", "pp" (only "replicas" for one GPU)
    recommended: str | None        # a key of `layouts`, or None when nothing fits
    reason: str
    efficiency: dict[str, float]   # the factors used (defaults merged with overrides)
    notes: list[str] = field(default_factory=list)
    kv_cache_dtype: str = "auto"   # "auto" (the model dtype) or "fp8"
    prefer: str = "balanced"       # what the recommendation weighs first (serve_choice.py)

    @property
    def fits(self) -> bool:
        return self.recommended is not None

    @property
    def chosen(self) -> Layout | None:
        return self.layouts[self.recommended] if self.recommended else None

    def figures(self) -> list[Figure]:
        """Every figure of every layout, for ``--explain``."""
        return [f for layout in self.layouts.values() for f in layout.figures()]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.name, "gpus": [g.key for g in self.gpus],
                "engine": self.engine, "dtype": self.dtype, "context": self.context,
                "kv_cache_dtype": self.kv_cache_dtype,
                "quantization": precision(self.dtype, self.kv_cache_dtype).quantization,
                "concurrency": self.concurrency,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "prefer": self.prefer,
                "recommended": self.recommended, "reason": self.reason,
                "efficiency": self.efficiency, "notes": self.notes,
                "layouts": {k: v.to_json() for k, v in self.layouts.items()}}


def plan_serve(model: ModelSpec, gpus: list[GPUSpec], *, context: int | None,
               concurrency: int, dtype: str, engine: str = "vllm",
               gpu_memory_utilization: float = 0.9, efficiency: dict | None = None,
               prompt: int = DEFAULT_PROMPT,
               window: ContextWindow | None = None, kv_cache_dtype: str = "auto",
               prefer: str = "balanced") -> ServePlan:
    """Plan ``model`` on ``gpus`` for ``concurrency`` requests of up to ``context`` tokens.
    ``window``: the model's context window and documented rope scaling (default: the catalog
    entry's for a catalog model, else its config's window with none); a context beyond it is
    planned with the smallest documented YaRN factor, or refused (LongContextError)."""
    if not gpus:
        raise ConfigError("--gpus: name at least one GPU (for example 2xrtx-pro-6000)")
    if engine != "vllm":
        raise ConfigError(f"--engine: plan serve models vLLM's memory and flags only, "
                          f"got {engine!r}")
    if concurrency < 1:
        raise ConfigError(f"--concurrency: expected 1 or more, got {concurrency}")
    if context is not None and context < 1:
        raise ConfigError(f"--context: expected 1 or more, got {context}")
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError("--gpu-memory-utilization: expected a fraction in (0, 1], got "
                          f"{gpu_memory_utilization}")
    prec = precision(dtype, kv_cache_dtype)
    check_prefer(prefer)
    known = efficiency_defaults()
    unknown = sorted(set(efficiency or {}) - set(known))
    if unknown:
        raise ConfigError(f"efficiency: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    eff = {**known, **(efficiency or {})}
    notes: list[str] = []
    for g in gpus:
        if not getattr(g, "speeds_known", True) or not g.bandwidth_gbs or not g.bf16_tflops:
            raise ConfigError(f"--gpus: no bandwidth/TFLOPS known for {g.name}; give them "
                              "with --gpu-spec")
    kinds = ["replicas"] if len(gpus) == 1 else ["replicas", "tp", "pp"]
    window = window or model_window(model)
    rope = extension_for(window, context, field="--context") if context else None
    if rope is not None:
        # the engine's limit is then the scaled window (max_position_embeddings overridden)
        model = replace(model, max_position_embeddings=rope.max_context)
    layouts = {k: build_layout(k, model, gpus, context=context, concurrency=concurrency,
                               prompt=prompt, dtype=dtype,
                               gpu_memory_utilization=gpu_memory_utilization,
                               efficiency=eff, window=window, kv_cache_dtype=kv_cache_dtype)
              for k in kinds}
    nvlink = all(g.nvlink_gbs for g in gpus)
    chosen, reason = recommend(layouts, model, concurrency, nvlink, prefer)
    if prec.quantization:
        notes.append(f"--dtype fp8: vLLM quantizes the bf16 weights to FP8 while loading them "
                     f"(--quantization {prec.quantization}, per-tensor scales; activations "
                     "stay bfloat16); answers differ slightly from bf16, so measure quality "
                     "before relying on it")
        for g in {g.key: g for g in gpus}.values():
            if not g.fp8_tflops:
                notes.append(f"{g.name}: no FP8 tensor cores known: vLLM runs FP8 weights "
                             "through Marlin (W8A16, compute capability 7.5-8.8): weights "
                             "take 1 byte, the math runs at the BF16 peak")
    if len(gpus) > 2:
        notes.append("more than 2 PCIe GPUs: vLLM disables its custom all-reduce, TP uses "
                     "NCCL (custom_all_reduce.py)")
    return ServePlan(model=model, gpus=list(gpus), engine=engine, dtype=dtype,
                     context=context, concurrency=concurrency,
                     gpu_memory_utilization=gpu_memory_utilization, layouts=layouts,
                     recommended=chosen, reason=reason, efficiency=eff, notes=notes,
                     kv_cache_dtype=kv_cache_dtype, prefer=prefer)


def model_window(model: ModelSpec) -> ContextWindow:
    """The window of a catalog model (its documented rope scaling included), else of the
    spec's own config with no rope scaling known."""
    entry = catalog_entry(model.name)
    if entry is not None and entry.config.get("max_position_embeddings") == (
            model.max_position_embeddings):
        found = window_for_source(entry.repo)
        if found is not None:
            return found
    return ContextWindow(native=model.max_position_embeddings, recipe=None,
                         scaled_in_config=False, name=model.name)
