"""Layouts of one model over the GPUs: replicas (one per GPU), tensor parallel, pipeline
parallel; what each holds, how fast, what is left when a GPU fails; the vLLM flags for it.
Which one to use, and why: :mod:`homellm.plan.serve_choice`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from homellm.hardware import GPUSpec
from homellm.longcontext import ContextWindow, RopeExtension, extension_for
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure
from homellm.plan.serve_availability import Availability, after_one_failure
from homellm.plan.serve_memory import MemoryPlan, plan_memory, precision
from homellm.plan.serve_rope import yarn_figures, yarn_notes
from homellm.plan.serve_speed import DecodeSpeed, decode_speed, prefill_figures

# flags of ``vllm serve`` 0.33.0 this module emits (engine/arg_utils.py; docs/engines.md)
VLLM_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--max-model-len",
              "--gpu-memory-utilization", "--dtype", "--quantization", "--kv-cache-dtype",
              "--hf-overrides")


@dataclass(frozen=True)
class Layout:
    kind: str                    # "replicas" | "tp" | "pp"
    label: str                   # "2 replicas (one per GPU)", "TP=2", "PP=2"
    tp: int
    pp: int
    replicas: int                # engine processes
    gpus_per_replica: list[list[int]]
    memory: MemoryPlan           # one GPU of one replica
    decode_b1: DecodeSpeed
    decode_at: DecodeSpeed       # the asked concurrency, spread over the replicas
    prefill: dict[str, Figure]
    availability: Availability   # what is left after one GPU fails
    concurrency: int             # requests in flight over the whole layout
    context: int                 # --max-model-len the flags use
    flags: list[str]
    notes: list[str] = field(default_factory=list)
    rope: RopeExtension | None = None       # static YaRN for a context beyond the window
    yarn: dict[str, Figure] = field(default_factory=dict)  # its factor and what it changes

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def total_tokens_per_s(self) -> float:
        """Decode tokens/s of the whole layout at the asked concurrency: every request at the
        pace of the busiest replica (exact when the replicas split the requests evenly)."""
        return self.decode_at.figures["per_request"].value * self.concurrency

    @property
    def kv_tokens_total(self) -> int:
        return self.memory.kv_tokens * self.replicas

    @property
    def requests_at_context(self) -> float:
        """Requests of the asked context the whole layout holds at once."""
        return self.memory.concurrent_at_context * self.replicas

    def figures(self) -> list[Figure]:
        out = list(self.memory.figures.values())
        out += list(self.decode_b1.figures.values()) + list(self.decode_at.figures.values())
        out += list(self.prefill.values()) + self.availability.all_figures()
        return out + list(self.yarn.values())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "tp": self.tp, "pp": self.pp,
                "replicas": self.replicas, "gpus": self.gpus_per_replica, "fits": self.fits,
                "error": self.memory.error, "context": self.context,
                "kv_tokens_per_replica": self.memory.kv_tokens,
                "max_context": self.memory.max_context,
                "concurrent_at_context": self.memory.concurrent_at_context,
                "requests_at_context": self.requests_at_context,
                "survives_gpu_failure": self.availability.survives,
                "replicas_after_failure": self.availability.replicas_left,
                "requests_after_failure": self.availability.requests_held,
                "decode_tok_s_after_failure": self.availability.tokens_per_s,
                "decode_tok_s_batch1": self.decode_b1.tokens_per_s,
                "decode_tok_s_total": self.total_tokens_per_s,
                "ttft_ms": self.prefill["ttft"].value, "flags": self.flags,
                "rope_parameters": self.rope.rope_parameters() if self.rope else None,
                "notes": self.notes,
                "figures": [f.to_json() for f in self.figures()]}


def vllm_flags(*, tp: int, pp: int, context: int, dtype: str,
               gpu_memory_utilization: float, kv_cache_dtype: str = "auto",
               rope: RopeExtension | None = None) -> list[str]:
    """The ``vllm serve`` flags for one replica (only flags in vLLM 0.33.0)."""
    prec = precision(dtype, kv_cache_dtype)
    flags: list[str] = []
    if tp > 1:
        flags += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        flags += ["--pipeline-parallel-size", str(pp)]
    flags += ["--max-model-len", str(context),
              "--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if prec.engine_dtype != "auto":
        flags += ["--dtype", prec.engine_dtype]
    if prec.quantization:
        flags += ["--quantization", prec.quantization]
    if kv_cache_dtype != "auto":
        flags += ["--kv-cache-dtype", kv_cache_dtype]
    if rope is not None:
        # the same JSON the vLLM adapter emits for the stack file (engines/rope.py)
        flags += ["--hf-overrides", json.dumps(rope.config_overrides())]
    return flags


def build_layout(kind: str, model: ModelSpec, gpus: list[GPUSpec], *, context: int | None,
                 concurrency: int, prompt: int, dtype: str, gpu_memory_utilization: float,
                 efficiency: dict[str, float] | None, kv_cache_dtype: str = "auto",
                 window: ContextWindow | None = None) -> Layout:
    n = len(gpus)
    gpu = min(gpus, key=lambda g: g.memory_gib)   # the smallest card bounds every rank
    tp, pp, replicas = {"replicas": (1, 1, n), "tp": (n, 1, 1), "pp": (1, n, 1)}[kind]
    label = {"replicas": f"{n} replica{'s' if n > 1 else ''} (one per GPU)",
             "tp": f"TP={n}", "pp": f"PP={n}"}[kind]
    groups = [[i] for i in range(n)] if kind == "replicas" else [list(range(n))]
    key = f"serve.{kind}"
    mem = plan_memory(model, gpu, tp=tp, pp=pp, context=context, dtype=dtype,
                      gpu_memory_utilization=gpu_memory_utilization, efficiency=efficiency,
                      kv_cache_dtype=kv_cache_dtype)
    # the flags carry a context that fits: the one asked, or the longest that fits
    ctx = mem.context if mem.fits or mem.max_context <= 0 else min(mem.context,
                                                                    mem.max_context)
    # the smallest documented YaRN factor for the flags' context (None within the window)
    rope = extension_for(window, ctx) if window is not None else None
    per_replica = max(1, -(-concurrency // replicas))
    b1 = decode_speed(model, gpu, batch=1, context=min(ctx, prompt), tp=tp, pp=pp,
                      dtype=dtype, efficiency=efficiency, key=f"{key}.decode_b1",
                      kv_cache_dtype=kv_cache_dtype)
    at = decode_speed(model, gpu, batch=per_replica, context=min(ctx, prompt), tp=tp, pp=pp,
                      dtype=dtype, efficiency=efficiency, key=f"{key}.decode_c{per_replica}",
                      kv_cache_dtype=kv_cache_dtype)
    pre = prefill_figures(model, gpu, prompt=min(prompt, ctx), tp=tp, pp=pp, dtype=dtype,
                          efficiency=efficiency, key=f"{key}.prefill",
                          kv_cache_dtype=kv_cache_dtype)
    avail = after_one_failure(model, gpu, replicas=replicas, memory=mem,
                              concurrency=concurrency, decode_context=min(ctx, prompt), tp=tp,
                              pp=pp, dtype=dtype, kv_cache_dtype=kv_cache_dtype,
                              efficiency=efficiency, key=f"{key}.after_failure")
    notes = list(mem.notes)
    if len({(g.key, g.memory_gib) for g in gpus}) > 1:
        notes.append(f"mixed GPUs: every rank is planned as the smallest ({gpu.name})")
    if kind in ("tp", "pp") and not gpu.nvlink_gbs:
        if kind == "tp":
            ar = "vLLM custom all-reduce (P2P)" if n == 2 and gpu.p2p else "NCCL"
            notes.append(f"TP over PCIe without NVLink: {ar} on every layer "
                         "(2 all-reduces per layer) — single-stream gains little")
        else:
            notes.append("PP over PCIe: only hidden states cross between stages; "
                         "throughput alternative to TP without NVLink (vLLM docs)")
    if not mem.fits and mem.max_context > 0 and mem.error.startswith("To serve"):
        notes.append(f"fits with --max-model-len {mem.max_context} (KV cache holds "
                     f"{mem.kv_tokens:,} tokens)")
    yarn: dict[str, Figure] = {}
    if rope is not None and window is not None:
        notes += yarn_notes(rope, window, ctx)
        yarn = yarn_figures(rope, window, ctx, model.head_dim)
    flags = vllm_flags(tp=tp, pp=pp, context=ctx, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization,
                       kv_cache_dtype=kv_cache_dtype, rope=rope)
    return Layout(kind=kind, label=label, tp=tp, pp=pp, replicas=replicas,
                  gpus_per_replica=groups, memory=mem, decode_b1=b1, decode_at=at,
                  prefill=pre, availability=avail, concurrency=concurrency, context=ctx,
                  flags=flags, notes=notes,
                  rope=rope, yarn=yarn)
