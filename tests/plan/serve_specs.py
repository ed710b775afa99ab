"""Literal model and GPU specs from /work/shared/reference/plan-facts.md (§1, §2), built directly
so the serve tests do not depend on the catalogs."""

from __future__ import annotations

from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec, ParamCounts

# Qwen3-30B-A3B: 48 layers, 32/4 heads, head_dim 128, 128 experts top-8, moe_inter 768
QWEN3_30B_A3B = ModelSpec(
    name="Qwen3-30B-A3B", source="plan-facts §1", model_type="qwen3_moe", hidden_size=2048,
    num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128, intermediate_size=6144,
    vocab_size=151936, tie_embeddings=False, max_position_embeddings=40960,
    params=ParamCounts(total=30_532_134_912, active=3_353_044_992, embedding=311_164_928,
                       lm_head=311_164_928, routed_experts=48 * 128 * 3 * 2048 * 768),
    num_experts=128, experts_per_token=8, moe_intermediate_size=768, moe_layers=48)
LLAMA3_8B = ModelSpec(
    name="Llama-3-8B", source="plan-facts §1", model_type="llama", hidden_size=4096,
    num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
    vocab_size=128256, tie_embeddings=False, max_position_embeddings=8192,
    params=ParamCounts(total=8_030_261_248, active=8_030_261_248, embedding=525_336_576,
                       lm_head=525_336_576))
LLAMA31_70B = ModelSpec(
    name="Llama-3.1-70B", source="plan-facts §1", model_type="llama", hidden_size=8192,
    num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=28672,
    vocab_size=128256, tie_embeddings=False, max_position_embeddings=131072,
    params=ParamCounts(total=70_553_706_496, active=70_553_706_496,
                       embedding=1_050_673_152, lm_head=1_050_673_152))
QWEN3_32B = ModelSpec(
    name="Qwen3-32B", source="plan-facts §1", model_type="qwen3", hidden_size=5120,
    num_layers=64, num_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=25600,
    vocab_size=151936, tie_embeddings=False, max_position_embeddings=40960,
    params=ParamCounts(total=32_762_123_264, active=32_762_123_264, embedding=777_912_320,
                       lm_head=777_912_320))

PRO_6000 = GPUSpec("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
                   memory_gib=95.6, bandwidth_gbs=1792, bf16_tflops=503.8, fp8_tflops=1008,
                   pcie_gen=5, p2p=True)
# total_gpu_memory as vLLM logged it: 79.22 GiB (vLLM #10511); 39.5 GiB = 35.55 / 0.9 (#12330)
H100_SXM = GPUSpec("h100-sxm", "NVIDIA H100 80GB HBM3", memory_gib=79.22, bandwidth_gbs=3350,
                   bf16_tflops=989, fp8_tflops=1979, pcie_gen=5, nvlink_gbs=900)
A100_40GB = GPUSpec("a100-40gb", "NVIDIA A100-SXM4-40GB", memory_gib=39.5, bandwidth_gbs=1555,
                    bf16_tflops=312, pcie_gen=4, nvlink_gbs=600)
A100_80GB = GPUSpec("a100-80gb", "NVIDIA A100-SXM4-80GB", memory_gib=79.2, bandwidth_gbs=2039,
                    bf16_tflops=312, pcie_gen=4, nvlink_gbs=600)
