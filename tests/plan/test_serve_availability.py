"""plan serve (issue 13 §2): what each layout keeps serving when one GPU fails, and a
recommendation that weighs it against capacity; a plan where nothing fits exits 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homellm.errors import ConfigError
from homellm.hardware import find_gpu
from homellm.models_catalog import resolve_model
from homellm.plan.serve import plan_serve
from tests.plan.test_cli_plan import all_figures, homellm

TWO_PRO = [find_gpu("rtx-pro-6000")] * 2
HEADLINE = {"context": 131072, "dtype": "bfloat16"}   # the user's case: Qwen3-30B-A3B, 128K


@pytest.fixture(scope="module")
def qwen3_30b():
    return resolve_model("qwen3-30b-a3b")


def test_replicas_survive_a_gpu_failure_and_tp_pp_do_not(qwen3_30b) -> None:
    plan = plan_serve(qwen3_30b, TWO_PRO, concurrency=8, **HEADLINE)
    reps, tp, pp = (plan.layouts[k] for k in ("replicas", "tp", "pp"))
    assert reps.fits and tp.fits and pp.fits
    # two replicas: one left, holding what one GPU holds, decoding all 8 requests alone
    assert reps.availability.survives and reps.availability.replicas_left == 1
    assert reps.availability.requests_held == pytest.approx(reps.memory.concurrent_at_context)
    assert reps.requests_at_context == pytest.approx(2 * reps.memory.concurrent_at_context)
    assert reps.availability.after is not None and reps.availability.after.batch == 8
    assert 0 < reps.availability.tokens_per_s < reps.total_tokens_per_s
    # TP=2 / PP=2 span both GPUs: a single point of failure, nothing left
    for layout in (tp, pp):
        assert not layout.availability.survives and layout.availability.replicas_left == 0
        assert layout.availability.requests_held == 0
        assert layout.availability.tokens_per_s == 0 and layout.availability.after is None
    # and TP has more KV cache and speed: the trade the recommendation must state
    assert tp.requests_at_context > reps.requests_at_context
    assert tp.total_tokens_per_s > reps.total_tokens_per_s
    figures = plan.figures()
    keys = {f.key for f in figures}
    for kind in ("replicas", "tp", "pp"):
        assert {f"serve.{kind}.after_failure.{k}" for k in
                ("replicas_left", "survives", "requests_held", "tokens_per_s")} <= keys
    assert all(f.check() for f in figures), [f.key for f in figures if not f.check()]


def test_recommendation_weighs_availability_and_says_why(qwen3_30b) -> None:
    # 1 request of 128K: the replicas hold it even after a failure -> replicas, and the
    # reason names what TP would give and that it is a single point of failure
    one = plan_serve(qwen3_30b, TWO_PRO, concurrency=1, **HEADLINE)
    assert one.recommended == "replicas"
    assert "One GPU failing leaves 1 replica serving" in one.reason
    assert "TP=2 would hold" in one.reason and "single point of failure" in one.reason
    # 8 requests of 128K: the replicas hold 4.3 (2.1 after a failure) -> TP by default,
    # saying it is a single point of failure and what --prefer availability picks
    eight = plan_serve(qwen3_30b, TWO_PRO, concurrency=8, **HEADLINE)
    assert eight.recommended == "tp"
    assert "KV-starved for 8 concurrent" in eight.reason
    assert "would survive a GPU failure" in eight.reason
    assert "TP=2 is a single point of failure" in eight.reason
    assert "--prefer availability recommends 2 replicas" in eight.reason
    safe = plan_serve(qwen3_30b, TWO_PRO, concurrency=8, prefer="availability", **HEADLINE)
    assert safe.recommended == "replicas" and safe.reason.startswith("--prefer availability")
    assert "the rest queue" in safe.reason and "single point of failure" in safe.reason
    fast = plan_serve(qwen3_30b, TWO_PRO, concurrency=1, prefer="capacity", **HEADLINE)
    assert fast.recommended == "tp" and "--prefer capacity" in fast.reason
    assert "single point of failure" in fast.reason
    with pytest.raises(ConfigError, match="--prefer"):
        plan_serve(qwen3_30b, TWO_PRO, concurrency=1, prefer="speed", **HEADLINE)


def test_a_model_that_needs_both_gpus_says_nothing_survives() -> None:
    plan = plan_serve(resolve_model("llama-3.1-70b"), TWO_PRO, context=32768, concurrency=4,
                      dtype="bfloat16", prefer="availability")
    assert plan.recommended == "tp"
    assert "No layout survives a GPU failure" in plan.reason


def test_one_gpu_cannot_survive_its_failure(qwen3_30b) -> None:
    plan = plan_serve(qwen3_30b, TWO_PRO[:1], context=32768, concurrency=2, dtype="bfloat16")
    layout = plan.layouts["replicas"]
    assert plan.recommended == "replicas" and not layout.availability.survives
    assert "its failure stops the service" in plan.reason


def test_cli_table_and_json_carry_availability(tmp_path: Path) -> None:
    args = ["plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
            "131072", "--concurrency", "8"]
    shown = homellm(*args, home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split("│")[1].strip().rstrip(" ★"): line for line in shown.stdout.splitlines()
            if line.startswith("│")}
    assert "survives GPU loss" in shown.stdout and "tok/s after loss" in shown.stdout
    cells = {name: [c.strip() for c in row.split("│")[2:-1]] for name, row in rows.items()}
    assert cells["2 replicas"][-3] == "yes" and cells["TP=2"][-3] == "no"
    assert cells["PP=2"][-3:] == ["no", "0.0", "0"]
    assert "recommendation: One GPU holds only" in shown.stdout
    data = json.loads(homellm(*args, "--json", home=tmp_path).stdout)
    reps, tp = data["layouts"]["replicas"], data["layouts"]["tp"]
    assert reps["survives_gpu_failure"] is True and tp["survives_gpu_failure"] is False
    assert reps["replicas_after_failure"] == 1 and tp["requests_after_failure"] == 0
    assert reps["decode_tok_s_after_failure"] > 0 and tp["decode_tok_s_after_failure"] == 0
    assert data["prefer"] == "balanced" and data["recommended"] == "tp"
    from homellm.plan.figures import Figure

    found = [f for f in all_figures(data) if ".after_failure." in f["key"]]
    assert len(found) >= 12
    for f in found:
        assert Figure(f["key"], f["label"], f["value"], f["unit"], f["formula"],
                      f["inputs"]).check(), f["key"]
    safe = homellm(*args, "--prefer", "availability", "--json", home=tmp_path)
    assert json.loads(safe.stdout)["recommended"] == "replicas"
    explained = homellm(*args, "--explain", home=tmp_path).stdout
    assert "TP=2: after one GPU fails" in explained
    assert "replicas left after one GPU fails = 1\n    = replicas - 1   [replicas=2]" in explained
    bad = homellm(*args, "--prefer", "speed", home=tmp_path)
    assert bad.returncode == 2 and "--prefer" in bad.stdout + bad.stderr


def test_nothing_fits_exits_1_with_one_line(tmp_path: Path) -> None:
    args = ["plan", "serve", "qwen3-235b-a22b", "--gpus", "rtx-4090"]
    done = homellm(*args, home=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "nothing fits" in line]
    assert lines == ["error: nothing fits: no layout of Qwen3-235B-A22B on rtx-4090 holds its "
                     "weights and one request of the asked context"]
    assert (done.stdout + done.stderr).rstrip().endswith(lines[0])   # after the table
    as_json = homellm(*args, "--json", home=tmp_path)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["recommended"] is None          # the JSON still printed
    assert "nothing fits" in as_json.stderr and "nothing fits" not in as_json.stdout
    target = tmp_path / "homellm.yaml"
    written = homellm(*args, "--write", str(target), home=tmp_path)
    assert written.returncode == 1 and not target.exists()
    assert f"{target} not written" in written.stdout + written.stderr
