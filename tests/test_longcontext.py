"""Long context: the model's window, the YaRN its card documents, the factor for an asked
context, and what `plan serve --write` and `check` make of it (the real CLI)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from homellm.longcontext import (
    ContextWindow,
    LongContextError,
    extension_for,
    window_for_source,
    window_from_config,
)
from homellm.models_catalog import catalog_entry
from tests.gguf_header import qwen3_moe_metadata, write_gguf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No model of the machine's own Hugging Face cache leaks into these tests."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def homellm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "homellm.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd, check=False)


def check_argv(stack: Path) -> list[list[str]]:
    done = homellm("check", "-c", str(stack), "--json", cwd=stack.parent)
    assert done.returncode == 0, done.stderr
    return [r["command"] for r in json.loads(done.stdout)["replicas"] if r["command"]]


def overrides(argv: list[str], flag: str = "--hf-overrides") -> dict | None:
    assert argv.count(flag) <= 1, argv
    return json.loads(argv[argv.index(flag) + 1]) if flag in argv else None


# --- the factor --------------------------------------------------------------------------------

@pytest.mark.parametrize(("context", "factor", "window"), [
    (32768, None, None), (40960, None, None),        # within config.json's 40,960
    (65536, 2.0, 65536), (131072, 4.0, 131072),      # the card's own examples
    (40961, 1.5, 49152), (100_000, 3.25, 106_496),   # rounded up to a quarter
])
def test_smallest_documented_factor_covers_the_context(context: int, factor: float | None,
                                                       window: int | None) -> None:
    qwen = window_for_source("Qwen/Qwen3-30B-A3B")
    assert qwen is not None and qwen.native == 40960 and qwen.recipe is not None
    rope = extension_for(qwen, context)
    if factor is None:
        assert rope is None
        return
    assert rope is not None
    assert (rope.factor, rope.max_context, rope.original_max_position_embeddings) == (
        factor, window, 32768)
    assert rope.rope_parameters() == {"rope_type": "yarn", "factor": factor,
                                      "original_max_position_embeddings": 32768,
                                      "rope_theta": 1000000.0}
    assert rope.config_overrides()["max_position_embeddings"] == window


def test_beyond_the_documented_recipe_is_refused_naming_the_limit() -> None:
    qwen = window_for_source("qwen3-30b-a3b")
    assert qwen is not None
    with pytest.raises(LongContextError, match="set max_context to 131072 or less") as caught:
        extension_for(qwen, 200_000)
    assert caught.value.limit == 131072 and caught.value.exit_code == 2


@pytest.mark.parametrize(("source", "limit", "why"), [
    ("Qwen/Qwen3-0.6B", 40960, "document no rope scaling"),      # its card has no YaRN section
    ("Qwen/Qwen2.5-7B", 131072, "document no rope scaling"),     # base: 131,072, no recipe
    ("meta-llama/Llama-3.1-8B", 131072, "its config's own rope scaling (llama3 factor 8"),
])
def test_models_without_a_recipe_for_more_are_refused(source: str, limit: int, why: str) -> None:
    window = window_for_source(source)
    assert window is not None
    with pytest.raises(LongContextError, match=re.escape(why)) as caught:
        extension_for(window, 200_000)
    assert caught.value.limit == limit


def test_qwen25_instruct_window_is_32768_with_the_cards_yarn() -> None:
    window = window_for_source("Qwen/Qwen2.5-7B-Instruct")
    assert window is not None and window.native == 32768
    rope = extension_for(window, 131072)
    assert rope is not None and rope.factor == 4.0


def test_a_local_copy_of_a_catalog_model_gets_its_recipe_and_others_none(tmp_path: Path) -> None:
    entry = catalog_entry("Qwen3-8B")
    assert entry is not None
    copy_dir = tmp_path / "my-qwen3-8b-finetune"
    copy_dir.mkdir()
    (copy_dir / "config.json").write_text(json.dumps(entry.config))
    window = window_for_source(str(copy_dir))
    assert window is not None and window.recipe == entry.yarn
    # Qwen3-1.7B: same model_type and window as Qwen3-8B, but its card documents no YaRN
    small = catalog_entry("Qwen3-1.7B")
    assert small is not None and small.yarn is None
    assert window_from_config(dict(small.config)).recipe is None


def test_a_config_that_scales_but_keeps_the_short_window_names_the_field_to_fix() -> None:
    entry = catalog_entry("Qwen3-30B-A3B")
    assert entry is not None
    # what the Qwen3 card tells users to add to config.json, max_position_embeddings untouched
    edited = {**copy.deepcopy(entry.config), "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    window = window_from_config(edited, "edited")
    assert window.scaled_in_config and window.recipe is None
    with pytest.raises(LongContextError, match=r"set it to 131072 in config\.json"):
        extension_for(window, 131072)


def test_the_hugging_face_cache_is_read_before_the_catalog(_empty_hf_cache: Path) -> None:
    snapshot = _empty_hf_cache / "models--acme--long-qwen" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(
        {"model_type": "qwen3", "max_position_embeddings": 8192, "rope_theta": 5e5}))
    (_empty_hf_cache / "models--acme--long-qwen" / "refs").mkdir()
    (_empty_hf_cache / "models--acme--long-qwen" / "refs" / "main").write_text("0123abc")
    window = window_for_source("acme/long-qwen")
    assert window is not None and (window.native, window.rope_theta) == (8192, 5e5)
    assert window_for_source("acme/not-cached-anywhere") is None


def test_a_gguf_windows_come_from_its_metadata(tmp_path: Path) -> None:
    plain = write_gguf(tmp_path / "q.gguf", qwen3_moe_metadata())
    window = window_for_source(str(plain))
    assert window is not None and window.native == 40960
    assert window.recipe is not None and window.recipe.original_max_position_embeddings == 32768
    scaled = write_gguf(tmp_path / "scaled.gguf", qwen3_moe_metadata(**{
        "qwen3moe.rope.scaling.type": "yarn", "qwen3moe.rope.scaling.factor": 4.0,
        "qwen3moe.rope.scaling.original_context_length": 32768,
        "qwen3moe.context_length": 131072}))
    window = window_for_source(str(scaled))
    assert window is not None and window.scaled_in_config and window.native == 131072
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 60)
    assert window_for_source(str(junk)) is None


def test_the_window_dataclass_is_the_pinned_api() -> None:
    window = ContextWindow(native=2048, recipe=None, scaled_in_config=False)
    assert extension_for(window, 2048) is None
    with pytest.raises(LongContextError):
        extension_for(window, 4096)


# --- plan serve --write, then check (the real CLI) ----------------------------------------------

@pytest.mark.parametrize(("context", "factor"), [(131072, 4.0), (65536, 2.0), (32768, None)])
def test_plan_writes_the_repo_id_and_check_emits_the_yarn(tmp_path: Path, context: int,
                                                          factor: float | None) -> None:
    stack = tmp_path / "homellm.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
                   str(context), "--write", str(stack), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = stack.read_text()
    assert "source: Qwen/Qwen3-30B-A3B\n" in text
    commands = check_argv(stack)
    assert commands
    for argv in commands:
        assert argv[argv.index("--max-model-len") + 1] == str(context)
        got = overrides(argv)
        if factor is None:
            assert got is None
            continue
        assert got == {"rope_parameters": {"rope_type": "yarn", "factor": factor,
                                           "original_max_position_embeddings": 32768,
                                           "rope_theta": 1000000.0},
                       "max_position_embeddings": context}
    if factor is not None:
        assert "--hf-overrides" in done.stdout and "shorter texts" in done.stdout


def test_check_refuses_a_context_beyond_the_recipe_in_one_line(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  q:\n    source: Qwen/Qwen3-30B-A3B\n    engine: vllm\n"
                     "    max_context: 200000\n    replicas: [{gpus: [0]}]\n")
    done = homellm("check", "-c", str(stack), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{stack}:5: models.q.max_context:" in lines[0]
    assert "set max_context to 131072 or less" in lines[0]


def test_check_refuses_a_local_model_without_a_recipe(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(
        {"model_type": "my_own_arch", "max_position_embeddings": 2048, "rope_theta": 10000.0}))
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  mine:\n    source: ./my-model\n    engine: transformers\n"
                     "    device: cpu\n    max_context: 4096\n    replicas: [{}]\n")
    done = homellm("check", "-c", str(stack), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{stack}:6: models.mine.max_context:" in lines[0]
    assert "window (2,048 tokens" in lines[0] and "set max_context to 2048 or less" in lines[0]


def test_check_refuses_rope_scaling_that_transformers_serve_cannot_be_given(
        tmp_path: Path) -> None:
    """Qwen3 has a recipe for 131072, but transformers serve takes no override: refused,
    naming the engines that get it; within the window it is only the not-enforced warning."""
    stack = tmp_path / "homellm.yaml"
    text = ("models:\n  q:\n    source: Qwen/Qwen3-30B-A3B\n    engine: transformers\n"
            "    max_context: {ctx}\n    replicas: [{{gpus: [0]}}, {{gpus: [1], engine: vllm,"
            " role: backup}}]\n")
    stack.write_text(text.format(ctx=131072))
    done = homellm("check", "-c", str(stack), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{stack}:5: models.q.max_context:" in lines[0]
    assert "transformers serve cannot" in lines[0] and "set max_context to 40960" in lines[0]
    stack.write_text(text.format(ctx=40960))
    done = homellm("check", "-c", str(stack), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not enforced" in done.stderr


def test_the_readme_stack_example_checks_with_the_rope_override(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    example = next(b for b in blocks if "source: Qwen/Qwen3-30B-A3B" in b)
    stack = tmp_path / "homellm.yaml"
    stack.write_text(example)
    for argv in check_argv(stack):
        context = int(argv[argv.index("--max-model-len") + 1])
        got = overrides(argv)
        assert got is not None, argv
        assert got["max_position_embeddings"] >= context > 40960
        assert got["rope_parameters"]["rope_type"] == "yarn"
        assert got["rope_parameters"]["original_max_position_embeddings"] == 32768


def test_an_unknown_hub_model_gets_one_warning_and_no_override(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  q:\n    source: acme/never-heard-of-it\n    engine: vllm\n"
                     "    max_context: 131072\n    replicas: [{gpus: [0]}]\n")
    done = homellm("check", "-c", str(stack), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [(w["line"], w["field"]) for w in data["warnings"]] == [(5, "models.q.max_context")]
    assert "is not known here" in data["warnings"][0]["message"]
    assert overrides(data["replicas"][0]["command"]) is None
    # a hub id that is known (the catalog) gets no such warning
    stack.write_text(stack.read_text().replace("acme/never-heard-of-it", "Qwen/Qwen3-8B"))
    known = json.loads(homellm("check", "-c", str(stack), "--json", cwd=tmp_path).stdout)
    assert known["warnings"] == []
