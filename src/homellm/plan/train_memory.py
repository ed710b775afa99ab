"""Per-GPU memory of mixed-precision AdamW training, by component, for DDP and FSDP2.

Model states (ZeRO paper, Rajbhandari et al. 2019, §3.1): mixed-precision Adam keeps 16 bytes
per parameter. With PyTorch autocast ("amp", the default) they are fp32 weights (4), fp32
gradients (4) and fp32 Adam m and v (8); autocast also holds a bf16 copy of each weight for the
forward and backward (2). With bf16 weights and an fp32 master copy ("bf16-master") they are
2 + 2 + 4 + 8. Pure bf16 weights with fp32 m and v ("bf16") keep 12 and no master copy.

Activations: our own count for a Llama/Qwen3 block in eager PyTorch with flash attention
(SDPA/FA2), 2-byte activations, saved for backward per token per layer:
    8h (two RMSNorm inputs and outputs) + 4q (rotated Q, attention output) + 4kv (K, V)
    + 8f (gate, up, silu(gate), silu(gate)·up) bytes, plus 4a (fp32 log-sum-exp per head).
With GPT-2 shapes (q = kv = h) and SwiGLU's f = 8h/3 this is ≈37h, close to Korthikanti et al.
2022 ("Reducing Activation Recomputation in Large Transformer Models", eq. 1) 34·s·b·h +
5·a·s²·b for a GPT block with dropout; flash attention never stores the s×s scores, which
removes the 5·a·s²·b term. We use our count, not theirs: it follows GQA and the MLP width.
Full activation checkpointing keeps each layer's input (2h per token per layer) and recomputes
one layer at a time during backward. Logits: the LM head's output upcast to fp32 plus its fp32
gradient, 8·b·s·V bytes, unless the loss is computed in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homellm.errors import ConfigError
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure, fig

GiB = 2**30
STRATEGIES = ("single", "ddp", "fsdp2")
PRECISIONS = ("amp", "bf16-master", "bf16")
# bytes per parameter: weights, gradients, master copy, Adam m+v, autocast bf16 weight copies
_STATE_BYTES = {"amp": (4, 4, 0, 8, 2), "bf16-master": (2, 2, 4, 8, 0), "bf16": (2, 2, 0, 8, 0)}
_ZERO = "ZeRO (Rajbhandari et al. 2019) §3.1: mixed-precision Adam = 16 bytes/param"
_ACT_SRC = ("own count for a Llama/Qwen3 block with flash attention, cf. Korthikanti et al. "
            "2022 eq. 1: 34·s·b·h + 5·a·s²·b (flash attention removes the s² term)")
DEFAULT_OVERHEAD_GIB = 1.5
# a CPU process has no CUDA context, cuBLAS workspaces or NCCL buffers: the Python and PyTorch
# runtime (libtorch, the interpreter, gloo) is what remains
DEFAULT_CPU_OVERHEAD_GIB = 0.5
DEVICES = ("cuda", "cpu")
DEFAULT_CE_CHUNK = 4096
# Part of the GPU a plan fills: the rest is headroom for the caching allocator's fragmentation
# and transient buffers (an assumption until `homellm train` measures the real peak).
DEFAULT_HEADROOM = 0.92


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of one layout (strategy × checkpointing) at one micro-batch."""
    strategy: str                    # "single" | "ddp" | "fsdp2"
    checkpointing: bool              # full per-layer activation checkpointing
    micro_batch: int                 # sequences per GPU per forward
    components: list[Figure]         # weights, grads, master, optimizer, activations, logits...
    total: Figure                    # GiB per GPU
    capacity: Figure                 # GiB the GPU offers
    fits: bool
    max_micro_batch: Figure          # largest micro-batch that fits in this layout
    notes: list[str] = field(default_factory=list)
    device: str = "cuda"             # "cpu": per process, in the machine's RAM

    @property
    def unit(self) -> str:
        """What one share of memory is: a GPU, or a CPU process."""
        return "process" if self.device == "cpu" else "GPU"

    def figures(self) -> list[Figure]:
        return [*self.components, self.total, self.capacity, self.max_micro_batch]


def block_params(model: ModelSpec) -> float:
    """Parameters of one transformer block (all experts included)."""
    p = model.params
    return (p.total - p.embedding - p.lm_head) / model.num_layers


def mlp_width(model: ModelSpec) -> float:
    """Intermediate activations per token of an average layer: a MoE layer computes
    experts_per_token experts of width moe_intermediate_size."""
    if not model.is_moe:
        return float(model.intermediate_size)
    L, moe = model.num_layers, model.moe_layers or model.num_layers
    routed = model.experts_per_token * model.moe_intermediate_size
    return (moe * routed + (L - moe) * model.intermediate_size) / L


