"""plan serve (issue 6 §2): memory as vLLM budgets it, layouts, speed, stack file."""

from __future__ import annotations

from pathlib import Path

import pytest

from homellm.config import load_stack, parse_stack
from homellm.errors import ConfigError
from homellm.plan.serve import plan_serve
from homellm.plan.serve_memory import plan_memory
from homellm.plan.serve_speed import decode_speed, efficiency_defaults
from homellm.plan.stackfile import render_stack, write_stack
from tests.plan.serve_specs import (
    LLAMA3_8B,
    LLAMA31_70B,
    PRO_6000,
    QWEN3_30B_A3B,
    QWEN3_32B,
)

GIB = 1024**3
TWO_PRO = [PRO_6000, PRO_6000]


def test_kv_bytes_per_token_qwen3_30b_is_96_kib() -> None:
    mem = plan_memory(QWEN3_30B_A3B, PRO_6000)
    assert mem.figures["kv_per_token"].value == 96 * 1024
    # TP=2 splits the 4 KV heads; TP=8 would replicate them (4 < 8): one head per rank
    assert plan_memory(QWEN3_30B_A3B, PRO_6000, tp=2).figures["kv_per_token"].value == 48 * 1024
    assert plan_memory(QWEN3_30B_A3B, PRO_6000, tp=8).figures["kv_per_token"].value == 24 * 1024


def test_qwen3_30b_on_one_pro_6000_leaves_22_to_26_gib_kv() -> None:
    mem = plan_memory(QWEN3_30B_A3B, PRO_6000)
    assert 22 <= mem.kv_gib <= 26
    assert 240_000 <= mem.kv_tokens <= 290_000
    assert mem.fits and mem.max_context == 40960
    assert mem.kv_tokens % 16 == 0


def test_llama_70b_bf16_needs_tp2_on_two_pro_6000() -> None:
    plan = plan_serve(LLAMA31_70B, TWO_PRO, context=32768, concurrency=4, dtype="bfloat16")
    assert not plan.layouts["replicas"].fits
    assert "CUDA out of memory" in plan.layouts["replicas"].memory.error
    assert plan.recommended == "tp"
    assert plan.chosen is not None and plan.chosen.flags[:2] == ["--tensor-parallel-size", "2"]
    assert "does not fit on one GPU" in plan.reason


def test_small_model_gets_replicas_and_big_kv_need_gets_tp() -> None:
    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=None, concurrency=8, dtype="bfloat16")
    assert plan.recommended == "replicas"
    assert "Expert parallel is not offered" in plan.reason
    starved = plan_serve(QWEN3_32B, TWO_PRO, context=40960, concurrency=16, dtype="bfloat16")
    assert starved.layouts["replicas"].fits
    assert starved.recommended == "tp" and "KV-starved" in starved.reason


def test_context_too_long_gives_vllm_style_message_and_the_length_that_fits() -> None:
    mem = plan_memory(QWEN3_32B, PRO_6000, context=400_000)
    assert not mem.fits
    assert mem.error.startswith("To serve at least one request with the model's max seq len "
                                "(400000)")
    assert f"estimated maximum model length is {mem.kv_tokens}" in mem.error
    assert any("max_position_embeddings" in n for n in mem.notes)


def test_no_room_for_cache_blocks() -> None:
    mem = plan_memory(QWEN3_32B, PRO_6000, gpu_memory_utilization=0.65)
    assert not mem.fits and mem.error.startswith("No available memory for the cache blocks")


def test_every_figure_reevaluates_to_its_value() -> None:
    for model, ctx in ((QWEN3_30B_A3B, None), (LLAMA31_70B, 32768), (LLAMA3_8B, 8192)):
        plan = plan_serve(model, TWO_PRO, context=ctx, concurrency=10, dtype="bfloat16")
        figures = plan.figures()
        assert figures and all(f.check() for f in figures), [
            f.key for f in figures if not f.check()]
        assert all(f.explain() for f in figures)


def test_moe_decode_batch1_runs_at_moe_b1_eff_and_batch_reads_more_experts() -> None:
    eff = efficiency_defaults()
    one = decode_speed(QWEN3_30B_A3B, PRO_6000, batch=1, context=1)
    w = one.figures["weights_read"].value
    roofline_ms = w / (PRO_6000.bandwidth_gbs * 1e9) * 1e3
    assert one.figures["t_bw"].value + one.figures["t_moe"].value == pytest.approx(
        roofline_ms / eff["moe_b1_eff"], rel=1e-3)
    big = decode_speed(QWEN3_30B_A3B, PRO_6000, batch=64, context=1)
    assert big.figures["weights_read"].value > 8 * w       # ≈ all 128 experts at B = 64
    assert big.tokens_per_s > 10 * one.tokens_per_s


