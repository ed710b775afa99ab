"""plan train: FLOPs, time, memory by component, layouts, Chinchilla, and regression tests from
the advice's errors (issue 6 §5; facts from shared/reference/plan-facts.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from homellm.errors import ConfigError
from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec, ParamCounts
from homellm.plan.train import plan_train, train_flops_per_token
from homellm.plan.train_memory import memory_plan

PRO6000 = GPUSpec("rtx-pro-6000", "RTX PRO 6000 Blackwell Workstation", memory_gib=95.6,
                  bandwidth_gbs=1792, bf16_tflops=503.8, tdp_w=600, source="plan-facts §2")
A100 = GPUSpec("a100-80g-sxm", "A100 80GB SXM", memory_gib=79.3, bandwidth_gbs=2039,
               bf16_tflops=312, tdp_w=400, source="plan-facts §2")


def llama(name: str, h: int, layers: int, heads: int, kv: int, head_dim: int, ffn: int,
          vocab: int = 50257, tied: bool = True) -> ModelSpec:
    """A Llama/Qwen3-style dense model with its parameter counts worked out here."""
    per_layer = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * ffn + 2 * h
    emb = vocab * h
    head = 0 if tied else vocab * h
    total = layers * per_layer + emb + head + h
    return ModelSpec(name, "test", "llama", h, layers, heads, kv, head_dim, ffn, vocab, tied,
                     4096, ParamCounts(total, total, emb, head))


# name → (model, nominal N, context): the plan-facts §5 sizes
SIZES = {
    "125M": (llama("125M", 768, 12, 12, 12, 64, 2048), 125e6, 1024),
    "355M": (llama("355M", 1024, 24, 16, 16, 64, 2816), 355e6, 1024),
    "1.3B": (llama("1.3B", 2048, 24, 16, 16, 128, 5632), 1.3e9, 2048),
    "3B": (llama("3B", 3072, 28, 24, 8, 128, 8192), 3e9, 2048),
}
# hours on one PRO 6000 at 40% MFU, 10B tokens (plan-facts §5 "40% of 503.8" and "+attn")
EXPECTED_H = {"125M": (10.3, 11.9), "355M": (29.4, 33.5), "1.3B": (108, 124), "3B": (248, 276)}
# what the seed advice claimed: must never come out again
WRONG_H = {"125M": 2, "355M": 6, "1.3B": 20, "3B": 48}


@dataclass(frozen=True)
class Quote:
    provider: str
    usd_per_gpu_hour: float
    date: str
    source: str


PRICES = {"rtx-pro-6000": [Quote("RunPod", 1.57, "2026-03", "deploybase")],
          "a100-80g-sxm": [Quote("Lambda", 2.79, "2026-09", "silybench: per GPU per hour")]}


def _plan(name: str, gpus: list[GPUSpec] | None = None, **kw):
    model, _, ctx = SIZES[name]
    kw.setdefault("prices", PRICES)
    kw.setdefault("electricity_usd_kwh", 0.17)
    kw.setdefault("purchase_usd", 8565.0)
    return plan_train(model, gpus or [PRO6000], tokens=10e9, context=ctx, **kw)


def _get(figs, key: str):
    return next(f for f in figs if f.key == key)


@pytest.mark.parametrize("name", list(SIZES))
def test_training_time_matches_6nd(name: str) -> None:
    """The seed advice said 1.5–2 h for 125M on 10B tokens; the truth is ~10–14 h at 40% MFU."""
    _, nominal, _ = SIZES[name]
    plan = _plan(name, mfu=0.40)
    hours = _get(plan.compute, "train.time_h").value
    simple = 6 * nominal * 10e9 / (503.8e12 * 0.40) / 3600
    assert abs(hours / simple - 1) < 0.20, (hours, simple)
    lo, hi = EXPECTED_H[name]
    assert lo * 0.95 <= hours <= hi * 1.10
    assert hours > 4 * WRONG_H[name]
    assert not plan.checkpointing   # else the recompute factor would be in the time


def test_125m_is_ten_to_fourteen_hours_not_two() -> None:
    plan = _plan("125M")          # default MFU: 40%, stated
    mfu = _get(plan.compute, "train.mfu")
    assert mfu.value == 0.40 and "40" in mfu.source and "20–40%" in mfu.note
    assert 10 <= _get(plan.compute, "train.time_h").value <= 14
    ceiling = _get(plan.compute, "train.time_h_matmul")    # 40% of the measured 368 TFLOPS
    assert 12.5 <= ceiling.value <= 17


def test_more_gpus_divide_the_time_and_mfu_scales_it() -> None:
    one = _get(_plan("355M", mfu=0.4).compute, "train.time_h").value
    two = _get(_plan("355M", [PRO6000, PRO6000], mfu=0.4).compute, "train.time_h").value
    low = _get(_plan("355M", mfu=0.2).compute, "train.time_h").value
    assert two == pytest.approx(one / 2)
    assert low == pytest.approx(one * 2)


def test_flops_per_token_counts_the_lm_head_once_and_the_doc_length() -> None:
    tied = llama("t", 768, 12, 12, 12, 64, 2048, tied=True)
    untied = llama("u", 768, 12, 12, 12, 64, 2048, tied=False)
    n_t, _, per_t, _ = train_flops_per_token(tied, 1024)
    n_u, _, _, _ = train_flops_per_token(untied, 1024)
    assert n_t.value == n_u.value == tied.params.total   # untied: input embedding not counted
    assert per_t.value == 6 * n_t.value + 12 * 12 * 12 * 64 * 1024
    # document masking: a token attends only its document
    _, t, masked, share = train_flops_per_token(tied, 8192, doc_len=512)
    assert t.value == 512
    assert masked.value == 6 * n_t.value + 12 * 12 * 12 * 64 * 512
    assert 0 < share.value < 0.1


def test_every_figure_checks() -> None:
    for name in SIZES:
        for gpus in ([PRO6000], [PRO6000, PRO6000]):
            plan = _plan(name, gpus)
            figs = plan.figures()
            assert figs and all(f.check() for f in figs), [f.key for f in figs if not f.check()]
            assert plan.to_json()["compute"]


def test_fsdp2_needs_less_memory_per_gpu_than_ddp_on_two_gpus() -> None:
    for name in SIZES:
        plan = _plan(name, [PRO6000, PRO6000], micro_batch=2)
        by = {(m.strategy, m.checkpointing): m.total.value for m in plan.layouts}
        assert by[("fsdp2", False)] < by[("ddp", False)]
        assert by[("fsdp2", True)] < by[("ddp", True)]
        assert by[("ddp", True)] < by[("ddp", False)]     # checkpointing saves activations


def test_3b_model_states_are_48_gb_plus_activations() -> None:
    model = SIZES["3B"][0]
    m = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=2048, micro_batch=1,
                    checkpointing=False)
    states = sum(f.value for f in m.components
                 if f.key.rsplit(".", 1)[1] in ("weights", "grads", "master", "optimizer"))
    assert states * 2**30 / 1e9 == pytest.approx(16 * 2.97e9 / 1e9, rel=0.03)   # ≈ 48 GB
    act = _get(m.components, "train.mem.single.activations").value
    assert act > 0 and m.total.value > states + act
    assert m.fits
    # the same 16 bytes/param with bf16 weights and an fp32 master copy
    bm = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=2048, micro_batch=1,
                     checkpointing=False, precision="bf16-master")
    assert sum(f.value for f in bm.components if f.key.rsplit(".", 1)[1] in
               ("weights", "grads", "master", "optimizer")) == pytest.approx(states)


def test_on_cpu_the_estimate_has_no_cuda_context_or_nccl() -> None:
    from homellm.train.preflight import describe_memory, preflight_memory
    from homellm.train.runconfig import parse_run_config

    model = SIZES["3B"][0]
    kw = {"strategy": "ddp", "n_gpus": 2, "seq": 2048, "micro_batch": 1, "checkpointing": True}
    cuda, cpu = memory_plan(model, 95.6, **kw), memory_plan(model, 95.6, device="cpu", **kw)
    assert "CUDA context" in _get(cuda.components, "train.mem.ddp.ac.overhead").label
    cpu_text = " ".join(f"{f.label} {f.note or ''}" for f in cpu.figures())
    assert "CUDA context, " not in cpu_text and "runtime (CPU)" in cpu_text
    assert (cpu.total.label, cpu.capacity.label) == ("total per process", "usable RAM")
    assert cpu.total.value < cuda.total.value and all(f.check() for f in cpu.figures())
    config = parse_run_config("model: 125M\ntokenizer: tok\ndataset: shards\nout: runs/a\n"
                              "tokens: 1000000\n", "run.yaml")
    line = describe_memory(preflight_memory(config, 64, 1, vocab_size=32000, device="cpu"))
    assert line.startswith("memory per process (single")
    assert "CUDA" not in line and "NCCL" not in line and "runtime (CPU)" in line
    with pytest.raises(ConfigError, match=r"per process > .*\(single, 1 process\)"):
        preflight_memory(config, 0.5, 1, vocab_size=32000, device="cpu")


def test_largest_micro_batch_fits_and_one_more_does_not() -> None:
    model = SIZES["1.3B"][0]
    for ac in (False, True):
        m = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=2048, micro_batch=1,
                        checkpointing=ac)
        best = int(m.max_micro_batch.value)
        assert best >= 1
        kw = {"strategy": "single", "n_gpus": 1, "seq": 2048, "checkpointing": ac}
        assert memory_plan(model, 95.6, micro_batch=best, **kw).fits
        assert not memory_plan(model, 95.6, micro_batch=best + 1, **kw).fits


def test_activation_formula_and_checkpointing() -> None:
    model = SIZES["125M"][0]
    no = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=1024, micro_batch=4,
                     checkpointing=False)
    act = _get(no.components, "train.mem.single.activations")
    h, f, s, b, L = 768, 2048, 1024, 4, 12
    per_layer = s * b * (8 * h + 4 * h + 4 * h + 8 * f + 4 * 12)
    assert act.value * 2**30 == pytest.approx(L * per_layer + 4 * s * b * h)
    logits = _get(no.components, "train.mem.single.logits")
    assert logits.value * 2**30 == pytest.approx(b * s * 50257 * 8)
    ac = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=1024, micro_batch=4,
                     checkpointing=True)
    assert _get(ac.components, "train.mem.single.ac.activations").value < act.value / 4
    chunked = memory_plan(model, 95.6, strategy="single", n_gpus=1, seq=1024, micro_batch=4,
                          checkpointing=False, chunked_ce=True)
    assert _get(chunked.components, "train.mem.single.logits").value == pytest.approx(
        logits.value)   # 4096 tokens: one chunk is the whole micro-batch


def test_long_context_needs_checkpointing_and_charges_the_recompute() -> None:
    model = SIZES["1.3B"][0]
    plan = plan_train(model, [PRO6000], tokens=1e9, context=65536, chunked_ce=True,
                      prices={}, electricity_usd_kwh=0.17)
    assert plan.fits and plan.checkpointing and plan.micro_batch >= 1
    assert _get(plan.compute, "train.recompute").value == pytest.approx(4 / 3)
    # a measured MFU already includes the recompute
    measured = plan_train(model, [PRO6000], tokens=1e9, context=65536, chunked_ce=True,
                          mfu=0.3, prices={}, electricity_usd_kwh=0.17)
    assert _get(measured.compute, "train.recompute").value == 1.0
    assert _get(measured.compute, "train.mfu").source.startswith("given")


def test_auto_prefers_ddp_and_falls_back_to_fsdp2() -> None:
    small = _plan("125M", [PRO6000, PRO6000])
    assert small.strategy == "ddp" and not small.checkpointing
    # 3B on two 24 GiB cards: DDP's 16 B/param replicas cannot fit; FSDP2 shards them
    small_gpu = GPUSpec("rtx-4090", "RTX 4090", 23.5, 1008, 165.2, tdp_w=450)
    plan = _plan("3B", [small_gpu] * 4, micro_batch=1)
    ddp = next(m for m in plan.layouts if m.strategy == "ddp" and m.checkpointing)
    assert not ddp.fits
    assert plan.strategy == "fsdp2" and plan.fits
    too_big = _plan("3B", [small_gpu])
    assert not too_big.fits and any("does not fit" in n for n in too_big.notes)


def test_chinchilla_tokens_and_notes() -> None:
    expected = {"125M": 2.5e9, "355M": 7.1e9, "1.3B": 26e9, "3B": 60e9}   # plan-facts §5
    for name, tokens in expected.items():
        plan = _plan(name)
        assert _get(plan.data, "train.chinchilla_tokens").value == pytest.approx(tokens, rel=0.1)
    assert any("undertrained" in n for n in _plan("3B").notes)
    assert any("Chinchilla-optimal" in n for n in _plan("125M").notes)   # 4× over


def test_cost_of_an_eight_gpu_cloud_job_is_per_gpu_hour_times_gpus() -> None:
    plan = _plan("1.3B", [A100] * 8, purchase_usd=None)
    hours = _get(plan.compute, "train.time_h").value
    lam = next(c for c in plan.cost.cloud if c.provider == "Lambda")
    assert lam.cost.value == pytest.approx(2.79 * 8 * hours)
    assert lam.hours.value == pytest.approx(hours)


def test_cloud_gpus_are_timed_at_their_own_peak() -> None:
    plan = _plan("355M", cloud_gpus=[PRO6000, A100], mfu=0.4)
    own = _get(plan.compute, "train.time_h").value
    a100 = next(c for c in plan.cost.cloud if c.gpu_key == "a100-80g-sxm")
    assert a100.hours.value == pytest.approx(own * 503.8 / 312)
    assert plan.cost.verdict and plan.cost.break_even


def test_bad_arguments() -> None:
    model = SIZES["125M"][0]
    with pytest.raises(ConfigError):
        plan_train(model, [], tokens=1e9, context=1024)
    with pytest.raises(ConfigError):
        plan_train(model, [PRO6000], tokens=1e9, context=1024, mfu=40)
    with pytest.raises(ConfigError, match="strategy"):
        plan_train(model, [PRO6000, PRO6000], tokens=1e9, context=1024, strategy="zero3")
    with pytest.raises(ConfigError):
        memory_plan(model, 95.6, strategy="zero3", n_gpus=1, seq=1, micro_batch=1,
                    checkpointing=False)


def test_sliding_window_layers_attend_at_most_the_window() -> None:
    import dataclasses

    base = SIZES["125M"][0]
    if "sliding_window_layers" not in {f.name for f in dataclasses.fields(base)}:
        pytest.skip("ModelSpec has no sliding_window_layers yet")
    sw = dataclasses.replace(base, sliding_window=512, sliding_window_layers=6)
    _, _, per, share = train_flops_per_token(sw, 4096)
    assert per.value == 6 * base.params.total + 12 * 12 * 64 * (6 * 4096 + 6 * 512)
    assert per.check() and share.check()
