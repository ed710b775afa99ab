"""Training presets: exact parameter counts against ModelSpec and transformers."""

from __future__ import annotations

import pytest
import torch

from homellm.errors import ConfigError
from homellm.models_catalog import train_preset_spec
from homellm.modelspec import model_spec_from_config
from homellm.train.presets import (
    PRESETS,
    build_model,
    canonical_preset,
    describe_params,
    param_counts,
    preset_config,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_counts_equal_modelspec_on_meta(name: str) -> None:
    config = preset_config(name, 32000)
    model = build_model(config, device="meta", dtype=torch.bfloat16)
    spec = model_spec_from_config(config.to_dict()).params
    assert param_counts(model) == (spec.total, spec.non_embedding)
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["tiny", "125m"])
@pytest.mark.parametrize("tie", [True, False])
def test_counts_match_transformers_sum_of_numel(name: str, tie: bool) -> None:
    config = preset_config(name, 5003, tie=tie)
    model = build_model(config, device="meta")
    total, non_embedding = param_counts(model)
    assert total == sum(p.numel() for p in model.parameters())
    head = 0 if tie else 5003 * config.hidden_size
    assert non_embedding == total - 5003 * config.hidden_size - head
    assert model.config.tie_word_embeddings is tie


@pytest.mark.parametrize(("ours", "catalog"), [("125m", "125M"), ("350m", "355M"),
                                               ("1.3b", "1.3B"), ("3b", "3B")])
def test_catalog_shapes_reused(ours: str, catalog: str) -> None:
    spec = model_spec_from_config(preset_config(ours, 32000).to_dict()).params
    assert spec.total == train_preset_spec(catalog).params.total
    assert canonical_preset(catalog) == ours


def test_config_fields() -> None:
    config = preset_config("760m", 50000, max_position=8192, rope_theta=500000.0)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == \
        (1536, 24, 16)
    assert config.vocab_size == 50000 and config.max_position_embeddings == 8192
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert config.model_type == "qwen3" and config.hidden_act == "silu"
    assert not config.use_sliding_window
    assert preset_config("1.3b", 100).num_key_value_heads == 8          # GQA
    at_32k = model_spec_from_config(preset_config("760m", 32000).to_dict()).params
    assert (at_32k.total, at_32k.non_embedding) == (757_020_672, 707_868_672)


def test_tiny_runs_forward_on_cpu() -> None:
    model = build_model(preset_config("tiny", 1000))
    total, _ = param_counts(model)
    assert 100_000 <= total <= 1_000_000
    out = model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    assert out.logits.shape == (1, 4, 1000) and torch.isfinite(out.loss)
    assert describe_params(model) == "parameters: 522.0k total, 394.0k non-embedding"


def test_unknown_preset_and_bad_vocab() -> None:
    with pytest.raises(ConfigError, match="unknown; presets: tiny, 125m"):
        preset_config("7b", 32000)
    with pytest.raises(ConfigError, match="vocab_size"):
        preset_config("tiny", 0)

