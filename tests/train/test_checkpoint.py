"""Checkpoints: exact resume, crash safety under SIGKILL, corruption fallback, retention."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from homellm.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainState,
    load,
    load_latest,
    restore,
)

REPO = Path(__file__).resolve().parents[2]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tiny_qwen() -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        attention_dropout=0.2, tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    model = Qwen3ForCausalLM(config)
    model.train()
    return model


def _objects() -> tuple[Qwen3ForCausalLM, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    model = _tiny_qwen()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> torch.Tensor:
    # Every RNG feeds the batch, so a resume that misses any of them changes the losses.
    shift = random.randint(0, 7) + int(np.random.randint(0, 7))
    ids = (torch.randint(0, 64, (2, 12)) + shift) % 64
    loss = model(input_ids=ids, labels=ids).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach().clone()


def _save_simple(manager: CheckpointManager, step: int, val_loss: float | None = None) -> Path:
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model, optimizer, tokens_seen=step * 10,
                       data_position={"epoch": 0, "index": step}, val_loss=val_loss)
    return manager.save(step, state).path


def _step_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    _seed_all(0)
    model, optimizer, scheduler = _objects()
    straight = [_train_step(model, optimizer, scheduler) for _ in range(10)]
    straight_params = [p.detach().clone() for p in model.parameters()]

    _seed_all(0)
    model, optimizer, scheduler = _objects()
    resumed = [_train_step(model, optimizer, scheduler) for _ in range(5)]
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(5, TrainState(model, optimizer, scheduler, tokens_seen=120,
                               data_position={"epoch": 0, "index": 10},
                               config={"preset": "tiny"}, val_loss=4.25))

    _seed_all(1234)  # a new process: other weights, other RNG positions
    model, optimizer, scheduler = _objects()
    checkpoint, problems = load_latest(tmp_path)
    assert problems == [] and checkpoint is not None
    assert (checkpoint.step, checkpoint.tokens_seen, checkpoint.val_loss) == (5, 120, 4.25)
    assert checkpoint.data_position == {"epoch": 0, "index": 10}
    assert checkpoint.config == {"preset": "tiny"}
    restore(checkpoint, model, optimizer, scheduler)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    resumed += [_train_step(model, optimizer, scheduler) for _ in range(5)]

    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(straight_params, model.parameters(), strict=True))
    assert scheduler.get_last_lr() == [3e-3]


def test_layout_and_manifest(tmp_path: Path) -> None:
    path = _save_simple(CheckpointManager(tmp_path), 123)
    assert path == tmp_path / "checkpoints" / "step-000123"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 123
    assert set(manifest["files"]) == {
        "model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


# No optimizer here: building one imports torch._dynamo (1-2 s), and the test is about folders.
CHILD = """
import sys, torch
from homellm.train.checkpoint import CheckpointManager, TrainState
model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(4)])
manager = CheckpointManager(sys.argv[1], keep_last=2)
step = 0
while True:
    step += 1
    with torch.no_grad():
        model[0].bias.fill_(step)
    manager.save(step, TrainState(model, data_position={"index": step}, val_loss=1.0 / step))
    print(step, flush=True)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_during_saves_leaves_a_valid_checkpoint(tmp_path: Path, seed: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "1"  # one whole checkpoint exists
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    checkpoint, problems = load_latest(tmp_path)
    assert checkpoint is not None
    assert not any("sha256" in p or "missing" in p for p in problems)
    assert all("left over" in p for p in problems)
    assert checkpoint.data_position == {"index": checkpoint.step}
    assert len([n for n in _step_names(tmp_path) if n.startswith("step-")]) <= 3

    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(4)])
    restore(checkpoint, model)
    assert torch.all(model[0].bias == checkpoint.step)
    # The next save clears whatever the killed process left half-done.
    manager = CheckpointManager(tmp_path, keep_last=2)
    saved = manager.save(checkpoint.step + 1, TrainState(model))
    assert not [n for n in _step_names(tmp_path) if n.startswith(".")]
    assert load_latest(tmp_path) == (saved, [])


