"""Decode and prefill speed of one replica from rooflines, with named efficiency factors.

Decode step (all ``batch`` requests advance one token)::

    bytes  = weights read (MoE: non-expert part + E·(1−(1−k/E)^B) experts per MoE layer)
             + KV read (batch · context · KV bytes per token), per GPU
    t_bw   = bytes / (bandwidth · decode_bw_eff)  [+ MoE fixed cost, see below]
    t_cmp  = 2 · N_active · batch / (peak · prefill_mfu)   per GPU
    step   = max(t_bw, t_cmp) + 2 · layers · all-reduce latency (TP > 1)

MoE decode at batch 1 measures ≈ 0.35 of the roofline against ≈ 0.7 for dense (plan-facts §4),
and Qwen3-30B-A3B at batch 10 on an H100 runs at 0.7 of the distinct-expert roofline
(vLLM PR #23151). The model keeps ``decode_bw_eff`` for every byte and adds a fixed per-step
MoE cost (routing, small expert GEMMs) that does not grow with the batch, sized so batch 1
lands on ``moe_b1_eff``: ``t_fixed = bytes_B1/(bw·moe_b1_eff) − bytes_B1/(bw·decode_bw_eff)``.

Prefill of ``P`` tokens: ``FLOPs = P · (2·N_active + 4·L·(nq·d)·P/2)`` at ``peak · prefill_mfu``
(or the weight read, whichever is longer). TTFT = that prefill: its forward samples the
first token.

``--dtype fp8`` (:func:`homellm.plan.serve_memory.precision`): quantized weights are read at 1
byte, the LM head at the model dtype's 2; the weight matmuls run at the GPU's dense FP8 peak
where it has one (:func:`gemm_peak`), attention at the BF16 peak. ``--kv-cache-dtype fp8``
reads the KV cache at 1 byte per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure, fig
from homellm.plan.serve_memory import Precision, kv_heads_per_gpu, layers_per_gpu, precision

# Efficiency keys ``plan_serve(efficiency=...)`` accepts (the calibrate step fills them):
SPEED_DEFAULTS: dict[str, float] = {
    "decode_bw_eff": 0.7,    # achieved / peak memory bandwidth in dense decode (plan-facts §4)
    "moe_b1_eff": 0.35,      # MoE decode at batch 1, of the active-weight roofline (§4)
    "prefill_mfu": 0.5,      # achieved / peak dense BF16 FLOPS in prefill (§5: 40-60 % typical;
    #                          Qwen3-30B-A3B 2048-token TTFT on an A100 implies ≈ 0.54)
    "allreduce_us": 20.0,    # one small all-reduce through NCCL in a CUDA graph (§7)
    "custom_allreduce_us": 7.0,  # vLLM's one-shot custom all-reduce with P2P/NVLink (§7: 4-7)
    "pcie_gbs": 25.0,        # effective PCIe P2P bandwidth for all-reduce payloads, GB/s
    "pp_hop_us": 30.0,       # sending hidden states between pipeline stages, per hop
}
_SPEED_SOURCE = "plan-facts §4 (roofline, efficiency ≈0.7 dense / ≈0.35 MoE batch 1)"


def efficiency_defaults() -> dict[str, float]:
    """Every efficiency key with its default (memory keys included), for ``--explain``."""
    from homellm.plan.serve_memory import MEMORY_DEFAULTS
    return {**SPEED_DEFAULTS, **MEMORY_DEFAULTS}


def gemm_peak(gpu: GPUSpec, prec: Precision) -> tuple[float, str]:
    """Dense TFLOPS the weight matmuls run at, and why: FP8 tensor cores for ``--dtype fp8``
    where the GPU has them (vLLM ``CudaPlatform.supports_fp8``: compute capability ≥ 8.9);
    otherwise vLLM runs FP8 weights through Marlin (W8A16: 1-byte weights, BF16 math)."""
    if prec.quantization is None:
        return gpu.bf16_tflops, "dense BF16 peak"
    if gpu.fp8_tflops:
        return gpu.fp8_tflops, "dense FP8 peak (W8A8 FP8 GEMMs)"
    return gpu.bf16_tflops, ("no FP8 TFLOPS known for this GPU: vLLM runs FP8 weights through "
                             "Marlin W8A16 below compute capability 8.9, math at the BF16 peak")


def _weight_bytes_formula(n: str) -> str:
    """Bytes of ``n`` matmul weights of which ``head`` (the LM head) keeps the model dtype."""
    return f"(({n} - head) * wb + head * kb)"


def _allreduce_us(gpu: GPUSpec, tp: int, eff: dict[str, float]) -> tuple[float, str]:
    if tp <= 1:
        return 0.0, "no tensor parallel"
    custom = bool(gpu.nvlink_gbs) or (tp == 2 and bool(gpu.p2p))
    if custom:
        return eff["custom_allreduce_us"], ("vLLM custom all-reduce (2 GPUs with P2P, or "
                                            "NVLink; custom_all_reduce.py)")
    return eff["allreduce_us"], "NCCL (custom all-reduce needs P2P; > 2 PCIe GPUs: NCCL)"


@dataclass(frozen=True)
class DecodeSpeed:
    batch: int
    context: int
    figures: dict[str, Figure]

    @property
    def tokens_per_s(self) -> float:
        return float(self.figures["tok_s"].value)

    @property
    def tpot_ms(self) -> float:
        return float(self.figures["tpot"].value)


def decode_speed(model: ModelSpec, gpu: GPUSpec, *, batch: int, context: int, tp: int = 1,
                 pp: int = 1, dtype: str = "bfloat16", efficiency: dict[str, float] | None = None,
                 key: str = "serve.decode", kv_cache_dtype: str = "auto") -> DecodeSpeed:
    """Decode of ``batch`` requests at ``context`` tokens each, one replica of ``tp`` × ``pp``.

    With PP the batch runs as ``pp`` micro-batches (vLLM keeps one in flight per stage): a
    token crosses every stage, so a request's step is the sum over stages; the stages work on
    different micro-batches at once, so throughput counts all ``batch`` tokens per step.
    """
    eff = {**SPEED_DEFAULTS, **(efficiency or {})}
    prec = precision(dtype, kv_cache_dtype)
    b = prec.act_bytes
    wb, kb, head = prec.weight_bytes, prec.kept_bytes, model.lm_head_matmul_params
    f: dict[str, Figure] = {}
    micro = max(1, math.ceil(batch / pp))
    experts = model.expected_distinct_experts(micro)
    frac = layers_per_gpu(model, pp) / model.num_layers   # share of layers per stage
    n_read = model.matmul_params(experts if model.is_moe else None)
    f["weights_read"] = fig(f"{key}.weight_bytes", "weight bytes read per step (per GPU)", "B",
                            _weight_bytes_formula("n_read") + " * frac / tp",
                            source="roofline: every active weight read once per step; MoE: "
                                   "non-expert + E·(1−(1−k/E)^B) experts per layer",
                            note=(f"{experts:.1f} distinct experts per layer at micro-batch "
                                  f"{micro}" if model.is_moe else "")
                                 + ("; the LM head (head) stays in the model dtype"
                                    if prec.quantization else ""),
                            n_read=n_read, head=head, wb=wb, kb=kb, frac=frac, tp=tp)
    kv_tok = (2 * layers_per_gpu(model, pp) * kv_heads_per_gpu(model, tp) * model.head_dim
              * prec.kv_bytes)
    f["kv_read"] = fig(f"{key}.kv_bytes", "KV bytes read per step (per GPU)", "B",
                       "micro * context * kv_tok", micro=micro, context=context, kv_tok=kv_tok)
    f["t_bw"] = fig(f"{key}.t_bandwidth", "bandwidth time per stage step", "ms",
                    "(w + kv) / (bw * 1e9 * eff) * 1e3", source=_SPEED_SOURCE,
                    w=f["weights_read"].value, kv=f["kv_read"].value,
                    bw=gpu.bandwidth_gbs, eff=eff["decode_bw_eff"])
    if model.is_moe:
        b1 = ((model.matmul_params() - head) * wb + head * kb) * frac / tp
        f["t_moe"] = fig(f"{key}.t_moe_fixed", "MoE fixed cost per stage step", "ms",
                         "b1 / (bw * 1e9) * (1 / moe_eff - 1 / eff) * 1e3",
                         source="sized so batch 1 runs at moe_b1_eff of the roofline "
                                "(plan-facts §4 ≈0.35)",
                         b1=b1, bw=gpu.bandwidth_gbs, moe_eff=eff["moe_b1_eff"],
                         eff=eff["decode_bw_eff"])
    else:
        f["t_moe"] = fig(f"{key}.t_moe_fixed", "MoE fixed cost per stage step", "ms", value=0.0)
    tflops, peak_why = gemm_peak(gpu, prec)
    peak = tflops * 1e12
    f["t_compute"] = fig(f"{key}.t_compute", "compute time per stage step", "ms",
                         "2 * n_active * micro * frac / tp / (peak * mfu) * 1e3",
                         source=f"compute roofline at prefill_mfu of the {peak_why}",
                         n_active=model.matmul_params(), micro=micro, frac=frac, tp=tp,
                         peak=peak, mfu=eff["prefill_mfu"])
    ar_us, ar_why = _allreduce_us(gpu, tp, eff)
    msg = micro * model.hidden_size * b
    link = (gpu.nvlink_gbs or eff["pcie_gbs"]) if tp > 1 else 1.0
    f["t_comm"] = fig(f"{key}.t_allreduce", "all-reduce time per stage step", "ms",
                      "2 * layers * (lat_us * 1e-3 + msg / (link * 1e9) * 1e3)",
                      source="plan-facts §7: 2 all-reduces per layer; " + ar_why,
                      layers=layers_per_gpu(model, pp) if tp > 1 else 0, lat_us=ar_us,
                      msg=msg, link=link)
    f["t_stage"] = fig(f"{key}.t_stage", "stage step time", "ms",
                       "max(t_bw + t_moe, t_compute) + t_comm",
                       t_bw=f["t_bw"].value, t_moe=f["t_moe"].value,
                       t_compute=f["t_compute"].value, t_comm=f["t_comm"].value)
    f["tpot"] = fig(f"{key}.tpot", f"time per output token at batch {batch}", "ms",
                    "pp * t_stage + (pp - 1) * hop_us * 1e-3",
                    source="PP: a token passes every stage in turn", pp=pp,
                    t_stage=f["t_stage"].value, hop_us=eff["pp_hop_us"])
    f["tok_s"] = fig(f"{key}.tokens_per_s", f"decode tokens/s at batch {batch}", "tok/s",
                     "batch / (tpot * 1e-3)", batch=batch, tpot=f["tpot"].value)
    f["per_request"] = fig(f"{key}.per_request_tok_s", "tokens/s one request sees", "tok/s",
                           "1 / (tpot * 1e-3)", tpot=f["tpot"].value)
    return DecodeSpeed(batch=batch, context=context, figures=f)


def prefill_figures(model: ModelSpec, gpu: GPUSpec, *, prompt: int, tp: int = 1, pp: int = 1,
                    dtype: str = "bfloat16", efficiency: dict[str, float] | None = None,
                    key: str = "serve.prefill", kv_cache_dtype: str = "auto"
                    ) -> dict[str, Figure]:
    """Prefill of one ``prompt``-token request and its TTFT."""
    eff = {**SPEED_DEFAULTS, **(efficiency or {})}
    prec = precision(dtype, kv_cache_dtype)
    b = prec.act_bytes
    tflops, peak_why = gemm_peak(gpu, prec)
    f: dict[str, Figure] = {}
    n_active = model.matmul_params()
    q_width = model.num_heads * model.head_dim
    f["flops"] = fig(f"{key}.flops", f"prefill FLOPs of {prompt:,} tokens", "FLOP",
                     "prompt * (2 * n_active + 4 * layers * q_width * prompt / 2)",
                     source="2·N per token + causal attention 4·L·(nq·d)·ctx at mean ctx P/2 "
                            "(plan-facts §4)",
                     prompt=prompt, n_active=n_active, layers=model.num_layers,
                     q_width=q_width)
    experts = model.expected_distinct_experts(prompt) if model.is_moe else None
    f["t_compute"] = fig(f"{key}.t_compute", "prefill compute time", "ms",
                         "((flops - attn) / gemm_peak + attn / peak) / (tp * mfu) * 1e3",
                         source=f"compute roofline; prefill_mfu default 0.5; weight matmuls at "
                                f"the {peak_why}, attention (attn) at the BF16 peak",
                         flops=f["flops"].value, attn=prompt * 2 * model.num_layers * q_width
                         * prompt, tp=tp, gemm_peak=tflops * 1e12,
                         peak=gpu.bf16_tflops * 1e12, mfu=eff["prefill_mfu"])
    f["t_read"] = fig(f"{key}.t_read", "weight read time during prefill", "ms",
                      _weight_bytes_formula("n_read") + " / tp / (bw * 1e9 * eff) * 1e3",
                      n_read=model.matmul_params(experts), head=model.lm_head_matmul_params,
                      wb=prec.weight_bytes, kb=prec.kept_bytes, tp=tp,
                      bw=gpu.bandwidth_gbs, eff=eff["decode_bw_eff"])
    ar_us, _ = _allreduce_us(gpu, tp, eff)
    link = (gpu.nvlink_gbs or eff["pcie_gbs"]) if tp > 1 else 1.0
    f["t_comm"] = fig(f"{key}.t_allreduce", "prefill all-reduce time", "ms",
                      "2 * layers * (lat_us * 1e-3 + prompt * hidden * b / (link * 1e9) * 1e3)",
                      source="plan-facts §7: 2 all-reduces per layer of prompt·hidden values",
                      layers=model.num_layers if tp > 1 else 0, lat_us=ar_us, prompt=prompt,
                      hidden=model.hidden_size, b=b, link=link)
    f["time"] = fig(f"{key}.time", f"prefill time of {prompt:,} tokens", "ms",
                    "max(t_compute, t_read) + t_comm + (pp - 1) * hop_us * 1e-3",
                    t_compute=f["t_compute"].value, t_read=f["t_read"].value,
                    t_comm=f["t_comm"].value, pp=pp, hop_us=eff["pp_hop_us"])
    f["tok_s"] = fig(f"{key}.tokens_per_s", "prefill tokens/s", "tok/s",
                     "prompt / (time * 1e-3)", prompt=prompt, time=f["time"].value)
    f["ttft"] = fig(f"{key}.ttft", f"time to first token ({prompt:,}-token prompt)", "ms",
                    "prefill", source="the prefill forward samples the first token",
                    note="engine and HTTP overheads not included", prefill=f["time"].value)
    return f


def burst_ttft(model: ModelSpec, gpu: GPUSpec, *, prompt: int, concurrency: int,
               chunk: int, tp: int = 1, pp: int = 1, dtype: str = "bfloat16",
               efficiency: dict[str, float] | None = None,
               key: str = "serve.burst", kv_cache_dtype: str = "auto") -> dict[str, Figure]:
    """Mean TTFT when ``concurrency`` requests of ``prompt`` tokens arrive together (a closed
    loop with equal lengths starts and ends its requests in waves): vLLM's chunked prefill runs
    ``chunk`` (max_num_batched_tokens) prompt tokens per step, so request ``i`` sees its first
    token after the steps that cover prompts 0..i."""
    eff = {**SPEED_DEFAULTS, **(efficiency or {})}
    prec = precision(dtype, kv_cache_dtype)
    tflops, peak_why = gemm_peak(gpu, prec)
    f: dict[str, Figure] = {}
    q_width = model.num_heads * model.head_dim
    f["flops_per_token"] = fig(f"{key}.flops_per_token", "prefill FLOPs per prompt token",
                               "FLOP", "2 * n_active + 4 * layers * q_width * prompt / 2",
                               n_active=model.matmul_params(), layers=model.num_layers,
                               q_width=q_width, prompt=prompt)
    tokens = min(chunk, concurrency * prompt)
    experts = model.expected_distinct_experts(tokens) if model.is_moe else None
    f["t_chunk"] = fig(f"{key}.t_chunk", f"one prefill step of {tokens:,} tokens", "ms",
                       "max(tokens * ((fpt - attn) / gemm_peak + attn / peak) / (tp * mfu), "
                       + _weight_bytes_formula("n_read") + " / tp / (bw * 1e9 * eff)) * 1e3",
                       source=f"compute roofline at prefill_mfu (weight matmuls at the "
                              f"{peak_why}, attention at the BF16 peak), or the weight read",
                       tokens=tokens, fpt=f["flops_per_token"].value,
                       attn=2 * model.num_layers * q_width * prompt, tp=tp,
                       gemm_peak=tflops * 1e12, peak=gpu.bf16_tflops * 1e12,
                       mfu=eff["prefill_mfu"], n_read=model.matmul_params(experts),
                       head=model.lm_head_matmul_params, wb=prec.weight_bytes,
                       kb=prec.kept_bytes, bw=gpu.bandwidth_gbs, eff=eff["decode_bw_eff"])
    total = concurrency * prompt
    # request i's last prompt token is token (i+1)·prompt; it is done with step ceil(·/chunk)
    ends = [min(math.ceil((i + 1) * prompt / chunk) * chunk, total) for i in range(concurrency)]
    f["ttft"] = fig(f"{key}.ttft_mean",
                    f"mean TTFT, {concurrency} × {prompt:,}-token prompts at once", "ms",
                    "mean_tokens / tokens * t_chunk",
                    source="chunked prefill of max_num_batched_tokens per step (vLLM "
                           "scheduler); request i waits for the steps holding prompts 0..i",
                    note="decode tokens sharing those steps are ignored",
                    mean_tokens=sum(ends) / concurrency, tokens=tokens,
                    t_chunk=f["t_chunk"].value)
    return f


def closed_loop(model: ModelSpec, gpu: GPUSpec, *, prompt: int, output: int, concurrency: int,
                chunk: int, tp: int = 1, pp: int = 1, dtype: str = "bfloat16",
                efficiency: dict[str, float] | None = None,
                key: str = "serve.bench", kv_cache_dtype: str = "auto") -> dict[str, Figure]:
    """What ``vllm bench serve --max-concurrency C`` with fixed ``prompt``/``output`` lengths
    reports: mean TTFT (waves of C prompts), TPOT (decode at batch C, mean context
    prompt + output/2) and output tokens/s = C · output / (TTFT + (output − 1) · TPOT)."""
    f = burst_ttft(model, gpu, prompt=prompt, concurrency=concurrency, chunk=chunk, tp=tp,
                   pp=pp, dtype=dtype, efficiency=efficiency, key=f"{key}.burst",
                   kv_cache_dtype=kv_cache_dtype)
    step = decode_speed(model, gpu, batch=concurrency, context=prompt + output // 2, tp=tp,
                        pp=pp, dtype=dtype, efficiency=efficiency, key=f"{key}.decode",
                        kv_cache_dtype=kv_cache_dtype)
    f.update({f"decode.{k}": v for k, v in step.figures.items()})
    f["output_tok_s"] = fig(f"{key}.output_tokens_per_s", "output tokens/s (closed loop)",
                            "tok/s", "c * out / ((ttft + (out - 1) * tpot) * 1e-3)",
                            c=concurrency, out=output, ttft=f["ttft"].value,
                            tpot=step.tpot_ms)
    return f
