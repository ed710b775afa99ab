"""`homellm plan` as users run it (the real CLI in its own process), and the calibrate loop:
a measurement in, a stored factor out, the next plan predicting that measurement and citing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homellm.config import load_stack
from homellm.hardware import find_gpu
from homellm.models_catalog import resolve_model
from homellm.plan.calibration import bisect, fit_bench_result, load_calibration
from homellm.plan.figures import Figure

HOMELLM = [sys.executable, "-m", "homellm.cli"]


def homellm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOMELLM_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*HOMELLM, *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def all_figures(data: object) -> list[dict]:
    """Every figure object anywhere in a plan's JSON."""
    found = []
    if isinstance(data, dict):
        if {"key", "formula", "inputs", "value"} <= set(data):
            found.append(data)
        for value in data.values():
            found += all_figures(value)
    elif isinstance(data, list):
        for value in data:
            found += all_figures(value)
    return found


def test_plan_serve_json_explain_and_write(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000",
                   "--context", "32768", "--concurrency", "8", "--json", "--write", str(stack),
                   home=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["recommended"] == "replicas"
    figures = all_figures(plan)
    assert len(figures) > 20
    for f in figures:  # every printed number can say how it was computed
        assert Figure(f["key"], f["label"], f["value"], f["unit"], f["formula"],
                      f["inputs"]).check(), f["key"]
    loaded = load_stack(stack, check_sources=False)
    replicas = loaded.models[next(iter(loaded.models))].replicas
    assert [(r.gpus, r.role) for r in replicas] == [([0], "primary"), ([1], "primary")]
    again = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--write",
                    str(stack), home=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stdout + again.stderr
    standby = tmp_path / "standby.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--write",
                   str(standby), "--standby", home=tmp_path)
    assert done.returncode == 0, done.stderr
    replicas = load_stack(standby, check_sources=False).models["qwen3-30b-a3b"].replicas
    assert [r.role for r in replicas] == ["primary", "backup"]
    explained = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "rtx-pro-6000",
                        "--explain", home=tmp_path)
    assert explained.returncode == 0, explained.stderr
    text = explained.stdout
    assert "KV cache per token (per GPU) = 98,304 B" in text  # 2·48·4·128·2 bytes
    assert "= 2 * layers * kv_heads * head_dim * b" in text
    assert "layers=48, kv_heads=4, head_dim=128, b=2" in text
    assert "source: vLLM" in text


