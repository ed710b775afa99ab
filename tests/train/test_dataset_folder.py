"""``dataset:`` takes the dataset folder ``homellm data`` wrote (manifest.json and all) as well as
a shards folder, and ``--dry-run`` refuses whatever a start refuses. The run config docs/train.md
shows runs with its ``dataset:`` line exactly as written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from homellm.tokenizer import tokenizer_id
from tests.train.conftest import write_run
from tests.train.test_loop import homellm, train_losses

DOCS = Path(__file__).resolve().parents[2] / "docs" / "train.md"
# the docs' config is for a real run; these make it a tiny CPU one and leave its paths alone
SETTINGS = ["model=tiny", "curriculum=null", "seq_len=32", "max_steps=2", "warmup_steps=1",
            "micro_batch=2", "grad_accum=1", "eval_every=2", "eval_tokens=256",
            "checkpoint.every_steps=2", "checkpoint.every_minutes=null"]
SMALL = [arg for pair in SETTINGS for arg in ("--set", pair)] + ["--gpus", "cpu"]


@pytest.fixture
def user(tmp_path: Path, corpus: dict[str, Path]) -> Path:
    """A copy of the corpus as `homellm data` leaves it: ROOT/ds with its own manifest.json
    (inputs, split counts) beside tokens/<id>/, and ROOT/tok."""
    shutil.copytree(corpus["dataset"], tmp_path / "ds")
    shutil.copytree(corpus["tokenizer"], tmp_path / "tok")
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(
        {"version": 1, "inputs": {}, "splits": {"train": {"records": 200}}}), "utf-8")
    return tmp_path


def docs_run_config() -> str:
    text = DOCS.read_text("utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    found = [b for b in blocks if re.search(r"^dataset:", b, re.M)]
    assert len(found) == 1, "docs/train.md: expected one run config with a dataset: line"
    return found[0]


def test_the_docs_run_config_dry_runs_and_trains_as_written(user: Path) -> None:
    text = docs_run_config()
    assert yaml.safe_load(text)["dataset"] == "../ds"
    config = user / "configs" / "run.yaml"
    config.parent.mkdir()
    config.write_text(text, "utf-8")
    dry = homellm("train", str(config), "--dry-run", *SMALL)
    assert dry.returncode == 0, dry.stderr
    tok_id = tokenizer_id(user / "tok")
    assert f"data: {user.resolve() / 'ds' / 'tokens' / tok_id} (train " in dry.stdout
    run = homellm("train", str(config), *SMALL)
    assert run.returncode == 0, run.stderr
    assert sorted(train_losses(user / "configs" / "runs" / "ru-125m")) == [1, 2]


def test_a_shards_folder_still_works(tmp_path: Path, corpus: dict[str, Path]) -> None:
    shards = corpus["dataset"] / "tokens" / tokenizer_id(corpus["tokenizer"])
    result = homellm("train", str(write_run(tmp_path, corpus, dataset=str(shards))),
                     "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"data: {shards} (train " in result.stdout


def test_tokens_for_other_tokenizers_only_name_them_and_the_command(
        tmp_path: Path, user: Path, corpus: dict[str, Path]) -> None:
    tokens = user / "ds" / "tokens"
    (tokens / tokenizer_id(user / "tok")).rename(tokens / "0123456789abcdef")
    config = write_run(tmp_path, corpus, dataset=str(user / "ds"), tokenizer=str(user / "tok"))
    for args in (("--dry-run",), ()):
        result = homellm("train", str(config), *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert "has tokens for tokenizer 0123456789abcdef only" in lines[0]
        assert f"homellm data tokenize {user / 'ds'} --tokenizer {user / 'tok'}" in lines[0]


@pytest.mark.parametrize("damage", ["truncated shard", "other tokenizer", "too few windows"])
def test_dry_run_refuses_what_a_start_refuses(tmp_path: Path, user: Path,
                                               corpus: dict[str, Path], damage: str) -> None:
    shards = user / "ds" / "tokens" / tokenizer_id(user / "tok")
    settings: dict[str, object] = {}
    expected = {"truncated shard": "bytes, manifest says",
                "other tokenizer": "tokenized with tokenizer",
                "too few windows": "fewer than one step's"}[damage]
    if damage == "truncated shard":
        shard = sorted(shards.glob("train-*.bin"))[0]
        shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "other tokenizer":
        manifest = json.loads((shards / "manifest.json").read_text("utf-8"))
        manifest["tokenizer"]["id"] = "0123456789abcdef"
        (shards / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    else:
        settings = {"seq_len": 4096, "micro_batch": 64}
    config = write_run(tmp_path, corpus, dataset=str(user / "ds"), tokenizer=str(user / "tok"),
                       **settings)
    for args in (("--dry-run",), ()):
        result = homellm("train", str(config), *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1, (args, result.stderr)
        assert expected in lines[0], (args, lines[0])
