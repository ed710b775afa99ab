"""`homellm plan calibrate` on training runs: the steady-state selection and median by hand, then
a real CPU run of `homellm train` calibrated against the H100 peak, and `plan train` using and
citing the stored MFU."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from homellm.data.shards import tokenize_dataset
from homellm.errors import ConfigError
from homellm.hardware import find_gpu
from homellm.plan.calibration import load_calibration, run_mfu, steady_rows
from homellm.tokenizer import train_tokenizer
from homellm.train.presets import config_spec
from homellm.train.runlog import RunLog
from tests.data.tokcorpus import write_dataset
from tests.plan.test_cli_plan import PUBLISHED, homellm

# the tiny preset's shape, written out so the unit tests need no transformers
TINY = {"model_type": "qwen3", "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 32, "vocab_size": 400, "tie_word_embeddings": True,
        "max_position_embeddings": 2048}


def train_row(step: int, tokens_per_s: float, seq_len: int = 32) -> dict[str, Any]:
    return {"kind": "train", "step": step, "time": 0.0, "tokens": step * 128, "loss": 5.0,
            "lr": 1e-3, "grad_norm": None, "tokens_per_s": tokens_per_s, "mfu": None,
            "memory_gib": None, "seq_len": seq_len, "stage": 0}


def test_steady_rows_drop_a_tenth_and_at_least_three_steps() -> None:
    rows = [train_row(s, 100.0 * s) for s in range(40, 0, -1)]  # out of order on purpose
    rows.insert(5, {"kind": "eval", "step": 10, "split": "val", "loss": 4.0})
    assert [r["step"] for r in steady_rows(rows)] == list(range(5, 41))  # 10 % of 40 = 4
    assert [r["step"] for r in steady_rows([train_row(s, 1.0) for s in range(1, 11)])] \
        == list(range(4, 11))  # 10 % is 1 row, but the first 3 steps always go
    # logged every 10 steps: 3 rows dropped by count, none of the rest is an early step
    assert [r["step"] for r in steady_rows([train_row(s, 1.0) for s in range(10, 101, 10)])] \
        == list(range(40, 101, 10))


def test_run_mfu_is_the_median_of_the_steady_rows() -> None:
    model, gpu = config_spec(TINY), find_gpu("h100")
    speeds = [9e9, 1e9, 5e9, 1000.0, 3000.0, 2000.0, 4000.0, 7000.0, 6000.0, 5000.0]
    rows = [train_row(s, v) for s, v in enumerate(speeds, start=1)]
    value, steady, figure = run_mfu(rows, model, gpu, world=2, source="run")
    assert [r["step"] for r in steady] == list(range(4, 11))  # warmup outliers dropped
    flops = model.train_flops_per_token(32)
    expected = 4000.0 * flops / (989e12 * 2)  # median of 1000..7000 tok/s
    assert value == pytest.approx(expected, rel=1e-12)
    assert figure.value == pytest.approx(value, rel=1e-12) and figure.check()
    assert figure.inputs == {"tps": 4000.0, "F": flops, "n": 2, "peak": 989}

    # a curriculum: each row against its own seq_len's FLOPs, then the median
    mixed = [train_row(s, 1000.0 * s, 32 if s < 8 else 64) for s in range(1, 13)]
    value, _, figure = run_mfu(mixed, model, gpu, world=1, source="run")
    per_row = [1000.0 * s * model.train_flops_per_token(32 if s < 8 else 64) / 989e12
               for s in range(4, 13)]
    assert value == pytest.approx(statistics.median(per_row), rel=1e-12)
    assert figure.value == value and "curriculum" in figure.note


def test_run_mfu_refuses_runs_it_cannot_measure() -> None:
    model, gpu = config_spec(TINY), find_gpu("h100")
    with pytest.raises(ConfigError, match="no train rows"):
        run_mfu([{"kind": "eval", "step": 5}], model, gpu, world=1, source="run")
    with pytest.raises(ConfigError, match="4 steady-state train row"):
        run_mfu([train_row(s, 1.0) for s in range(1, 8)], model, gpu, world=1, source="run")
    broken = [train_row(s, 1.0) for s in range(1, 12)]
    broken[6]["tokens_per_s"] = None
    with pytest.raises(ConfigError, match="step 7 has no positive tokens_per_s"):
        run_mfu(broken, model, gpu, world=1, source="run")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20-step CPU run of the tiny preset (with a checkpoint) on a small real corpus."""
    root = tmp_path_factory.mktemp("calibrate-run")
    layout, _ = write_dataset(root / "ds", count=60)
    train_tokenizer(layout, root / "tok", vocab_size=400)
    tokenize_dataset(layout, root / "tok")
    config = {"model": "tiny", "tokenizer": str(root / "tok"), "dataset": str(root / "ds"),
              "out": str(root / "run"), "seq_len": 32, "micro_batch": 4, "lr": 3e-3,
              "min_lr": 3e-4, "warmup_steps": 3, "max_steps": 20, "eval_every": 20,
              "eval_tokens": 256, "gpus": [], "checkpoint": {"every_steps": 20, "keep_last": 1},
              "needle_probe": False, "sample_prompts": [], "log_every": 1}
    (root / "run.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    done = homellm("train", str(root / "run.yaml"), home=root / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    return root / "run"


def test_calibrate_from_a_run_then_plan_train_uses_and_cites_it(trained_run: Path,
                                                                tmp_path: Path) -> None:
    # the MFU by hand: steps 4..20 (10 % of 20 rows is 2, the first 3 always go), each
    # row's tokens/s × F(seq_len) against one H100's dense BF16 peak (CPU run: world 1)
    state = json.loads(next((trained_run / "checkpoints").glob("step-*/trainer_state.json"))
                       .read_text())
    model = config_spec(state["config"]["model_config"])
    rows = sorted((r for r in RunLog.read(trained_run) if r["kind"] == "train"),
                  key=lambda r: r["step"])
    assert [r["step"] for r in rows] == list(range(1, 21))
    by_hand = statistics.median(r["tokens_per_s"] * model.train_flops_per_token(r["seq_len"])
                                / 989e12 for r in rows[3:])

    done = homellm("plan", "calibrate", str(trained_run), "--gpus", "h100", "--json",
                   home=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    [fit] = out["fits"]
    assert fit["factor"] == "mfu" and fit["value"] == pytest.approx(by_hand, rel=1e-12)
    assert fit["measured"] == pytest.approx(statistics.median(r["tokens_per_s"]
                                                              for r in rows[3:]), rel=1e-12)
    assert fit["figure"]["formula"] == "tps * F / (n * peak * 1e12)"
    stored = load_calibration(tmp_path / "plan" / "calibration.json").entries
    entry = stored["h100-sxm|homellm-train"]["mfu"]
    assert entry["value"] == pytest.approx(by_hand, rel=1e-12) and entry["n"] == 1
    assert entry["sources"] == [str(trained_run)] and entry["model"] == "homellm-tiny"

    plan = homellm("plan", "train", "125M", "--tokens", "1B", "--gpus", "h100", "--json",
                   home=tmp_path)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    mfu = next(f for f in data["compute"] if f["key"] == "train.mfu")
    assert mfu["value"] == pytest.approx(by_hand, rel=1e-12)
    assert "calibrated" in mfu["source"]
    assert len(data["calibration"]) == 1
    assert data["calibration"][0].startswith(f"mfu = {entry['value']:.3g} calibrated on "
                                             "h100-sxm (homellm-train) from 1 measurement")

    # the people's view: the fitted figure with its formula and inputs; --model is ignored
    shown = homellm("plan", "calibrate", str(trained_run), "--gpus", "h100", "--model",
                    "qwen3-8b", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "= tps * F / (n * peak * 1e12)" in shown.stdout and "peak=989" in shown.stdout
    assert "--model qwen3-8b ignored" in shown.stdout
    assert "from 1 measurement(s)" in shown.stdout  # a new calibration replaces the old


def test_calibrate_takes_runs_and_bench_results_together(trained_run: Path,
                                                         tmp_path: Path) -> None:
    result = tmp_path / "bench.json"
    result.write_text(json.dumps(PUBLISHED))
    done = homellm("plan", "calibrate", str(result), str(trained_run), "--model",
                   "qwen3-30b-a3b", "--gpus", "h100", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    entries = load_calibration(tmp_path / "plan" / "calibration.json").entries
    assert set(entries["h100-sxm|vllm"]) == {"decode_bw_eff"}
    assert set(entries["h100-sxm|homellm-train"]) == {"mfu"}
    assert [f["factor"] for f in json.loads(done.stdout)["fits"]] == ["decode_bw_eff", "mfu"]


def test_calibrate_refuses_runs_it_cannot_use(trained_run: Path, tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        done = homellm("plan", "calibrate", *args, "--gpus", "h100", home=tmp_path)
        text = done.stdout + done.stderr
        assert done.returncode == 2 and "Traceback" not in text, text
        assert not (tmp_path / "plan" / "calibration.json").exists()
        return text

    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    for name in ("metrics.jsonl", "run.json"):
        shutil.copy(trained_run / name, no_ckpt / name)
    assert "no checkpoint with a model config" in refused(str(no_ckpt))

    short = tmp_path / "short"
    shutil.copytree(trained_run, short)
    kept = [line for line in (short / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] != "train" or json.loads(line)["step"] <= 7]
    (short / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    assert "4 steady-state train row(s)" in refused(str(short))

    no_train = tmp_path / "no-train"
    no_train.mkdir()
    (no_train / "metrics.jsonl").write_text('{"kind":"event","step":0,"time":0,"message":"x"}\n')
    assert "no train rows" in refused(str(no_train))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a training run" in refused(str(empty))
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(PUBLISHED))
    assert "--model is required" in refused(str(bench))