def test_plan_serve_writes_the_layout_asked_for(tmp_path: Path) -> None:
    """--layout tp --write writes one TP=2 replica (not the recommended two replicas), which
    check accepts; a layout that does not exist, or --layout without --write, is refused."""
    stack = tmp_path / "tp.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
                   "131072", "--write", str(stack), "--layout", "tp", home=tmp_path)
    assert done.returncode == 0, done.stderr
    (replica,) = load_stack(stack, check_sources=False).models["qwen3-30b-a3b"].replicas
    assert replica.gpus == [0, 1]
    checked = homellm("check", "-c", str(stack), "--json", home=tmp_path)
    assert checked.returncode == 0, checked.stderr
    argv = json.loads(checked.stdout)["replicas"][0]["command"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    for bad in (("--layout", "tpx", "--write", str(tmp_path / "x.yaml")), ("--layout", "tp")):
        refused = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", *bad,
                          home=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "--layout" in refused.stdout + refused.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_plan_serve_says_what_does_not_fit(tmp_path: Path) -> None:
    done = homellm("plan", "serve", "llama-3.1-70b", "--gpus", "rtx-pro-6000", home=tmp_path)
    assert done.returncode == 1  # the plan ran; its answer is no (issue 13)
    assert "No layout fits" in done.stdout and "131.42 GiB" in done.stdout


def test_plan_train_regression_and_errors(tmp_path: Path) -> None:
    done = homellm("plan", "train", "125M", "--tokens", "10B", "--gpus", "rtx-pro-6000",
                   "--context", "1024", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    hours = next(f["value"] for f in plan["compute"] if f["key"] == "train.time_h")
    assert 10 <= hours <= 14  # the advice said 1.5-2 h; 6·N·D at 40 % MFU says otherwise
    bad = homellm("plan", "train", "125M", "--gpus", "rtx-9999", home=tmp_path)
    assert bad.returncode == 2 and "--gpu-spec" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    custom = homellm("plan", "train", "125M", "--gpus", "2", "--gpu-spec",
                     "mem=96,bw=1792,bf16=503.8", "--json", home=tmp_path)
    assert custom.returncode == 0, custom.stderr
    assert json.loads(custom.stdout)["gpus"] == ["custom", "custom"]
    tokens = homellm("plan", "train", "125M", "--tokens", "lots", "--gpus", "h100",
                     home=tmp_path)
    assert tokens.returncode == 2 and "--tokens" in tokens.stdout + tokens.stderr


# -- calibration -------------------------------------------------------------------------------

# vLLM PR #23151: Qwen3-30B-A3B BF16 on one H100 SXM, 2048 in / 1024 out, concurrency 10
PUBLISHED = {"max_concurrency": 10, "input_lens": [2048] * 10, "output_lens": [1024] * 10,
             "median_tpot_ms": 13.2, "mean_ttft_ms": 267.0}


def test_bisect_meets_the_target() -> None:
    assert bisect(lambda x: 10.0 / x, 20.0) == pytest.approx(0.5, rel=1e-9)
    assert bisect(lambda x: 10.0 / x, 1e-9) == 2.0  # out of reach: clamped, not invented


def test_calibrate_then_plan_predicts_the_measurement(tmp_path: Path) -> None:
    model, gpu = resolve_model("qwen3-30b-a3b"), find_gpu("h100-sxm")
    fits = fit_bench_result(PUBLISHED, "pr23151.json", model, gpu)
    assert [f.factor for f in fits] == ["decode_bw_eff"]  # TTFT at concurrency 10 is queueing
    result = tmp_path / "pr23151.json"
    result.write_text(json.dumps(PUBLISHED))
    done = homellm("plan", "calibrate", str(result), "--model", "qwen3-30b-a3b", "--gpus",
                   "h100-sxm", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = json.loads((tmp_path / "plan" / "calibration.json").read_text())
    factor = stored["entries"]["h100-sxm|vllm"]["decode_bw_eff"]
    assert factor["value"] == pytest.approx(fits[0].value) and factor["n"] == 1
    # the next plan uses it: its decode step at batch 10 now takes the measured 13.2 ms
    from homellm.plan.serve_memory import vllm_batch_defaults
    from homellm.plan.serve_speed import closed_loop

    factors, cited = load_calibration(tmp_path / "plan" / "calibration.json").factors_for(
        "h100-sxm", "vllm", "serve")
    predicted = closed_loop(model, gpu, prompt=2048, output=1024, concurrency=10,
                            chunk=vllm_batch_defaults(gpu)[0], efficiency=factors)
    assert predicted["decode.tpot"].value == pytest.approx(13.2, rel=1e-3)
    assert cited and "calibrated on h100-sxm" in cited[0]
    shown = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "h100", home=tmp_path)
    assert "calibrated on h100-sxm (vllm) from 1 measurement" in shown.stdout


def test_calibrate_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    broken = tmp_path / "r.json"
    broken.write_text('{"completed": 3}')
    done = homellm("plan", "calibrate", str(broken), "--model", "qwen3-8b", "--gpus", "h100",
                   home=tmp_path)
    assert done.returncode == 2 and "r.json" in done.stdout + done.stderr
    assert not (tmp_path / "plan" / "calibration.json").exists()
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "calibration.json").write_text("{not json")
    done = homellm("plan", "serve", "qwen3-8b", "--gpus", "h100", home=tmp_path)
    assert done.returncode == 2 and "calibration" in done.stdout + done.stderr
