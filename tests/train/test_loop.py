"""``homellm train`` end to end on CPU: real tokenizer, real shards, the tiny preset, real
processes (SIGKILL and SIGINT really land), torchrun with gloo for data parallelism."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from homellm.train.runlog import RunLog
from tests.train.conftest import write_run

HOMELLM = [sys.executable, "-m", "homellm.cli"]


def homellm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOMELLM, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunLog.read(run_dir) if r["kind"] == "train"}


def rows(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in RunLog.read(run_dir) if r["kind"] == kind]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen[str],
                  timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        log = run_dir / "metrics.jsonl"
        if log.exists() and max(train_losses(run_dir), default=0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_loss_falls_and_the_run_folder_has_everything(tmp_path: Path,
                                                      corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, max_steps=40, eval_every=20,
                       sample_prompts=["Однажды"])
    result = homellm("train", str(config))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 41))
    first, last = losses[1], sum(losses[s] for s in range(36, 41)) / 5
    assert last < first - 1.5, (first, last)         # ln(400) ≈ 6.0 at the start
    evals = {(r["split"], r["step"]): r for r in rows(run_dir, "eval")}
    assert set(evals) == {("val", 20), ("val", 40), ("test", 40)}
    assert evals[("val", 40)]["loss"] < evals[("val", 20)]["loss"]
    # Cyrillic and Latin mix: bits per character above bits per byte, both positive
    assert 0 < evals[("val", 40)]["bpb"] < evals[("val", 40)]["bpc"]
    assert rows(run_dir, "sample") and rows(run_dir, "positions")
    assert (run_dir / "report" / "index.html").exists()
    assert "parameters:" in result.stdout and "memory per process" in result.stdout


def test_sigkill_then_resume_gives_bit_identical_losses(tmp_path: Path,
                                                        corpus: dict[str, Path]) -> None:
    reference = write_run(tmp_path / "a", corpus, max_steps=24)
    assert homellm("train", str(reference)).returncode == 0
    expected = train_losses(tmp_path / "a" / "run")

    killed = write_run(tmp_path / "b", corpus, max_steps=24)
    run_dir = tmp_path / "b" / "run"
    kill_at = random.Random().randint(7, 19)     # past the first checkpoint (step 5)
    proc = subprocess.Popen([*HOMELLM, "train", str(killed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(run_dir, kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed = homellm("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert train_losses(run_dir) == expected, f"killed at step {kill_at}"


def test_ctrl_c_saves_and_exits_130_then_resumes(tmp_path: Path,
                                                 corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, max_steps=400, checkpoint={"every_steps": 1000})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*HOMELLM, "train", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(run_dir, 3, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    stopped_at = max(train_losses(run_dir))
    assert saved and saved[-1].name == f"step-{stopped_at:06d}"
    assert any("stopped by a signal" in r["message"] for r in rows(run_dir, "event"))
    again = homellm("train", "--resume", str(run_dir), "--set", f"max_steps={stopped_at + 2}")
    assert again.returncode == 0, again.stderr
    assert max(train_losses(run_dir)) == stopped_at + 2


def test_ctrl_c_under_torchrun_saves_and_exits_130(tmp_path: Path,
                                                  corpus: dict[str, Path]) -> None:
    """A terminal's Ctrl-C goes to the whole foreground process group: here, `homellm train`
    (torchrun runs in its own session)."""
    config = write_run(tmp_path, corpus, max_steps=400, checkpoint={"every_steps": 1000})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*HOMELLM, "train", str(config), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_step(run_dir, 3, proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopping at the next step boundary" in err
    stopped_at = max(train_losses(run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [
        f"step-{stopped_at:06d}"]
    assert not (run_dir / "STOP").exists()


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_killed_launcher_stops_its_workers_with_a_checkpoint(
        tmp_path: Path, corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, max_steps=1_000_000,
                       checkpoint={"every_steps": 1_000_000})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*HOMELLM, "train", str(config), "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(run_dir, 3, proc)
        proc.kill()                                  # SIGKILL: no handler runs in it
        proc.wait(timeout=10)
        deadline = time.monotonic() + 45
        while _processes_naming(str(run_dir / "run.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_naming(str(run_dir / "run.json")), "workers outlived it"
    finally:
        for pid in _processes_naming(str(run_dir / "run.json")):
            os.kill(pid, signal.SIGKILL)
    stopped_at = max(train_losses(run_dir))
    assert (run_dir / "checkpoints" / f"step-{stopped_at:06d}").is_dir()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_gloo_ranks_match_one_process_with_twice_the_accumulation(
        tmp_path: Path, corpus: dict[str, Path], strategy: str) -> None:
    single = write_run(tmp_path / "one", corpus, max_steps=6, grad_accum=2, eval_every=100)
    ddp = write_run(tmp_path / "two", corpus, max_steps=6, grad_accum=1, eval_every=3,
                    strategy=strategy)
    assert homellm("train", str(single)).returncode == 0
    result = homellm("train", str(ddp), "--nproc", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torchrun --standalone --nproc-per-node=2 -m homellm.train.worker" in result.stdout
    one, two = train_losses(tmp_path / "one" / "run"), train_losses(tmp_path / "two" / "run")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    assert one[6] < one[1]           # and they trained, not just agreed
    assert f"2 ranks, {strategy}" in result.stdout
    # the checkpoint gathered from the ranks resumes: two more steps on two ranks
    more = homellm("train", "--resume", str(tmp_path / "two" / "run"), "--nproc", "2",
                   "--set", "max_steps=8")
    assert more.returncode == 0, more.stdout + more.stderr
    assert "resumed from" in more.stdout and max(train_losses(tmp_path / "two" / "run")) == 8


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
        tmp_path: Path, corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, max_steps=10)
    assert homellm("train", str(config)).returncode == 0
    run_dir = tmp_path / "run"
    weights = run_dir / "checkpoints" / "step-000010" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    result = homellm("train", "--resume", str(run_dir), "--set", "max_steps=12")
    assert result.returncode == 0, result.stderr
    assert "step-000010" in result.stdout and "resumed from" in result.stdout
    assert "step 5," in result.stdout        # went on from the previous checkpoint
    assert max(train_losses(run_dir)) == 12


@pytest.mark.parametrize(("settings", "fix"), [
    ({"model": "350m", "seq_len": 8192, "micro_batch": 64}, "set "),
    ({"model": "3b", "seq_len": 131072, "micro_batch": 8}, "use more GPUs"),
])
def test_a_run_that_cannot_fit_is_refused_before_any_work(
        tmp_path: Path, corpus: dict[str, Path], settings: dict[str, Any], fix: str) -> None:
    config = write_run(tmp_path, corpus, **settings)
    result = homellm("train", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: needs "), result.stderr
    assert "GiB per process >" in lines[0] and fix in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("lr: -1\n", "run.yaml:1: lr: Input should be greater than 0"),
    ("learning_rate: 0.1\n", "run.yaml:1: learning_rate: unknown field"),
    ("seq_len: [1, 2]\n", "run.yaml:1: seq_len:"),
])
def test_bad_run_configs_get_one_line_errors(tmp_path: Path, corpus: dict[str, Path],
                                             text: str, expected: str) -> None:
    config = write_run(tmp_path, corpus)
    body = "\n".join(line for line in config.read_text().splitlines()
                     if not line.startswith(text.split(":")[0] + ":"))
    config.write_text(text + body + "\n")
    result = homellm("train", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_dry_run_prints_the_plan_and_the_torchrun_command(tmp_path: Path,
                                                          corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, curriculum=[{"seq_len": 32, "tokens": 4096},
                                                     {"seq_len": 64, "tokens": 8192}],
                       max_steps=None, seq_len=None)
    result = homellm("train", str(config), "--dry-run", "--nproc", "2")
    assert result.returncode == 0, result.stderr
    assert "stage 0: seq_len 32, micro_batch 4, steps 0–16" in result.stdout
    assert "stage 1: seq_len 64, micro_batch 4, steps 16–32" in result.stdout
    assert "torchrun --standalone --nproc-per-node=2" in result.stdout
    assert not (tmp_path / "run").exists()


def test_the_checkpoint_holds_what_export_needs(tmp_path: Path,
                                                corpus: dict[str, Path]) -> None:
    config = write_run(tmp_path, corpus, max_steps=5)
    assert homellm("train", str(config)).returncode == 0
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000005" /
                        "trainer_state.json").read_text())
    assert state["config"]["model_config"]["model_type"] == "qwen3"
    assert state["config"]["tokenizer"] == str(corpus["tokenizer"])
    assert state["config"]["seq_len"] == 32
    assert state["data_position"]["loader"]["index"] == 5 * 4


def test_attention_kernel_choice(corpus: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from homellm.errors import ConfigError
    from homellm.train.build import attention_for
    from homellm.train.runconfig import load_run_config

    config = load_run_config(write_run(tmp_path, corpus))
    assert attention_for(config, torch.device("cpu")) == "sdpa"
    assert attention_for(config, torch.device("cuda")) == "flex_attention"
    unmasked = config.model_copy(update={"document_masking": False})
    assert attention_for(unmasked, torch.device("cuda")) == "sdpa"
    flex = config.model_copy(update={"attention": "flex_attention"})
    with pytest.raises(ConfigError, match="no backward on CPU"):
        attention_for(flex, torch.device("cpu"))


def test_activation_checkpointing_changes_memory_not_the_losses(
        tmp_path: Path, corpus: dict[str, Path]) -> None:
    plain = write_run(tmp_path / "plain", corpus, max_steps=4, eval_every=100)
    saved = write_run(tmp_path / "ac", corpus, max_steps=4, eval_every=100,
                      activation_checkpointing=True)
    assert homellm("train", str(plain)).returncode == 0
    result = homellm("train", str(saved))
    assert result.returncode == 0, result.stderr
    assert "checkpointing" in result.stdout           # the memory line says it is on
    one, two = train_losses(tmp_path / "plain" / "run"), train_losses(tmp_path / "ac" / "run")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-6), step
