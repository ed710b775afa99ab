"""GPU memory of one vLLM replica, budgeted as vLLM v1 budgets it, and the KV cache that is left.

vLLM (``vllm/v1/worker/gpu_worker.py``, ``Worker.determine_available_memory``) runs one dummy
forward of ``max_num_batched_tokens`` tokens plus a sampler pass over ``max_num_seqs`` rows
(``gpu_model_runner.profile_run``), then::

    requested  = total_gpu_memory × gpu_memory_utilization
    kv_cache   = requested − (weights + torch activation peak + non-torch) [− CUDA-graph estimate]

and cuts ``kv_cache`` into pages of ``block_size`` (16) tokens per layer
(``FullAttentionSpec``: 2 · 16 · kv_heads · head_dim · dtype bytes). The CUDA-graph estimate
(PR #30515) is applied when ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` is on: the default
"as of v0.21.0" (vllm/envs.py, quoted in PR #41099); issue #45178 and PR #45197 asked to turn
it off again. Every number here is a :class:`Figure` so ``--explain`` can show its working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from homellm.errors import ConfigError
from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure, fig

GIB = 1024**3
BLOCK_SIZE = 16  # vLLM's default --block-size for CUDA attention backends

DTYPE_BYTES: dict[str, float] = {"bfloat16": 2.0, "float16": 2.0, "half": 2.0,
                                 "float32": 4.0, "float": 4.0, "auto": 2.0}
# --dtype fp8: vLLM 0.33 quantizes a bf16 checkpoint while loading it. `--quantization fp8`
# still works there but logs "deprecated for online quantization; use --quantization
# fp8_per_tensor" (model_loader/weight_utils.py get_quant_config), so we emit the new name.
FP8_QUANTIZATION = "fp8_per_tensor"
KV_CACHE_DTYPES = ("auto", "fp8")   # vLLM --kv-cache-dtype (config/cache.py CacheDType)
_FP8_SOURCE = ("vLLM 0.33 quantization/online/base.py: every LinearBase (attention, MLP, the "
               "MoE router gate) and the routed experts go to FP8; the embedding, the LM head "
               "(ParallelLMHead) and the norms keep the model dtype")

# defaults of the memory model; every one can be overridden through ``efficiency``
MEMORY_DEFAULTS: dict[str, float] = {
    # non-torch memory (cuBLAS/NCCL workspaces, CUDA context growth) logged by vLLM:
    # 0.10 GiB (#12330, TP 1), 0.07 (#21489), 0.16 (#12126); TP > 1 adds NCCL and custom
    # all-reduce buffers (0.20 GiB per rank in #14447; 0.59-0.73 in two TP 2 logs)
    "non_torch_gib": 0.15,
    "non_torch_tp_extra_gib": 0.6,
    # CUDA-graph estimate subtracted since v0.21.0: real pools are 0.36-1.3 GiB
    # (plan-facts §3: #21489 0.65 GiB for Gemma-3-4B, Llama-4 Maverick 1.3 GiB)
    "cudagraph_gib": 1.0,
    # bytes per logit element in the sampler pass of the profile run: bf16 logits (2) +
    # fp32 upcast (4) + fp32 probabilities (4) + slack (2); with the forward term this gives
    # 1.24 GiB for Llama-3-8B at 8192 tokens / 256 rows, vs 1.26 GiB logged in vLLM #10511
    "sampler_bytes_per_logit": 12.0,
}
_MEMORY_SOURCE = "vllm/v1/worker/gpu_worker.py determine_available_memory"


def dtype_bytes(dtype: str) -> float:
    """Bytes of one value in the model dtype (``fp8``: the activations stay bfloat16)."""
    if dtype == "fp8":
        return DTYPE_BYTES["bfloat16"]
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"--dtype: expected one of {', '.join([*DTYPE_BYTES, 'fp8'])}, "
                          f"got {dtype!r}") from None


@dataclass(frozen=True)
class Precision:
    """How many bytes each kind of value takes, and the vLLM flags that say so."""

    dtype: str                  # as asked: bfloat16, float16, float32, auto, fp8
    kv_cache_dtype: str         # auto (the model dtype) or fp8
    weight_bytes: float         # a weight of a layer the quantization covers
    kept_bytes: float           # a weight it leaves in the model dtype (embedding, LM head)
    act_bytes: float            # activations (fp8: bfloat16)
    kv_bytes: float             # one K or V value in the cache
    engine_dtype: str           # vLLM --dtype ("auto": leave the flag out)
    quantization: str | None    # vLLM --quantization


def kept_params(model: ModelSpec) -> int:
    """Weights fp8 leaves in the model dtype: the embedding, the LM head and the norms."""
    return model.params.embedding + model.params.lm_head + model.norm_params


def precision(dtype: str, kv_cache_dtype: str = "auto") -> Precision:
    """``--dtype`` and ``--kv-cache-dtype`` as bytes and vLLM flags; refuses unknown ones."""
    act = dtype_bytes(dtype)
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ConfigError(f"--kv-cache-dtype: expected one of {', '.join(KV_CACHE_DTYPES)}, "
                          f"got {kv_cache_dtype!r}")
    kv = 1.0 if kv_cache_dtype == "fp8" else act
    if dtype == "fp8":
        return Precision(dtype, kv_cache_dtype, weight_bytes=1.0, kept_bytes=act,
                         act_bytes=act, kv_bytes=kv, engine_dtype="bfloat16",
                         quantization=FP8_QUANTIZATION)
    return Precision(dtype, kv_cache_dtype, weight_bytes=act, kept_bytes=act, act_bytes=act,
                     kv_bytes=kv, engine_dtype=dtype, quantization=None)


def vllm_batch_defaults(gpu: GPUSpec) -> tuple[int, int, str]:
    """``(max_num_batched_tokens, max_num_seqs, why)`` for ``vllm serve`` on this GPU, as
    ``vllm/engine/arg_utils.py`` picks them (OPENAI_API_SERVER context): ≥ 70 GiB and not an
    A100 → 8192 / 1024, otherwise 2048 / 256; ≥ 160 GiB → 16384 tokens (added in v0.28)."""
    memory, name = gpu.memory_gib, f"{gpu.key} {gpu.name}".lower()
    if memory >= 160:
        return 16384, 1024, "≥ 160 GiB: vLLM ≥ 0.28 largest tier (arg_utils.py)"
    if memory >= 70 and "a100" not in name:
        return 8192, 1024, "≥ 70 GiB and not an A100 (arg_utils.py get_batch_defaults)"
    return 2048, 256, "< 70 GiB or an A100 (arg_utils.py get_batch_defaults)"


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> int:
    """KV heads one rank holds: split under TP, replicated when ``kv_heads < tp``
    (vLLM ``QKVParallelLinear``: ``max(1, total_kv_heads // tp)``)."""
    return max(1, model.num_kv_heads // tp)


def layers_per_gpu(model: ModelSpec, pp: int) -> int:
    """Layers on the most loaded pipeline stage (vLLM splits them evenly, rest to the last)."""
    return math.ceil(model.num_layers / pp)


def _activation_bytes_per_token(model: ModelSpec) -> int:
    """Elements one token holds at the widest point of the forward (see activation figure)."""
    attn = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim
    if model.is_moe:
        # fused_moe intermediate caches: (T, k, 2·I_moe), (T·k, I_moe), (T, k, hidden)
        mlp = model.experts_per_token * (3 * model.moe_intermediate_size + model.hidden_size)
    else:
        mlp = 3 * model.intermediate_size  # gate_up output (2·I) + activation output (I)
    return 2 * model.hidden_size + attn + mlp


@dataclass(frozen=True)
class MemoryPlan:
    """One GPU of one replica laid out as ``tp`` × ``pp``."""

    tp: int
    pp: int
    figures: dict[str, Figure]
    kv_tokens: int              # tokens the KV cache holds (whole replica, num_blocks × 16)
    max_context: int            # the longest single request that fits (≤ model's max)
    context: int                # the context the plan was asked for (max_model_len)
    concurrent_at_context: float  # requests of `context` tokens the cache holds at once
    fits: bool
    error: str = ""             # vLLM-style message when it does not fit
    notes: list[str] = field(default_factory=list)

    @property
    def kv_gib(self) -> float:
        return float(self.figures["kv_cache"].value)


def plan_memory(model: ModelSpec, gpu: GPUSpec, *, tp: int = 1, pp: int = 1,
                context: int | None = None, dtype: str = "bfloat16",
                gpu_memory_utilization: float = 0.9,
                max_num_batched_tokens: int | None = None, max_num_seqs: int | None = None,
                efficiency: dict[str, float] | None = None,
                kv_cache_dtype: str = "auto") -> MemoryPlan:
    """What one rank of a ``tp`` × ``pp`` replica holds and the KV cache that is left."""
    eff = {**MEMORY_DEFAULTS, **(efficiency or {})}
    prec = precision(dtype, kv_cache_dtype)
    b = prec.act_bytes
    tokens_default, seqs_default, why = vllm_batch_defaults(gpu)
    tokens = max_num_batched_tokens or tokens_default
    seqs = min(max_num_seqs or seqs_default, tokens)
    want = context or model.max_position_embeddings
    f: dict[str, Figure] = {}

    f["budget"] = fig("serve.memory.budget", "memory vLLM may use (per GPU)", "GiB",
                      "total * util", source=_MEMORY_SOURCE + ": requested_memory",
                      total=gpu.memory_gib, util=gpu_memory_utilization)
    f["weights"] = fig("serve.memory.weights", "weights per GPU", "GiB",
                       "((params - kept) * wb + kept * kb) / (tp * pp) / GiB",
                       source="params × dtype bytes, split evenly over TP ranks and PP stages "
                              "(replicated norms ignored)"
                              + ("; " + _FP8_SOURCE if prec.quantization else ""),
                       note=("kept = embedding + LM head + norms in the model dtype; biases and "
                             "per-tensor scales (< 0.01 %) counted at 1 byte"
                             if prec.quantization else ""),
                       params=model.params.total, kept=kept_params(model),
                       wb=prec.weight_bytes, kb=prec.kept_bytes, tp=tp, pp=pp, GiB=GIB)
    act_per_token = _activation_bytes_per_token(model)
    mlp_text = "k·(3·I_moe + hidden) for fused MoE" if model.is_moe else "3·I for the MLP"
    f["activation"] = fig(
        "serve.memory.activation", "activation peak of the profile run", "GiB",
        "(tokens * per_token * b + rows * vocab * sampler_b) / GiB",
        source="vLLM gpu_model_runner.profile_run: a forward of max_num_batched_tokens "
               "tokens, then the sampler over min(max_num_seqs, tokens) rows; calibrated to "
               "the Llama-3-8B log in vLLM #10511 (1.26 GiB at 8192 tokens)",
        note=f"per_token = 2·hidden + (q+2kv)·head_dim + {mlp_text}; not divided by TP "
             f"(#10511 logs the same 1.26 GiB at TP 1 and 2); sampler on the last PP stage; "
             f"batch defaults: {why}",
        tokens=tokens, per_token=act_per_token, b=b, rows=seqs,
        vocab=model.vocab_size, sampler_b=eff["sampler_bytes_per_logit"], GiB=GIB)
    nt_extra = eff["non_torch_tp_extra_gib"] if tp * pp > 1 else 0.0
    f["non_torch"] = fig("serve.memory.non_torch", "non-torch memory (NCCL, cuBLAS)", "GiB",
                         "base + extra", source="vLLM logs: 0.07-0.16 GiB at TP 1 "
                         "(#12330, #21489, #12126); NCCL/custom all-reduce buffers with TP > 1",
                         base=eff["non_torch_gib"], extra=nt_extra)
    f["cudagraph"] = fig("serve.memory.cudagraph", "CUDA-graph estimate", "GiB",
                         value=eff["cudagraph_gib"],
                         source="VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, on by default as of "
                                "v0.21.0 (PR #30515); 0 with the variable set to 0",
                         note="real pools 0.36-1.3 GiB; set cudagraph_gib=0 for vLLM < 0.21")
    f["kv_cache"] = fig("serve.memory.kv_cache", "KV cache memory (per GPU)", "GiB",
                        "budget - weights - activation - non_torch - cudagraph",
                        source=_MEMORY_SOURCE,
                        budget=f["budget"].value, weights=f["weights"].value,
                        activation=f["activation"].value, non_torch=f["non_torch"].value,
                        cudagraph=f["cudagraph"].value)
    heads, layers = kv_heads_per_gpu(model, tp), layers_per_gpu(model, pp)
    f["kv_per_token"] = fig("serve.memory.kv_bytes_per_token", "KV cache per token (per GPU)",
                            "B", "2 * layers * kv_heads * head_dim * b",
                            source="vLLM FullAttentionSpec page = 2·block_size·kv_heads·"
                                   "head_size·dtype per layer",
                            note="KV heads split under TP, replicated when kv_heads < TP; "
                                 "layers split under PP"
                                 + ("; --kv-cache-dtype fp8: 1 byte per value (fp8_e4m3)"
                                    if kv_cache_dtype == "fp8" else ""),
                            layers=layers, kv_heads=heads, head_dim=model.head_dim,
                            b=prec.kv_bytes)
    page = 2 * BLOCK_SIZE * heads * model.head_dim * prec.kv_bytes
    kv_bytes = max(float(f["kv_cache"].value), 0.0) * GIB
    f["blocks"] = fig("serve.memory.num_blocks", "KV blocks (16 tokens each)", "",
                      "floor(kv_bytes / page / layers)",
                      source="vllm/v1/core/kv_cache_utils.py: num_blocks = available // "
                             "page_size // num_layers",
                      kv_bytes=kv_bytes, page=page, layers=layers)
    blocks = int(f["blocks"].value)
    f["kv_tokens"] = fig("serve.memory.kv_tokens", "tokens the KV cache holds", "tok",
                         "blocks * block_size", blocks=blocks, block_size=BLOCK_SIZE)
    kv_tokens = int(f["kv_tokens"].value)
    # vLLM's estimate of the longest model length: whole blocks, at most the model's limit
    f["max_context"] = fig("serve.memory.max_context", "longest context one request can have",
                           "tok", "min(kv_tokens, model_max)",
                           source="vLLM _check_enough_kv_cache_memory / "
                                  "estimate_max_model_len",
                           kv_tokens=kv_tokens, model_max=model.max_position_embeddings)
    f["concurrency"] = fig("serve.memory.concurrent_requests",
                           f"requests of {want:,} tokens held at once", "",
                           "kv_tokens / context",
                           source="vLLM log 'Maximum concurrency for N tokens per request'",
                           kv_tokens=kv_tokens, context=want)

    error, notes = "", []
    weights_gib = float(f["weights"].value)
    if weights_gib > gpu.memory_gib:
        error = (f"CUDA out of memory while loading weights: {weights_gib:.2f} GiB per GPU > "
                 f"{gpu.memory_gib:.2f} GiB on {gpu.name}")
    elif kv_tokens <= 0:
        error = ("No available memory for the cache blocks. Try increasing "
                 "`gpu_memory_utilization` when initializing the engine.")
    elif want > kv_tokens:
        need = want * float(f["kv_per_token"].value) / GIB
        error = (f"To serve at least one request with the model's max seq len ({want}), "
                 f"({need:.2f} GiB KV cache is needed, which is larger than the available KV "
                 f"cache memory ({kv_bytes / GIB:.2f} GiB). Based on the available memory, the "
                 f"estimated maximum model length is {kv_tokens}. Try increasing "
                 "`gpu_memory_utilization` or decreasing `max_model_len` when initializing "
                 "the engine.")
    if want > model.max_position_embeddings:
        notes.append(f"context {want:,} is beyond the model's max_position_embeddings "
                     f"({model.max_position_embeddings:,}): needs rope scaling "
                     "(--hf-overrides) or vLLM refuses it")
    total_used = float(f["budget"].value)
    if total_used + 0.5 > gpu.memory_gib:
        notes.append("gpu_memory_utilization leaves under 0.5 GiB for CUDA graphs and other "
                     "processes: startup may hit CUDA out of memory")
    return MemoryPlan(tp=tp, pp=pp, figures=f, kv_tokens=max(kv_tokens, 0),
                      max_context=max(int(f["max_context"].value), 0), context=want,
                      concurrent_at_context=max(float(f["concurrency"].value), 0.0),
                      fits=not error, error=error, notes=notes)
