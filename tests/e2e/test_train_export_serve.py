"""A `homellm train` checkpoint, exported, served by `homellm up` (real `transformers serve`,
real gateway) and queried with the openai client."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoTokenizer

from homellm.tokenizer import train_tokenizer
from homellm.train.checkpoint import CheckpointManager, TrainState
from homellm.train.export import export_checkpoint
from homellm.train.presets import build_model, preset_config, tokenizer_vocab_size
from tests.conftest import free_port
from tests.data.tokcorpus import write_dataset
from tests.e2e.conftest import engine_pids, start_up, stop_up, wait_ready, write_stack

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Привет! Как дела?"}]


def test_exported_checkpoint_is_served_through_the_gateway(tmp_path: Path) -> None:
    layout, _ = write_dataset(tmp_path / "data")
    tok_dir = train_tokenizer(layout, tmp_path / "tok", vocab_size=400, sample_bytes=1 << 20)
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", tokenizer_vocab_size(tok_dir)))
    config = {"model_config": model.config.to_dict(), "tokenizer": str(tok_dir),
              "run": {"model": "tiny"}, "seq_len": 256}
    CheckpointManager(tmp_path / "run").save(5, TrainState(model=model, config=config,
                                                           tokens_seen=5000, val_loss=4.0))
    model_dir = export_checkpoint(tmp_path / "run", tmp_path / "export")

    gateway = free_port()
    stack = write_stack(tmp_path / "homellm.yaml", model_dir, gateway, [free_port()])
    run_dir, log = tmp_path / "up-run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    url = f"http://127.0.0.1:{gateway}"
    try:
        started = time.monotonic()
        wait_ready(url, process, log)
        print(f"ready in {time.monotonic() - started:.1f} s")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=60)
        assert [m.id for m in client.models.list()] == ["tiny"]

        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
        choice = reply.choices[0]
        assert choice.message.role == "assistant" and choice.message.content is not None
        assert choice.finish_reason in ("length", "stop")
        assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8
        # transformers serve rendered the prompt with the exported ChatML template
        prompt = AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
            MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert reply.usage.prompt_tokens == len(prompt)

        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES,
                                                     max_tokens=8, stream=True))
        assert len(chunks) >= 2
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        assert engine_pids(run_dir), "no engine process carries this run's marker"

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130, log.read_text()  # Ctrl-C: up.STOP_EXIT_CODES
        deadline = time.monotonic() + 10
        while engine_pids(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine_pids(run_dir) == {}, "engine outlived `up` after SIGINT"
    finally:
        stop_up(process)
