"""Layouts of one model over the GPUs: replicas (one per GPU), tensor parallel, pipeline
parallel; the one to use and why; the vLLM flags for it.

Rule (plan-facts §7): fits on one card with room for the requests → replicas (two primaries,
or primary + backup); does not fit, or KV-starved → TP over all cards; PP is the throughput
alternative when the cards have no NVLink (vLLM docs: PP when "GPUs lack NVLink"); no expert
parallel over PCIe (4× PRO 6000 measured 1.4-2.6 tok/s with EP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure
from homellm.plan.serve_memory import MemoryPlan, plan_memory
from homellm.plan.serve_speed import DecodeSpeed, decode_speed, prefill_figures

# flags of ``vllm serve`` 0.33.0 this module emits (engine/arg_utils.py; docs/engines.md)
VLLM_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--max-model-len",
              "--gpu-memory-utilization", "--dtype")


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
    context: int                 # --max-model-len the flags use
    flags: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def total_tokens_per_s(self) -> float:
        """Decode tokens/s of the whole layout at the asked concurrency."""
        return self.decode_at.tokens_per_s * self.replicas

    @property
    def kv_tokens_total(self) -> int:
        return self.memory.kv_tokens * self.replicas

    def figures(self) -> list[Figure]:
        out = list(self.memory.figures.values())
        out += list(self.decode_b1.figures.values()) + list(self.decode_at.figures.values())
        return out + list(self.prefill.values())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "tp": self.tp, "pp": self.pp,
                "replicas": self.replicas, "gpus": self.gpus_per_replica, "fits": self.fits,
                "error": self.memory.error, "context": self.context,
                "kv_tokens_per_replica": self.memory.kv_tokens,
                "max_context": self.memory.max_context,
                "concurrent_at_context": self.memory.concurrent_at_context,
                "decode_tok_s_batch1": self.decode_b1.tokens_per_s,
                "decode_tok_s_total": self.total_tokens_per_s,
                "ttft_ms": self.prefill["ttft"].value, "flags": self.flags,
                "notes": self.notes,
                "figures": [f.to_json() for f in self.figures()]}


def vllm_flags(*, tp: int, pp: int, context: int, dtype: str,
               gpu_memory_utilization: float) -> list[str]:
    """The ``vllm serve`` flags for one replica (only flags in vLLM 0.33.0)."""
    flags: list[str] = []
    if tp > 1:
        flags += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        flags += ["--pipeline-parallel-size", str(pp)]
    flags += ["--max-model-len", str(context),
              "--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if dtype != "auto":
        flags += ["--dtype", dtype]
    return flags


def build_layout(kind: str, model: ModelSpec, gpus: list[GPUSpec], *, context: int | None,
                 concurrency: int, prompt: int, dtype: str, gpu_memory_utilization: float,
                 efficiency: dict[str, float] | None) -> Layout:
    n = len(gpus)
    gpu = min(gpus, key=lambda g: g.memory_gib)   # the smallest card bounds every rank
    tp, pp, replicas = {"replicas": (1, 1, n), "tp": (n, 1, 1), "pp": (1, n, 1)}[kind]
    label = {"replicas": f"{n} replica{'s' if n > 1 else ''} (one per GPU)",
             "tp": f"TP={n}", "pp": f"PP={n}"}[kind]
    groups = [[i] for i in range(n)] if kind == "replicas" else [list(range(n))]
    key = f"serve.{kind}"
    mem = plan_memory(model, gpu, tp=tp, pp=pp, context=context, dtype=dtype,
                      gpu_memory_utilization=gpu_memory_utilization, efficiency=efficiency)
    # the flags carry a context that fits: the one asked, or the longest that fits
    ctx = mem.context if mem.fits or mem.max_context <= 0 else min(mem.context,
                                                                    mem.max_context)
    per_replica = max(1, -(-concurrency // replicas))
    b1 = decode_speed(model, gpu, batch=1, context=min(ctx, prompt), tp=tp, pp=pp,
                      dtype=dtype, efficiency=efficiency, key=f"{key}.decode_b1")
    at = decode_speed(model, gpu, batch=per_replica, context=min(ctx, prompt), tp=tp, pp=pp,
                      dtype=dtype, efficiency=efficiency, key=f"{key}.decode_c{per_replica}")
    pre = prefill_figures(model, gpu, prompt=min(prompt, ctx), tp=tp, pp=pp, dtype=dtype,
                          efficiency=efficiency, key=f"{key}.prefill")
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
    flags = vllm_flags(tp=tp, pp=pp, context=ctx, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization)
    return Layout(kind=kind, label=label, tp=tp, pp=pp, replicas=replicas,
                  gpus_per_replica=groups, memory=mem, decode_b1=b1, decode_at=at,
                  prefill=pre, context=ctx, flags=flags, notes=notes)


def kv_starved(layout: Layout, concurrency: int) -> bool:
    """The replicas cannot hold their share of the requests at the asked context."""
    per_replica = max(1, -(-concurrency // layout.replicas))
    return layout.memory.concurrent_at_context < per_replica


def recommend(layouts: dict[str, Layout], model: ModelSpec, concurrency: int,
              nvlink: bool) -> tuple[str | None, str]:
    """The layout to use and the reason, by the rule in the module docstring."""
    reps, tp, pp = layouts.get("replicas"), layouts.get("tp"), layouts.get("pp")
    ep = (" Expert parallel is not offered: over PCIe it measured 1.4-2.6 tok/s "
          "(plan-facts §7).") if model.is_moe and not nvlink else ""
    if reps is not None and reps.fits and (reps.replicas == 1 or tp is None
                                           or not kv_starved(reps, concurrency)):
        why = ("it fits on one GPU with room for "
               f"{reps.memory.concurrent_at_context:.1f} requests of {reps.context:,} tokens "
               "each, so each GPU serves on its own: no all-reduce per layer, and one GPU "
               "failing leaves the other serving")
        return "replicas", why[0].upper() + why[1:] + "." + ep
    if tp is not None and tp.fits:
        if reps is not None and reps.fits:
            why = (f"one GPU holds only {reps.memory.concurrent_at_context:.1f} requests of "
                   f"{reps.context:,} tokens (KV-starved for {concurrency} concurrent); TP "
                   f"pools both cards' KV cache ({tp.memory.kv_tokens:,} tokens)")
        else:
            why = (f"it does not fit on one GPU ({reps.memory.error.split('. ')[0]})"
                   if reps is not None else "it needs more than one GPU")
            why += f"; TP={tp.tp} splits weights and KV heads over the cards"
        if pp is not None and pp.fits and not nvlink:
            why += (f"; PP={pp.pp} is the alternative without NVLink (no all-reduce per "
                    f"layer): {pp.total_tokens_per_s:,.0f} vs {tp.total_tokens_per_s:,.0f} "
                    f"tok/s for TP at {concurrency} concurrent")
        return "tp", why[0].upper() + why[1:] + "." + ep
    if pp is not None and pp.fits:
        return "pp", "Only pipeline parallel fits." + ep
    return None, "No layout fits these GPUs: " + "; ".join(
        f"{layout.label}: {layout.memory.error}" for layout in layouts.values()) + ep
