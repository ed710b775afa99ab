"""plan serve beyond the model's window: the YaRN flags, the scaled max context, what static
YaRN costs on short prompts, and the stack file's source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homellm.errors import ConfigError
from homellm.plan.serve import plan_serve
from homellm.plan.stackfile import stack_source
from tests.plan.serve_specs import PRO_6000, QWEN3_30B_A3B

TWO_PRO = [PRO_6000, PRO_6000]


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def test_128k_on_qwen3_carries_yarn_and_the_scaled_max_context() -> None:
    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=131072, concurrency=1, dtype="bfloat16")
    for layout in plan.layouts.values():
        flags = layout.flags
        assert flags[flags.index("--max-model-len") + 1] == "131072"
        hf = json.loads(flags[flags.index("--hf-overrides") + 1])
        assert hf["rope_parameters"]["factor"] == 4.0
        assert hf["max_position_embeddings"] == 131072
        # "max ctx" is the scaled model's limit (or the KV cache's), no longer 40,960
        assert 40960 < layout.memory.max_context <= 131072
        assert layout.fits
    chosen = plan.chosen
    assert chosen is not None and chosen.rope is not None
    notes = " ".join(chosen.notes)
    assert "smallest factor" in notes and "shorter texts" in notes
    yarn = {f.key: f for f in chosen.yarn.values()}
    assert yarn["serve.yarn.factor"].value == 4.0
    assert yarn["serve.yarn.attention_logit_scale"].value == pytest.approx(1.29648, abs=1e-5)
    # head_dim 128, rope_theta 1e6, original 32,768: rotary pairs 24..63 of 64 change
    assert yarn["serve.yarn.changed_frequencies"].value == pytest.approx(40 / 64)
    assert all(f.check() for f in chosen.figures())


def test_64k_takes_factor_2_and_32k_none() -> None:
    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=65536, concurrency=1, dtype="bfloat16")
    chosen = plan.chosen
    assert chosen is not None and chosen.rope is not None and chosen.rope.factor == 2.0
    within = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=32768, concurrency=1, dtype="bfloat16")
    assert within.chosen is not None and within.chosen.rope is None
    assert "--hf-overrides" not in within.chosen.flags and not within.chosen.yarn


def test_beyond_the_recipe_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="set --context to 131072 or less"):
        plan_serve(QWEN3_30B_A3B, TWO_PRO, context=200_000, concurrency=1, dtype="bfloat16")


@pytest.mark.parametrize(("model", "source"), [
    ("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B"),
    ("Qwen3-30B-A3B-Base", "Qwen/Qwen3-30B-A3B-Base"),   # an alias keeps its own repo id
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("someone/their-model", "someone/their-model"),
])
def test_stack_source_is_the_hub_repo_id(model: str, source: str) -> None:
    assert stack_source(model) == source


def test_stack_source_of_a_config_json_is_its_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert stack_source(str(tmp_path / "config.json")) == str(tmp_path.resolve())


def test_write_stack_itself_writes_the_repo_id(tmp_path: Path) -> None:
    from homellm.config import load_stack
    from homellm.plan.stackfile import write_stack

    plan = plan_serve(QWEN3_30B_A3B, TWO_PRO, context=131072, concurrency=1, dtype="bfloat16")
    for layout in plan.layouts:
        path = write_stack(tmp_path / f"{layout}.yaml", plan, source="Qwen3-30B-A3B",
                           layout=layout)
        stack = load_stack(path)
        assert [m.source for m in stack.models.values()] == ["Qwen/Qwen3-30B-A3B"]