def test_tp2_over_pcie_pays_all_reduce_per_layer() -> None:
    tp = decode_speed(QWEN3_30B_A3B, PRO_6000, batch=1, context=1, tp=2)
    # 2 all-reduces × 48 layers × 7 µs (custom all-reduce with P2P) ≈ 0.67 ms + payload
    assert 0.6 < tp.figures["t_comm"].value < 1.0
    nccl = decode_speed(QWEN3_30B_A3B, PRO_6000, batch=1, context=1, tp=2,
                        efficiency={"custom_allreduce_us": 20.0})
    assert nccl.figures["t_comm"].value > 1.9


def test_efficiency_overrides_are_used_and_unknown_keys_refused() -> None:
    base = plan_serve(LLAMA3_8B, [PRO_6000], context=8192, concurrency=1, dtype="bfloat16")
    fast = plan_serve(LLAMA3_8B, [PRO_6000], context=8192, concurrency=1, dtype="bfloat16",
                      efficiency={"decode_bw_eff": 0.9})
    assert fast.layouts["replicas"].decode_b1.tokens_per_s > \
        base.layouts["replicas"].decode_b1.tokens_per_s
    with pytest.raises(ConfigError, match="unknown key"):
        plan_serve(LLAMA3_8B, [PRO_6000], context=8192, concurrency=1, dtype="bfloat16",
                   efficiency={"decode_eff": 0.9})
    with pytest.raises(ConfigError, match="--dtype"):
        plan_serve(LLAMA3_8B, [PRO_6000], context=8192, concurrency=1, dtype="fp6")


def test_flags_are_vllm_flags_only() -> None:
    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=32768, concurrency=4, dtype="bfloat16")
    allowed = {"--tensor-parallel-size", "--pipeline-parallel-size", "--max-model-len",
               "--gpu-memory-utilization", "--dtype"}
    for layout in plan.layouts.values():
        assert {a for a in layout.flags if a.startswith("--")} <= allowed
    assert plan.layouts["pp"].flags[:2] == ["--pipeline-parallel-size", "2"]


@pytest.mark.parametrize("mode", ["active-active", "active-standby"])
def test_stack_file_for_replicas_parses(mode: str) -> None:
    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=32768, concurrency=4, dtype="bfloat16")
    stack = parse_stack(render_stack(plan, source="Qwen/Qwen3-30B-A3B", mode=mode))  # type: ignore[arg-type]
    model = stack.models["qwen3-30b-a3b"]
    assert model.engine == "vllm" and model.max_context == 32768
    assert [r.gpus for r in model.replicas] == [[0], [1]]
    roles = [r.role for r in model.replicas]
    assert roles == (["primary", "primary"] if mode == "active-active" else ["primary", "backup"])


def test_stack_file_for_tp_and_pp(tmp_path: Path) -> None:
    plan = plan_serve(LLAMA31_70B, TWO_PRO, context=32768, concurrency=4, dtype="bfloat16")
    path = write_stack(tmp_path / "homellm.yaml", plan, source="meta-llama/Llama-3.1-70B")
    stack = load_stack(path, check_sources=False)
    (model,) = stack.models.values()
    assert [r.gpus for r in model.replicas] == [[0, 1]]
    assert model.engine_args["gpu_memory_utilization"] == 0.9
    with pytest.raises(ConfigError, match="already exists"):
        write_stack(path, plan, source="meta-llama/Llama-3.1-70B")
    pp = parse_stack(render_stack(plan, source="meta-llama/Llama-3.1-70B", layout="pp"))
    args = pp.models["llama-3.1-70b"].engine_args
    assert args["pipeline_parallel_size"] == 2 and "tensor_parallel_size" not in args
    from homellm.engines.registry import resolve_stack

    (spec,) = resolve_stack(pp)  # the command vLLM gets: PP 2 over both GPUs, no TP flag
    assert spec.argv[spec.argv.index("--pipeline-parallel-size") + 1] == "2"
    assert "--tensor-parallel-size" not in spec.argv


def test_nothing_fits_refuses_to_write() -> None:
    plan = plan_serve(LLAMA31_70B, [PRO_6000], context=8192, concurrency=1, dtype="float32")
    assert plan.recommended is None and "No layout fits" in plan.reason
    with pytest.raises(ConfigError, match="nothing to write"):
        render_stack(plan, source="meta-llama/Llama-3.1-70B")