def _act_inputs(model: ModelSpec, seq: int, batch: int) -> dict[str, float]:
    return {"s": seq, "b": batch, "h": model.hidden_size, "q": model.num_heads * model.head_dim,
            "kv": model.num_kv_heads * model.head_dim, "f": mlp_width(model),
            "a": model.num_heads, "L": model.num_layers}


_LAYER = "s * b * (8 * h + 4 * q + 4 * kv + 8 * f + 4 * a)"
_FINAL = "4 * s * b * h"   # final norm input and output (the LM head's input)


def activations(model: ModelSpec, seq: int, batch: int, checkpointing: bool,
                prefix: str) -> Figure:
    i = _act_inputs(model, seq, batch)
    if checkpointing:
        return fig(f"{prefix}.activations", "activations (full checkpointing)", "GiB",
                   f"(L * 2 * s * b * h + {_LAYER} + {_FINAL}) / 2**30", source=_ACT_SRC,
                   note="layer inputs kept, one layer recomputed at a time in backward", **i)
    return fig(f"{prefix}.activations", "activations (no checkpointing)", "GiB",
               f"(L * {_LAYER} + {_FINAL}) / 2**30", source=_ACT_SRC,
               note="eager PyTorch; torch.compile or fused SwiGLU saves less", **i)


def logits(model: ModelSpec, seq: int, batch: int, chunked_ce: bool, prefix: str) -> Figure:
    if chunked_ce:
        return fig(f"{prefix}.logits", "logits + gradient (chunked loss)", "GiB",
                   "min(b * s, c) * V * 8 / 2**30", b=batch, s=seq, c=DEFAULT_CE_CHUNK,
                   V=model.vocab_size, note="fp32 logits of one chunk of tokens at a time")
    return fig(f"{prefix}.logits", "logits + gradient (fp32)", "GiB", "b * s * V * 8 / 2**30",
               b=batch, s=seq, V=model.vocab_size,
               note="a chunked or fused cross-entropy (e.g. Liger) removes most of this")


def _states(model: ModelSpec, strategy: str, n: int, precision: str,
            prefix: str) -> list[Figure]:
    w, g, m, o, cast = _STATE_BYTES[precision]
    N = model.params.total
    shard = n if strategy == "fsdp2" else 1
    how = f"sharded over {n} GPUs" if shard > 1 else "full copy on each GPU"
    out = [fig(f"{prefix}.weights", f"weights ({'fp32' if w == 4 else 'bf16'})", "GiB",
               "N * B / n / 2**30", source=_ZERO, note=how, N=N, B=w, n=shard),
           fig(f"{prefix}.grads", f"gradients ({'fp32' if g == 4 else 'bf16'})", "GiB",
               "N * B / n / 2**30", source=_ZERO, note=how, N=N, B=g, n=shard)]
    if m:
        out.append(fig(f"{prefix}.master", "fp32 master weights", "GiB", "N * B / n / 2**30",
                       source=_ZERO, note=how, N=N, B=m, n=shard))
    out.append(fig(f"{prefix}.optimizer", "AdamW m and v (fp32)", "GiB", "N * B / n / 2**30",
                   source=_ZERO, note=how, N=N, B=o, n=shard))
    if strategy == "fsdp2":
        unit = max(block_params(model), model.vocab_size * model.hidden_size)
        out.append(fig(f"{prefix}.unsharded", "FSDP2 unsharded units (bf16 params, grads)", "GiB",
                       "P * (2 * 2 + 4) / 2**30", P=unit,
                       source="FSDP2 all-gathers one unit and prefetches the next",
                       note="largest unit (block or embedding): two in bf16, one unsharded "
                            "fp32 gradient before reduce-scatter; estimate"))
    elif cast:
        out.append(fig(f"{prefix}.autocast", "bf16 weight copies (autocast)", "GiB",
                       "N * B / 2**30", N=N, B=cast,
                       note="autocast casts each weight once per forward; kept for backward"))
    if strategy == "ddp":
        out.append(fig(f"{prefix}.buckets", "DDP gradient buckets", "GiB", "N * B / 2**30",
                       N=N, B=g, source="PyTorch DDP docs (gradient_as_bucket_view)",
                       note="gradient_as_bucket_view=True makes grads views of the buckets "
                            "and saves this"))
    return out


