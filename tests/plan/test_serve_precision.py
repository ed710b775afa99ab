"""plan serve (issue 13 §3): --dtype fp8 as vLLM 0.33 runs it (weights quantized while loading,
the embedding, LM head and norms kept in bf16) and an fp8 KV cache (half the bytes a token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from homellm.config import load_stack, parse_stack
from homellm.errors import ConfigError
from homellm.hardware import find_gpu
from homellm.modelspec import model_spec_from_config
from homellm.plan.serve import plan_serve
from homellm.plan.serve_memory import BLOCK_SIZE, kept_params, plan_memory
from homellm.plan.serve_speed import decode_speed, prefill_figures
from homellm.plan.stackfile import render_stack
from tests.plan.serve_specs import LLAMA3_8B, PRO_6000, QWEN3_30B_A3B
from tests.plan.test_cli_plan import homellm

GIB = 1024**3
A100 = find_gpu("a100-80g")


@pytest.mark.parametrize("model", [QWEN3_30B_A3B, LLAMA3_8B], ids=lambda m: m.name)
def test_fp8_weights_take_one_byte_except_the_layers_vllm_keeps_in_bf16(model) -> None:
    bf16 = plan_memory(model, PRO_6000, context=8192)
    fp8 = plan_memory(model, PRO_6000, context=8192, dtype="fp8")
    kept = model.params.embedding + model.params.lm_head + model.norm_params
    assert kept_params(model) == kept
    # half of bf16, plus one more byte for each weight that stays bf16
    assert fp8.figures["weights"].value == pytest.approx(
        bf16.figures["weights"].value / 2 + kept / GIB, rel=1e-12)
    assert fp8.figures["weights"].value < 0.6 * bf16.figures["weights"].value
    assert fp8.figures["weights"].check() and "LM head" in fp8.figures["weights"].note
    assert fp8.kv_tokens > bf16.kv_tokens       # the freed GiB go to the KV cache
    # the activations and the KV cache stay bf16 unless asked
    assert fp8.figures["kv_per_token"].value == bf16.figures["kv_per_token"].value
    assert fp8.figures["activation"].value == bf16.figures["activation"].value


def test_fp8_kv_cache_halves_bytes_per_token_and_doubles_tokens() -> None:
    auto = plan_memory(QWEN3_30B_A3B, PRO_6000, context=32768)
    fp8 = plan_memory(QWEN3_30B_A3B, PRO_6000, context=32768, kv_cache_dtype="fp8")
    assert fp8.figures["kv_per_token"].value == auto.figures["kv_per_token"].value / 2
    assert fp8.figures["kv_cache"].value == auto.figures["kv_cache"].value   # same GiB
    assert 0 <= fp8.kv_tokens - 2 * auto.kv_tokens <= BLOCK_SIZE              # block rounding
    assert fp8.concurrent_at_context == pytest.approx(2 * auto.concurrent_at_context,
                                                      abs=BLOCK_SIZE / 32768)
    with pytest.raises(ConfigError, match="--kv-cache-dtype"):
        plan_memory(QWEN3_30B_A3B, PRO_6000, kv_cache_dtype="fp4")
    with pytest.raises(ConfigError, match="--dtype"):
        plan_memory(QWEN3_30B_A3B, PRO_6000, dtype="fp6")


def test_fp8_speed_reads_fp8_bytes_and_uses_fp8_tflops_where_the_gpu_has_them() -> None:
    bf16 = decode_speed(LLAMA3_8B, PRO_6000, batch=1, context=1024)
    fp8 = decode_speed(LLAMA3_8B, PRO_6000, batch=1, context=1024, dtype="fp8")
    head = LLAMA3_8B.lm_head_matmul_params
    assert fp8.figures["weights_read"].value == pytest.approx(
        bf16.figures["weights_read"].value / 2 + head, rel=1e-12)
    assert fp8.tokens_per_s > 1.5 * bf16.tokens_per_s
    assert fp8.figures["t_compute"].inputs["peak"] == PRO_6000.fp8_tflops * 1e12
    kv8 = decode_speed(LLAMA3_8B, PRO_6000, batch=1, context=1024, kv_cache_dtype="fp8")
    assert kv8.figures["kv_read"].value == bf16.figures["kv_read"].value / 2
    pre = prefill_figures(LLAMA3_8B, PRO_6000, prompt=2048, dtype="fp8")
    assert pre["t_compute"].inputs["gemm_peak"] == PRO_6000.fp8_tflops * 1e12
    assert pre["t_compute"].inputs["peak"] == PRO_6000.bf16_tflops * 1e12   # attention
    # an A100 has no FP8 tensor cores: vLLM's Marlin W8A16 reads 1 byte, computes in bf16
    marlin = prefill_figures(LLAMA3_8B, A100, prompt=2048, dtype="fp8")
    assert marlin["t_compute"].inputs["gemm_peak"] == A100.bf16_tflops * 1e12
    assert "Marlin" in marlin["t_compute"].source
    for figure in [*fp8.figures.values(), *kv8.figures.values(), *pre.values(),
                   *marlin.values()]:
        assert figure.check(), figure.key


def test_fp8_flags_and_stack_file_carry_quantization_and_kv_cache_dtype(tmp_path: Path) -> None:
    plan = plan_serve(QWEN3_30B_A3B, [PRO_6000] * 2, context=32768, concurrency=4,
                      dtype="fp8", kv_cache_dtype="fp8")
    for layout in plan.layouts.values():
        flags = layout.flags
        assert flags[flags.index("--dtype") + 1] == "bfloat16"
        assert flags[flags.index("--quantization") + 1] == "fp8_per_tensor"
        assert flags[flags.index("--kv-cache-dtype") + 1] == "fp8"
    assert any("fp8_per_tensor" in note for note in plan.notes)
    assert plan.to_json()["quantization"] == "fp8_per_tensor"
    stack = parse_stack(render_stack(plan, source="Qwen/Qwen3-30B-A3B"))
    model = stack.models["qwen3-30b-a3b"]
    assert model.dtype == "bfloat16"
    assert model.engine_args["quantization"] == "fp8_per_tensor"
    assert model.engine_args["kv_cache_dtype"] == "fp8"
    from homellm.engines.registry import resolve_stack

    argv = resolve_stack(stack)[0].argv           # the command vLLM gets from the stack file
    assert argv[argv.index("--quantization") + 1] == "fp8_per_tensor"
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    # bf16 plans keep their flags as they were
    plain = plan_serve(QWEN3_30B_A3B, [PRO_6000], context=32768, concurrency=1,
                       dtype="bfloat16")
    assert "--quantization" not in plain.layouts["replicas"].flags
    assert "--kv-cache-dtype" not in plain.layouts["replicas"].flags


def test_fp8_on_a_gpu_without_fp8_says_marlin() -> None:
    plan = plan_serve(LLAMA3_8B, [A100], context=8192, concurrency=1, dtype="fp8")
    assert any("Marlin" in note and A100.name in note for note in plan.notes)


def test_cli_fp8_plans_and_writes(tmp_path: Path) -> None:
    target = tmp_path / "homellm.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
                   "32768", "--dtype", "fp8", "--kv-cache-dtype", "fp8", "--write",
                   str(target), home=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--quantization fp8_per_tensor --kv-cache-dtype fp8" in done.stdout
    (model,) = load_stack(target, check_sources=False).models.values()
    assert model.dtype == "bfloat16"
    assert model.engine_args["quantization"] == "fp8_per_tensor"
    assert model.engine_args["kv_cache_dtype"] == "fp8"


@pytest.mark.parametrize("config", [
    {"model_type": "qwen3", "head_dim": 64},
    {"model_type": "qwen3_moe", "head_dim": 64, "moe_intermediate_size": 128, "num_experts": 8,
     "num_experts_per_tok": 2},
    {"model_type": "llama"},
    {"model_type": "gemma2", "head_dim": 64},
], ids=lambda c: c["model_type"])
def test_norm_params_match_transformers(config: dict) -> None:
    """The weights fp8 keeps in bf16 include the norms: counted as transformers builds them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = {"hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
              "max_position_embeddings": 4096, **config}
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**config))
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    assert model_spec_from_config(config).norm_params == norms


def test_fp8_flags_are_in_vllms_recorded_help() -> None:
    """Every flag the fp8 plan emits is in vLLM 0.33.0's ``serve --help=all`` (recorded), and
    fp8 is one of its --kv-cache-dtype choices; the slow test runs vLLM's own parser."""
    recorded = Path(__file__).resolve().parents[1] / "engines" / "data" / \
        "vllm-0.33.0-serve-help-all.txt"
    text = recorded.read_text("utf-8")
    plan = plan_serve(QWEN3_30B_A3B, [PRO_6000] * 2, context=32768, concurrency=4,
                      dtype="fp8", kv_cache_dtype="fp8")
    for layout in plan.layouts.values():
        for flag in (a for a in layout.flags if a.startswith("--")):
            assert f"  {flag} " in text, flag
    choices = next(line for line in text.splitlines() if line.startswith("  --kv-cache-dtype "))
    assert "'fp8'" in choices
