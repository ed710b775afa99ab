"""A length curriculum with per-stage RoPE θ, YaRN and source mix, exported through the CLI
and fine-tuned on dialogues (loss on assistant turns only): the whole path a user takes."""

from __future__ import annotations

import json
from pathlib import Path

from homellm.train.runlog import RunLog
from tests.train.conftest import write_run
from tests.train.test_loop import homellm


def _evals(run_dir: Path, split: str) -> list[dict]:
    return [r for r in RunLog.read(run_dir) if r["kind"] == "eval" and r["split"] == split]


def test_curriculum_export_then_sft(tmp_path: Path, corpus: dict[str, Path]) -> None:
    stages = [{"seq_len": 32, "tokens": 2048, "mix": {"books": 1, "dialogues": 0}},
              {"seq_len": 64, "tokens": 2048, "rope_theta": 500000, "yarn_factor": 2.0}]
    config = write_run(tmp_path / "pre", corpus, curriculum=stages, eval_every=8,
                       seq_len=None, max_steps=None)
    result = homellm("train", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "pre" / "run"
    rows = RunLog.read(run_dir)
    lengths = {r["step"]: r["seq_len"] for r in rows if r["kind"] == "train"}
    assert lengths[1] == 32 and lengths[max(lengths)] == 64
    assert sorted(lengths) == list(range(1, 25))       # 2048/(4·32) + 2048/(4·64) = 16 + 8
    assert any(r["kind"] == "event" and "stage 1: seq_len 64" in r["message"] for r in rows)

    export = tmp_path / "export"
    exported = homellm("export", str(run_dir), "-o", str(export))
    assert exported.returncode == 0, exported.stderr
    model_config = json.loads((export / "config.json").read_text())
    assert model_config["max_position_embeddings"] == 64
    assert model_config["rope_parameters"] == {
        "rope_type": "yarn", "rope_theta": 500000.0, "factor": 2.0,
        "original_max_position_embeddings": 32}

    sft = write_run(tmp_path / "sft", corpus, objective="sft", init_from=str(export),
                    max_steps=6, lr=1e-3, eval_every=3, seq_len=64)
    tuned = homellm("train", str(sft))
    assert tuned.returncode == 0, tuned.stderr
    sft_dir = tmp_path / "sft" / "run"
    # the same validation windows, fewer counted targets: only assistant turns carry loss
    pre_val = _evals(run_dir, "val")[-1]
    sft_val = _evals(sft_dir, "val")[0]
    assert 0 < sft_val["tokens"] < pre_val["tokens"]
    first_loss = next(r["loss"] for r in RunLog.read(sft_dir) if r["kind"] == "train")
    assert first_loss < 5.5        # it starts from the pretrained weights, not from ln(400)


def test_sft_needs_a_model_to_start_from(tmp_path: Path, corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, objective="sft")
    result = homellm("train", str(config))
    assert result.returncode == 2
    assert "init_from: sft starts from a trained model" in result.stderr
