"""``homellm plan train``: how long pre-training takes, what memory it needs per GPU, which
layout (DDP or FSDP2, activation checkpointing, micro-batch) fits, how many tokens Chinchilla
would give the model, and what the job costs. Every number is a Figure with its working.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT ``estimate_mfu``):
    6·N + 12·L·H·Q·T
N counts the parameters a token multiplies: every non-embedding weight plus the LM head
(vocab × hidden), once whether or not it is tied to the input embedding. The embedding lookup
is a gather, not a matmul. nanoGPT does the same for its tied GPT-2: ``get_num_params``
subtracts only the position embeddings and keeps the tied token embedding "because [it is]
used as weights in the final layer". For MoE models N counts the active parameters.
12·L·H·Q·T is attention's score and value products (forward and backward) with H query heads of
size Q attending T positions; with document masking a token attends only its own document, so
T is min(context, document length). The MFU definitions we quote use this same count.

Time = total FLOPs / (GPUs × dense BF16 peak × MFU). MFU defaults to 40%, stated; a measured
one (``--mfu``, or a factor ``homellm plan calibrate`` stored for this GPU) replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from homellm.errors import ConfigError
from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.cost import CostPlan, PriceSource, job_cost
from homellm.plan.figures import Figure, fig
from homellm.plan.train_memory import (
    DEFAULT_HEADROOM,
    DEFAULT_OVERHEAD_GIB,
    MemoryPlan,
    choose_layout,
    memory_plan,
)

DEFAULT_MFU = 0.40
MFU_SOURCE = ("typical 40–60% (plan-facts §5); measured: nanochat d12 41%, torchtitan Llama-3.1-8B "
              "33–39%, TinyLlama 56%")
CHINCHILLA_TOKENS_PER_PARAM = 20
CHINCHILLA_SOURCE = "Hoffmann et al. 2022 (Chinchilla): ~20 tokens per parameter (70B on 1.4T)"
# torch BF16 matmul measured on the card: the ceiling real kernels reach, below the datasheet.
# homellm.hardware.MEASURED_MATMUL_TFLOPS wins when present; this is the fallback.
_MEASURED_MATMUL_TFLOPS: dict[str, tuple[float, str]] = {
    "rtx-pro-6000": (368.0, "zzc0721/torch-performance-test-data #160 (torch bf16 matmul)"),
}
SMALL_MODEL = 250e6


@dataclass(frozen=True)
class TrainPlan:
    """What ``plan train`` found. The CLI renders ``sections()`` (title, figures) in order,
    the ``layouts`` table (strategy, checkpointing, total GiB, fits, largest micro-batch),
    ``cost.verdict`` and ``notes``; ``--json`` prints ``to_json()``."""
    model: str
    gpus: list[str]               # GPU keys, one per GPU
    tokens: float
    context: int
    doc_len: int                  # attended length used for the attention term
    precision: str                # "amp" | "bf16-master" | "bf16"
    strategy: str                 # chosen: "single" | "ddp" | "fsdp2"
    checkpointing: bool
    micro_batch: int
    why: str                      # why this layout
    compute: list[Figure]
    memory: MemoryPlan            # the chosen layout
    layouts: list[MemoryPlan]     # every strategy × checkpointing at the chosen micro-batch
    data: list[Figure]            # Chinchilla
    cost: CostPlan
    notes: list[str] = field(default_factory=list)

    @property
    def n_gpus(self) -> int:
        return len(self.gpus)

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def sections(self) -> list[tuple[str, list[Figure]]]:
        return [("compute and time", self.compute),
                (f"memory per GPU ({self.strategy}"
                 f"{', checkpointing' if self.checkpointing else ''}, "
                 f"micro-batch {self.micro_batch})", self.memory.figures()),
                ("tokens", self.data), ("cost", self.cost.figures())]

    def figures(self) -> list[Figure]:
        out = [f for _, figs in self.sections() for f in figs]
        for m in self.layouts:
            out += m.figures()
        return out

    def to_json(self) -> dict[str, Any]:
        def mem(m: MemoryPlan) -> dict[str, Any]:
            return {"strategy": m.strategy, "checkpointing": m.checkpointing,
                    "micro_batch": m.micro_batch, "fits": m.fits, "notes": m.notes,
                    "figures": [f.to_json() for f in m.figures()]}
        c = self.cost
        return {"model": self.model, "gpus": self.gpus, "tokens": self.tokens,
                "context": self.context, "doc_len": self.doc_len, "precision": self.precision,
                "strategy": self.strategy, "checkpointing": self.checkpointing,
                "micro_batch": self.micro_batch, "fits": self.fits, "why": self.why,
                "compute": [f.to_json() for f in self.compute], "memory": mem(self.memory),
                "layouts": [mem(m) for m in self.layouts],
                "data": [f.to_json() for f in self.data],
                "cost": {"own": [f.to_json() for f in c.own],
                         "cloud": [x.to_json() for x in c.cloud],
                         "break_even": [f.to_json() for f in c.break_even],
                         "cheapest": c.cheapest, "verdict": c.verdict, "notes": c.notes},
                "notes": self.notes}


def matmul_params(model: ModelSpec) -> Figure:
    """N of 6·N: the weights a token multiplies (see the module docstring)."""
    p = model.params
    return fig("train.matmul_params", "parameters multiplied per token (N)", "",
               "A - E - O + V * h", A=p.active, E=p.embedding, O=p.lm_head,
               V=model.vocab_size, h=model.hidden_size,
               note="active non-embedding weights plus the LM head once (tied or not); the "
                    "embedding lookup is not a matmul",
               source="nanoGPT get_num_params (subtracts position embeddings only; keeps the "
                      "tied token embedding as the LM head)")


def train_flops_per_token(model: ModelSpec, context: int, doc_len: int | None = None
                          ) -> list[Figure]:
    """[N, attended length, FLOPs per token, attention's share]."""
    n = matmul_params(model)
    t = fig("train.attn_len", "attended length (T)", "tok", "min(T, D)", T=context,
            D=doc_len if doc_len else context,
            note="document masking: a token attends only its own document")
    src = "PaLM (Chowdhery et al. 2022) appendix B; nanoGPT estimate_mfu"
    sw_layers = int(getattr(model, "sliding_window_layers", 0) or 0)
    if sw_layers and model.sliding_window:
        # sliding-window layers attend at most `window` positions
        att = {"H": model.num_heads, "Q": model.head_dim, "Lf": model.num_layers - sw_layers,
               "T": t.value, "Ls": sw_layers, "W": min(t.value, model.sliding_window)}
        term = "12 * H * Q * (Lf * T + Ls * W)"
    else:
        att = {"L": model.num_layers, "H": model.num_heads, "Q": model.head_dim, "T": t.value}
        term = "12 * L * H * Q * T"
    per = fig("train.flops_per_token", "training FLOPs per token", "FLOP", f"6 * N + {term}",
              N=n.value, source=src, **att)
    share = fig("train.attention_share", "attention's share of the FLOPs", "", f"{term} / F",
                F=per.value, **att)
    return [n, t, per, share]


def chinchilla(model: ModelSpec, tokens: float) -> tuple[list[Figure], list[str]]:
    n = model.params.active if model.is_moe else model.params.total
    opt = fig("train.chinchilla_tokens", "Chinchilla-optimal tokens", "tok", "k * N",
              k=CHINCHILLA_TOKENS_PER_PARAM, N=n, source=CHINCHILLA_SOURCE,
              note="active parameters for MoE (Chinchilla studied dense models)"
              if model.is_moe else "")
    ratio = fig("train.tokens_ratio", "requested / Chinchilla-optimal tokens", "", "D / C",
                D=tokens, C=opt.value)
    notes = []
    if ratio.value < 0.5:
        notes.append(f"{tokens:.3g} tokens is {ratio.value:.2f}× Chinchilla-optimal: the model is "
                     f"undertrained for its size; a smaller model would reach a lower loss with "
                     f"this compute")
    elif ratio.value > 2:
        notes.append(f"{tokens:.3g} tokens is {ratio.value:.1f}× Chinchilla-optimal: fine for a "
                     f"model that will serve a lot (cheaper inference per quality), but each "
                     f"extra token gains less")
    return [opt, ratio], notes


def matmul_ceiling(gpu: GPUSpec, given: float | None) -> tuple[float, str] | None:
    if given:
        return given, "given"
    from homellm import hardware

    table = getattr(hardware, "MEASURED_MATMUL_TFLOPS", None) or _MEASURED_MATMUL_TFLOPS
    found = table.get(gpu.key)
    return (float(found[0]), str(found[1])) if found else None


def _hours(per_token: float, tokens: float, r: float, n: int, peak: float, mfu: float) -> float:
    return per_token * tokens * r / (n * peak * 1e12 * mfu) / 3600


def plan_train(model: ModelSpec, gpus: Sequence[GPUSpec], *, tokens: float, context: int,
               doc_len: int | None = None, micro_batch: int | None = None,
               mfu: float | None = None, strategy: str = "auto", precision: str = "amp",
               checkpointing: bool | None = None, chunked_ce: bool = False,
               matmul_tflops: float | None = None, overhead_gib: float = DEFAULT_OVERHEAD_GIB,
               headroom: float = DEFAULT_HEADROOM,
               cloud_gpus: Sequence[GPUSpec] | None = None, prices: PriceSource | None = None,
               electricity_usd_kwh: float | None = None, purchase_usd: float | None = None,
               power_w: float | None = None, power_fraction: float | None = None,
               host_w: float | None = None, life_hours: float | None = None) -> TrainPlan:
    """Plan pre-training ``model`` on ``tokens`` tokens of ``context``-token sequences on
    ``gpus`` (one entry per GPU). ``mfu``: measured model-FLOPs utilisation (default 40%).
    ``strategy``: "auto", "ddp" or "fsdp2" (one GPU is always "single"). ``checkpointing``
    and ``micro_batch`` are chosen when None. ``prices``: gpu_key → quotes (default
    homellm.plan.prices). ``cloud_gpus``: GPU types to price renting (default: the user's)."""
    if not gpus:
        raise ConfigError("give at least one GPU")
    if tokens <= 0 or context < 1:
        raise ConfigError("--tokens and --context must be positive")
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu is a fraction in (0, 1] (0.4 for 40%), not {mfu}")
    if doc_len is not None and doc_len < 1:
        raise ConfigError("--doc-len must be positive")
    if strategy not in ("auto", "ddp", "fsdp2"):
        raise ConfigError(f"--strategy must be auto, ddp or fsdp2, not {strategy!r}")
    n = len(gpus)
    slow = min(gpus, key=lambda g: g.bf16_tflops)
    mem_gib = min(g.memory_gib for g in gpus)
    notes: list[str] = []
    if len({g.key for g in gpus}) > 1:
        notes.append("mixed GPUs: data parallel runs at the slowest card's pace and the "
                     "smallest card's memory")

    # layout first: checkpointing changes the compute
    s, ac, mb, why = choose_layout(model, mem_gib, n_gpus=n, seq=context, strategy=strategy,
                                   precision=precision, chunked_ce=chunked_ce,
                                   overhead_gib=overhead_gib, micro_batch=micro_batch,
                                   checkpointing=checkpointing, headroom=headroom)
    kw: dict[str, Any] = {"n_gpus": n, "seq": context, "micro_batch": mb, "precision": precision,
                          "chunked_ce": chunked_ce, "overhead_gib": overhead_gib,
                          "headroom": headroom}
    chosen = memory_plan(model, mem_gib, strategy=s, checkpointing=ac, **kw)
    strategies = ["single"] if n == 1 else ["ddp", "fsdp2"]
    layouts = [memory_plan(model, mem_gib, strategy=x, checkpointing=c, **kw)
               for x in strategies for c in (False, True)]
    if not chosen.fits:
        notes.append("does not fit: try FSDP2 over more GPUs, activation checkpointing, a "
                     "chunked loss (--chunked-ce), a shorter context or a smaller micro-batch")
    notes += chosen.notes

    # compute and time
    flops = train_flops_per_token(model, context, doc_len)
    per = flops[2].value
    given_mfu = mfu is not None
    u = mfu if mfu is not None else DEFAULT_MFU
    r = 4 / 3 if ac and not given_mfu else 1.0
    peak = fig("train.peak_tflops", f"dense BF16 peak per GPU ({slow.name})", "TFLOPS",
               value=slow.bf16_tflops, source=slow.source)
    mfu_fig = fig("train.mfu", "model FLOPs utilisation (MFU)", "", value=u,
                  source=("given (--mfu, or calibrated for this GPU)" if given_mfu
                          else MFU_SOURCE),
                  note="" if given_mfu or model.params.total >= SMALL_MODEL else
                  "sub-250M models often reach only 20–40%: embeddings, LM head and overheads "
                  "weigh more")
    rec = fig("train.recompute", "compute factor for activation checkpointing", "", value=r,
              note="full checkpointing recomputes the forward: +1/3 of the FLOPs"
              if r > 1 else "no recompute (or already in the measured MFU)")
    total = fig("train.total_flops", "total training FLOPs", "FLOP", "F * D", F=per, D=tokens)
    ins = {"n": n, "peak": peak.value, "mfu": u}
    tps = fig("train.tokens_per_s", "throughput", "tok/s", "n * peak * 1e12 * mfu / (F * r)",
              F=per, r=r, **ins)
    hours = fig("train.time_h", "training time", "h",
                "C * r / (n * peak * 1e12 * mfu) / 3600", C=total.value, r=r, **ins)
    days = fig("train.time_days", "training time", "days", "t / 24", t=hours.value)
    gpu_h = fig("train.gpu_hours", "GPU-hours", "GPU-h", "t * n", t=hours.value, n=n)
    base = fig("train.time_h_6nd", "time by 6·N·D alone (no attention)", "h",
               "6 * N * D / (n * peak * 1e12 * mfu) / 3600", N=flops[0].value, D=tokens, **ins)
    compute = [*flops, total, peak, mfu_fig, rec, tps, hours, days, gpu_h, base]
    ceiling = matmul_ceiling(slow, matmul_tflops)
    if ceiling:
        compute.append(fig("train.time_h_matmul", "training time, MFU of the measured matmul "
                           "ceiling", "h", "C * r / (n * m * 1e12 * mfu) / 3600", C=total.value,
                           r=r, n=n, m=ceiling[0], mfu=u, source=ceiling[1],
                           note="the same MFU applied to what torch matmuls reach on this card "
                                "instead of the datasheet peak: the pessimistic figure"))

    data, data_notes = chinchilla(model, tokens)
    notes += data_notes

    # cost: own GPUs, and renting each cloud GPU type for the same job
    cloud_hours = {g.key: _hours(per, tokens, r, n, g.bf16_tflops, u)
                   for g in (cloud_gpus if cloud_gpus is not None else gpus)}
    cost = job_cost(gpu_key=slow.key, n_gpus=n, hours=hours.value,
                    power_w=power_w if power_w is not None else slow.tdp_w,
                    cloud_hours=cloud_hours, prices=prices,
                    electricity_usd_kwh=electricity_usd_kwh, purchase_usd=purchase_usd,
                    power_fraction=power_fraction, host_w=host_w, life_hours=life_hours)
    if n > 1:
        notes.append("multi-GPU time assumes the gradient traffic overlaps with compute; over "
                     "PCIe without NVLink large models may scale worse")
    return TrainPlan(model.name, [g.key for g in gpus], tokens, context, int(flops[1].value),
                     precision, s, ac, mb, why, compute, chosen, layouts, data, cost, notes)