def memory_plan(model: ModelSpec, memory_gib: float, *, strategy: str, n_gpus: int, seq: int,
                micro_batch: int, checkpointing: bool, precision: str = "amp",
                chunked_ce: bool = False, overhead_gib: float | None = None,
                headroom: float = DEFAULT_HEADROOM, device: str = "cuda") -> MemoryPlan:
    """Memory per GPU of one layout; ``memory_gib`` is what one GPU offers. On ``device="cpu"``
    it is per process and ``memory_gib`` is the RAM one process may use."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, not {device!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    prefix = f"train.mem.{strategy}{'.ac' if checkpointing else ''}"
    fixed = _states(model, strategy, n_gpus, precision, prefix)
    fixed.append(_overhead(prefix, device, overhead_gib))
    act = activations(model, seq, micro_batch, checkpointing, prefix)
    lg = logits(model, seq, micro_batch, chunked_ce, prefix)
    parts = [*fixed, act, lg]
    names = {p.key.rsplit(".", 1)[1]: p.value for p in parts}
    cpu = device == "cpu"
    total = fig(f"{prefix}.total", f"total per {'process' if cpu else 'GPU'}", "GiB",
                " + ".join(names), **names)
    capacity = fig(f"{prefix}.capacity", "usable RAM" if cpu else "usable GPU memory", "GiB",
                   "M * u", M=memory_gib, u=headroom,
                   note="the rest is headroom for allocator fragmentation")
    # largest micro-batch: fixed part plus a per-sequence part (activations and logits at b=1)
    one_act = activations(model, seq, 1, checkpointing, prefix).value
    one_lg = logits(model, seq, 1, chunked_ce, prefix).value
    fixed_sum = sum(p.value for p in fixed)
    if chunked_ce:   # the chunk's logits are a fixed cost once b·s ≥ chunk
        fixed_sum += one_lg if seq >= DEFAULT_CE_CHUNK else 0.0
        one_lg = 0.0 if seq >= DEFAULT_CE_CHUNK else one_lg
    best = fig(f"{prefix}.max_micro_batch", "largest micro-batch that fits", "seq",
               "max(0, floor((M - F) / S))", M=capacity.value, F=fixed_sum, S=one_act + one_lg,
               note=f"at {seq} tokens per sequence")
    notes = []
    if not chunked_ce and lg.value > 0.25 * capacity.value:
        notes.append(f"logits take over a quarter of the {'RAM' if cpu else 'GPU'}: use a "
                     "chunked cross-entropy")
    return MemoryPlan(strategy, checkpointing, micro_batch, parts, total, capacity,
                      total.value <= capacity.value, best, notes, device)


def _overhead(prefix: str, device: str, gib: float | None) -> Figure:
    if device == "cpu":
        return fig(f"{prefix}.overhead", "Python and PyTorch runtime (CPU)", "GiB",
                   value=DEFAULT_CPU_OVERHEAD_GIB if gib is None else gib,
                   note="allowance; on CPU there is no CUDA context or NCCL (gloo)")
    return fig(f"{prefix}.overhead", "CUDA context, workspaces, NCCL", "GiB",
               value=DEFAULT_OVERHEAD_GIB if gib is None else gib,
               note="allowance; measure with homellm train calibrate")


def choose_layout(model: ModelSpec, memory_gib: float, *, n_gpus: int, seq: int,
                  strategy: str = "auto", precision: str = "amp", chunked_ce: bool = False,
                  overhead_gib: float | None = None, micro_batch: int | None = None,
                  checkpointing: bool | None = None, headroom: float = DEFAULT_HEADROOM,
                  max_auto_batch: int = 32, device: str = "cuda") -> tuple[str, bool, int, str]:
    """(strategy, checkpointing, micro_batch, why) for ``strategy="auto"`` or a given one.

    Order of preference: no checkpointing (it recomputes the forward, ~1/3 more compute), then
    DDP before FSDP2 (less traffic per step: one all-reduce of the gradients against FSDP2's
    all-gather in forward and backward plus a reduce-scatter, which matters over PCIe).
    A given ``micro_batch`` or ``checkpointing`` narrows the choice; without a micro-batch the
    largest that fits is taken, up to ``max_auto_batch``."""
    if n_gpus == 1:
        cands = ["single"]
    elif strategy == "auto":
        cands = ["ddp", "fsdp2"]
    else:
        cands = [strategy]
    need = micro_batch or 1
    acs = (False, True) if checkpointing is None else (checkpointing,)
    for ac in acs:
        for s in cands:
            m = memory_plan(model, memory_gib, strategy=s, n_gpus=n_gpus, seq=seq,
                            micro_batch=1, checkpointing=ac, precision=precision,
                            chunked_ce=chunked_ce, overhead_gib=overhead_gib,
                            headroom=headroom, device=device)
            best = int(m.max_micro_batch.value)
            if best >= need:
                why = (f"{s} fits {best} sequences of {seq} tokens"
                       f"{' with activation checkpointing' if ac else ' without checkpointing'}")
                return s, ac, micro_batch or min(best, max_auto_batch), why
    return (cands[-1], acs[-1], need,
            f"nothing fits {need} sequences of {seq} tokens on {memory_gib:g} GiB")