def test_leftover_temp_dir_is_reported_and_ignored(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 1)
    half = tmp_path / "checkpoints" / ".tmp-step-000002-999"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    checkpoint, problems = load_latest(tmp_path)
    assert checkpoint is not None and checkpoint.step == 1
    assert problems == [".tmp-step-000002-999: left over from an interrupted save or delete, "
                        "ignored"]
    _save_simple(manager, 2)
    assert _step_names(tmp_path) == ["step-000001", "step-000002"]


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _flip_byte(d / "model.safetensors"), "model.safetensors fails its sha256"),
        (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda d: (d / "rng.pt").write_bytes((d / "rng.pt").read_bytes()[:-7]), "rng.pt has"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda d: (d / "manifest.json").write_text('{"format_version": 1, "files": []}'),
         "manifest.json is unreadable"),
        (lambda d: (d / "manifest.json").write_text('{"format_version": 9, "files": {}}'),
         "format version 9 is newer"),
    ],
)
def test_corrupt_latest_falls_back_to_previous(tmp_path: Path, caplog, damage, expected) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 1)
    damage(_save_simple(manager, 2))
    with caplog.at_level(logging.WARNING, logger="homellm.train.checkpoint"):
        checkpoint, problems = load_latest(tmp_path)
    assert checkpoint is not None and checkpoint.step == 1
    assert len(problems) == 1 and problems[0].startswith("step-000002: ")
    assert expected in problems[0]
    assert expected in caplog.text
    with pytest.raises(CheckpointError, match=expected):
        load(tmp_path / "checkpoints" / "step-000002")


def test_all_corrupt_is_a_one_line_error(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    for step in (1, 2):
        _flip_byte(_save_simple(manager, step) / "model.safetensors")
    with pytest.raises(CheckpointError) as raised:
        load_latest(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "all 2 checkpoints" in message and "step-000002" in message


def test_no_checkpoints_is_a_fresh_start(tmp_path: Path) -> None:
    assert load_latest(tmp_path) == (None, [])
    (tmp_path / "checkpoints").mkdir()
    assert load_latest(tmp_path) == (None, [])


def test_keep_last_k_plus_best(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step, loss in enumerate([5.0, 1.0, 4.0, 3.0, 2.0, 6.0], start=1):
        _save_simple(manager, step, val_loss=loss)
    assert _step_names(tmp_path) == ["step-000002", "step-000005", "step-000006"]
    _save_simple(manager, 7)  # no validation this time: best stays
    assert _step_names(tmp_path) == ["step-000002", "step-000006", "step-000007"]
    _save_simple(manager, 8, val_loss=0.5)  # a new best frees the old one
    assert _step_names(tmp_path) == ["step-000007", "step-000008"]
    assert manager.best() == tmp_path / "checkpoints" / "step-000008"


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 3, val_loss=2.0)
    _save_simple(manager, 3, val_loss=1.0)
    checkpoint, _ = load_latest(tmp_path)
    assert checkpoint is not None and checkpoint.val_loss == 1.0
    assert _step_names(tmp_path) == ["step-000003"]


def test_due_by_steps_and_minutes(tmp_path: Path) -> None:
    by_steps = CheckpointManager(tmp_path, every_steps=5)
    assert [s for s in range(12) if by_steps.due(s, now=0.0)] == [5, 10]
    _save_simple(by_steps, 5)
    assert not by_steps.due(5, now=0.0)

    by_time = CheckpointManager(tmp_path, every_minutes=1.0)
    assert not by_time.due(1, now=100.0)
    assert not by_time.due(2, now=159.0)
    assert by_time.due(3, now=160.0)


def test_restore_into_a_different_model_is_an_error(tmp_path: Path) -> None:
    checkpoint = load(_save_simple(CheckpointManager(tmp_path), 1))
    with pytest.raises(CheckpointError, match="do not fit"):
        restore(checkpoint, torch.nn.Linear(4, 5))
