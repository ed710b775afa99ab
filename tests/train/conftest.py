"""A tiny real corpus for training tests: the tokcorpus dataset, a BPE tokenizer trained on it
and its token shards, built once per session; and run configs over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from homellm.data.shards import tokenize_dataset
from homellm.tokenizer import train_tokenizer
from tests.data.tokcorpus import write_dataset


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    layout, _ = write_dataset(root / "ds", count=200)
    train_tokenizer(layout, root / "tok", vocab_size=400)
    tokenize_dataset(layout, root / "tok")
    return {"dataset": root / "ds", "tokenizer": root / "tok"}


def write_run(folder: Path, corpus: dict[str, Path], **settings: Any) -> Path:
    """A run config for the tiny preset on CPU, small enough for a few seconds a run; a
    setting given as None is left out of the file."""
    config: dict[str, Any] = {
        "model": "tiny", "tokenizer": str(corpus["tokenizer"]),
        "dataset": str(corpus["dataset"]), "out": str(folder / "run"),
        "seq_len": 32, "micro_batch": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3,
        "max_steps": 20, "eval_every": 10, "eval_tokens": 1024, "gpus": [],
        "checkpoint": {"every_steps": 5, "keep_last": 10}, "needle_probe": False,
        "sample_prompts": [], "log_every": 1,
    }
    config.update(settings)
    config = {key: value for key, value in config.items() if value is not None}  # None: unset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    return path
