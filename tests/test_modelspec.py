"""ModelSpec: exact parameter counts against transformers on the meta device, the catalog,
the training presets, config errors, and the planner-facing formulas."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from homellm.errors import ConfigError
from homellm.models_catalog import (
    CATALOG,
    TRAIN_PRESET_NOMINAL,
    TRAIN_PRESETS,
    catalog_entry,
    catalog_names,
    resolve_model,
    train_preset_spec,
)
from homellm.modelspec import ParamCounts, model_spec_from_config


def _hf_count(config: dict[str, Any]) -> tuple[int, Any]:
    """Build the model with transformers on the meta device (no memory); count parameters
    (tied weights appear once in ``model.parameters()``)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # a deep copy: transformers 5 writes rope_theta into the rope_scaling dict it is given,
    # which would change the catalog's own rows for the tests that follow
    cfg = transformers.AutoConfig.for_model(**copy.deepcopy(config))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters()), cfg


SMALL = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 101,
         "max_position_embeddings": 128}
MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 24}
SMALL_CASES = {
    "qwen3": {"model_type": "qwen3", "head_dim": 32},
    "qwen3-bias-tied": {"model_type": "qwen3", "head_dim": 16, "attention_bias": True,
                        "tie_word_embeddings": True},
    "qwen3_moe": {"model_type": "qwen3_moe", "head_dim": 32, **MOE},
    "qwen3_moe-sparse-step": {"model_type": "qwen3_moe", "head_dim": 32, **MOE,
                              "num_hidden_layers": 6, "decoder_sparse_step": 2,
                              "mlp_only_layers": [5]},
    "qwen2": {"model_type": "qwen2"},
    "qwen2-tied-sliding": {"model_type": "qwen2", "tie_word_embeddings": True,
                           "use_sliding_window": True, "sliding_window": 8,
                           "max_window_layers": 1},
    "qwen2_moe-shared": {"model_type": "qwen2_moe", **MOE,
                         "shared_expert_intermediate_size": 40, "qkv_bias": False},
    "llama-biases": {"model_type": "llama", "attention_bias": True, "mlp_bias": True},
    "llama-head_dim": {"model_type": "llama", "head_dim": 24},
    "mistral": {"model_type": "mistral", "head_dim": 8, "sliding_window": 16},
    "mixtral": {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "gemma": {"model_type": "gemma", "head_dim": 16},
    "gemma2": {"model_type": "gemma2", "head_dim": 16, "sliding_window": 8},
    "gemma3_text": {"model_type": "gemma3_text", "head_dim": 16, "sliding_window": 8,
                    "num_hidden_layers": 7},
}


@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_small_configs_match_transformers_exactly(case: str) -> None:
    config = {**SMALL, **SMALL_CASES[case]}
    spec = model_spec_from_config(config)
    count, cfg = _hf_count(config)
    assert spec.params.total == count
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types:
        assert spec.sliding_window_layers == layer_types.count("sliding_attention")
    expected_head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // 4
    assert spec.head_dim == expected_head_dim


@pytest.mark.parametrize("name", catalog_names())
def test_catalog_configs_match_transformers_exactly(name: str) -> None:
    entry = catalog_entry(name)
    assert entry is not None
    count, _ = _hf_count(entry.config)
    assert entry.spec().params.total == count


def test_qwen3_30b_a3b_by_hand() -> None:
    spec = resolve_model("Qwen3-30B-A3B")
    h, layers, nq, nkv, d, experts, k, ffn, vocab = 2048, 48, 32, 4, 128, 128, 8, 768, 151936
    assert (spec.head_dim, spec.num_heads * spec.head_dim) == (128, 4096)  # ≠ hidden 2048
    attn = h * nq * d + 2 * h * nkv * d + nq * d * h + 2 * d      # q, k, v, o, q/k norms
    norms = 2 * h
    router = experts * h
    expert = 3 * h * ffn                                            # gate, up, down
    embedding = vocab * h
    total = layers * (attn + norms + router + experts * expert) + h + 2 * embedding
    active = layers * (attn + norms + router + k * expert) + h + 2 * embedding
    assert spec.params == ParamCounts(total=total, active=active, embedding=embedding,
                                      lm_head=embedding, routed_experts=layers * experts * expert)
    assert (total, active) == (30_532_122_624, 3_353_032_704)
    # plan-facts: 30.53B / 3.35B; card: 30.5B total, 3.3B activated, 29.9B non-embedding
    assert round(total / 1e9, 2) == 30.53 and round(active / 1e9, 2) == 3.35
    assert round(spec.params.non_embedding / 1e9, 1) == 29.9
    assert spec.kv_bytes_per_token(2) == 96 * 1024
    assert spec.params_per_expert == expert and spec.moe_layers == 48


# the model cards' own figures (billions; total, active, non-embedding), and plan-facts §1
CARDS = {
    "Qwen3-0.6B": (0.6, None, 0.44), "Qwen3-1.7B": (1.7, None, 1.4),
    "Qwen3-4B": (4.0, None, 3.6), "Qwen3-8B": (8.2, None, 6.95),
    "Qwen3-14B": (14.8, None, 13.2), "Qwen3-32B": (32.8, None, 31.2),
    "Qwen3-30B-A3B": (30.5, 3.3, 29.9), "Qwen3-235B-A22B": (235, 22, 234),
    "Qwen2.5-7B": (7.61, None, 6.53), "Llama-3.1-8B": (8.03, None, None),
    "Llama-3.1-70B": (70.6, None, None), "Llama-3.2-3B": (3.21, None, None),
    "Mistral-7B-v0.3": (7.25, None, None), "Mixtral-8x7B-v0.1": (46.7, 12.9, None),
    "gemma-2-9b": (9.24, None, None),
    "Qwen3-30B-A3B-Instruct-2507": (30.5, 3.3, 29.9),
    "Qwen3-Coder-30B-A3B-Instruct": (30.5, 3.3, None),
    "Qwen2.5-7B-Instruct": (7.61, None, 6.53),
    # Qwen2.5-14B/32B (and -Instruct): the cards say 14.7B/13.1B and 32.5B/31.0B where the
    # configs count 14.77B/13.21B and 32.76B/31.21B, so they are left out here
}
PLAN_FACTS = {"Qwen3-30B-A3B": (30.53, 3.35), "Qwen3-235B-A22B": (235.1, 22.2),
              "Qwen3-32B": (32.76, None), "Qwen3-8B": (8.19, None),
              "Llama-3.1-8B": (8.03, None), "Llama-3.1-70B": (70.55, None)}


def _close(ours: int, card: float) -> bool:
    """Within one unit of the card's last digit (cards round, some truncate: 3.35 → "3.3")."""
    digits = len(repr(float(card)).split(".")[1].rstrip("0")) if card % 1 else 0
    return abs(ours / 1e9 - card) < 10 ** -digits


def test_catalog_agrees_with_model_cards_and_plan_facts() -> None:
    for name, (total, active, non_emb) in CARDS.items():
        p = resolve_model(name).params
        assert _close(p.total, total), name
        assert active is None or _close(p.active, active), name
        assert non_emb is None or _close(p.non_embedding, non_emb), name
    for name, (total, active) in PLAN_FACTS.items():
        p = resolve_model(name).params
        assert _close(p.total, total), name
        assert active is None or _close(p.active, active), name
    # exact figures known from the released safetensors (also in plan-facts to 2 decimals)
    assert resolve_model("Llama-3.1-8B").params.total == 8_030_261_248
    assert resolve_model("Llama-3.1-70B").params.total == 70_553_706_496


def test_catalog_entries_name_their_source() -> None:
    required = {"Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
                "Qwen3-30B-A3B", "Qwen3-235B-A22B", "Llama-3.1-8B", "Llama-3.1-70B",
                "Mistral-7B-v0.3", "Qwen2.5-7B"}
    assert required <= set(catalog_names())
    for entry in CATALOG:
        assert entry.source and "/" in entry.repo
        assert entry.verified == ("[recalled]" not in entry.source)
        assert entry.repo in entry.spec().source


@pytest.mark.parametrize(("instruct", "base"), [
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B"), ("Qwen/Qwen2.5-14B-Instruct", "Qwen2.5-14B"),
    ("Qwen/Qwen2.5-32B-Instruct", "Qwen2.5-32B")])
def test_qwen25_instruct_models_have_their_own_32k_window(instruct: str, base: str) -> None:
    # their config.json says 32768 (the card: 131072 only with YaRN factor 4); the base models'
    # says 131072. Same shapes, so the same parameters.
    spec, base_spec = resolve_model(instruct), resolve_model(base)
    assert spec.name == instruct.split("/")[1] and instruct in spec.source
    assert spec.max_position_embeddings == 32768
    assert base_spec.max_position_embeddings == 131072
    assert spec.params == base_spec.params
    assert "32,768" in spec.source


def test_qwen3_2507_and_coder_entries() -> None:
    instruct = resolve_model("Qwen/Qwen3-30B-A3B-Instruct-2507")
    assert resolve_model("Qwen/Qwen3-30B-A3B-Thinking-2507").name == instruct.name
    coder = resolve_model("Qwen/Qwen3-Coder-30B-A3B-Instruct")
    assert coder.name == "Qwen3-Coder-30B-A3B-Instruct"          # its own repo, not an alias
    assert instruct.max_position_embeddings == coder.max_position_embeddings == 262144
    assert resolve_model("Qwen3-30B-A3B").max_position_embeddings == 40960
    # the Coder's intermediate_size (5472) builds no layer: every layer is sparse
    assert coder.params == instruct.params == resolve_model("Qwen3-30B-A3B").params
    assert catalog_entry("Qwen3-Coder-30B-A3B-Instruct").config["rope_theta"] == 10000000


def test_catalog_facts_read_from_config_copies() -> None:
    # what the [recalled] rows said before they were re-read, field by field, from copies
    llama70 = catalog_entry("Llama-3.1-70B").config["rope_scaling"]
    assert llama70 == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert catalog_entry("Qwen3-235B-A22B").config["intermediate_size"] == 12288
    assert resolve_model("Mistral-7B-v0.3").head_dim == 128        # derived: no head_dim key
    assert catalog_entry("gemma-2-9b").config["rope_theta"] == 10000.0
    assert catalog_entry("gemma-3-1b-it").config["rope_theta"] == 1000000
    unverified = {entry.name for entry in CATALOG if not entry.verified}
    assert unverified == {"Qwen3-30B-A3B-Instruct-2507"}     # rope_theta: no copy of its config


@pytest.mark.parametrize("preset", list(TRAIN_PRESETS))
def test_train_presets_build_and_land_on_their_nominal_size(preset: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3Config(**TRAIN_PRESETS[preset])
    assert config.vocab_size == 32000
    count, _ = _hf_count({"model_type": "qwen3", **TRAIN_PRESETS[preset]})
    spec = train_preset_spec(preset)
    assert spec.params.total == count
    # nominal sizes include the embeddings (tied ones once), as GPT-3 counts them
    assert abs(count / TRAIN_PRESET_NOMINAL[preset] - 1) < 0.05
    assert spec.tie_embeddings == (preset in ("125M", "355M"))


def test_resolve_model_names_aliases_and_paths(tmp_path: Path) -> None:
    assert resolve_model("qwen3-30b-a3b").name == "Qwen3-30B-A3B"
    assert resolve_model("Qwen/Qwen3-30B-A3B").name == "Qwen3-30B-A3B"
    assert resolve_model("QWEN/QWEN2.5-7B-INSTRUCT").name == "Qwen2.5-7B-Instruct"
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct").name == "Llama-3.1-8B"
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(catalog_entry("Qwen3-8B").config))
    from_folder = resolve_model(str(folder))
    assert from_folder.name == "my-model" and from_folder.source == str(folder / "config.json")
    assert from_folder.params == resolve_model("Qwen3-8B").params
    assert resolve_model(folder / "config.json").params == from_folder.params


def test_resolve_model_unknown_lists_close_names() -> None:
    with pytest.raises(ConfigError, match=r"close names: .*Qwen3-30B-A3B") as err:
        resolve_model("qwen3-30b-a3")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        resolve_model("./nowhere/config.json")


@pytest.mark.parametrize(("config", "field"), [
    ({**SMALL, "model_type": "gpt2"}, "model_type"),
    ({k: v for k, v in SMALL.items() if k != "vocab_size"} | {"model_type": "llama"},
     "vocab_size"),
    ({**SMALL, "model_type": "qwen3"}, "head_dim"),        # qwen3 cannot derive it
    ({**SMALL, "model_type": "qwen3_moe", "head_dim": 16, "num_experts": 8,
      "moe_intermediate_size": 8}, "num_experts_per_tok"),
    ({**SMALL, "model_type": "llama", "hidden_size": "64"}, "hidden_size"),
    ({**SMALL, "model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 3},
     "num_experts_per_tok"),
])
def test_config_errors_name_file_and_field(tmp_path: Path, config: dict[str, Any],
                                           field: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        model_spec_from_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message and "\n" not in message
    assert err.value.exit_code == 2


def test_unreadable_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        model_spec_from_config(tmp_path)                    # a folder without config.json
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        model_spec_from_config(tmp_path)
    with pytest.raises(ConfigError, match="multimodal"):
        model_spec_from_config({"model_type": "gemma3", "text_config": {}})


def test_decode_read_bytes_and_distinct_experts() -> None:
    moe = resolve_model("Qwen3-30B-A3B")
    p = moe.params
    # batch 1: active weights minus the embedding lookup (LM head read) ≈ 6.1 GB in bf16
    assert moe.decode_read_bytes(2) == 2 * (p.active - p.embedding)
    assert round(moe.decode_read_bytes(2) / 1e9, 1) == 6.1
    # every expert touched: all weights but the embedding lookup
    assert moe.decode_read_bytes(2, distinct_experts=128) == 2 * (p.total - p.embedding)
    assert moe.decode_read_bytes(2, distinct_experts=1000) == 2 * (p.total - p.embedding)
    got = [round(moe.expected_distinct_experts(b)) for b in (1, 4, 8, 16, 32, 64)]
    assert got == [8, 29, 52, 82, 112, 126]                   # plan-facts §4
    assert moe.expected_distinct_experts(1) == pytest.approx(8)
    assert moe.weight_bytes(2) == 2 * p.total
    tied = resolve_model("Qwen3-4B")                         # the tied head is still read
    assert tied.decode_read_bytes(1) == tied.params.total
    assert tied.expected_distinct_experts(64) == 0
    dense = resolve_model("Llama-3.1-8B")
    assert dense.decode_read_bytes(2) == 2 * (dense.params.total - dense.params.embedding)


def test_flops_per_token() -> None:
    spec = resolve_model("Llama-3.1-8B")
    n = spec.params.total - spec.params.embedding            # untied: LM head in, lookup out
    big_l, big_h, q, t = 32, 32, 128, 2048
    assert spec.train_flops_per_token(t) == 6 * n + 12 * big_l * big_h * q * t
    assert spec.forward_flops_per_token(t) == 2 * n + 4 * big_l * big_h * q * t
    moe = resolve_model("Qwen3-30B-A3B")                     # H·Q = 4096, twice the hidden
    n_moe = moe.params.active - moe.params.embedding
    assert moe.train_flops_per_token(4096) == 6 * n_moe + 12 * 48 * 4096 * 4096
    tied = train_preset_spec("125M")                         # tied: the head matmul counts
    assert tied.forward_flops_per_token(0) == 2 * tied.params.total
    gemma = resolve_model("gemma-3-1b-it")                   # 22 sliding (512) + 4 global layers
    assert gemma.sliding_window_layers == 22 and gemma.sliding_window == 512
    assert gemma.attended_positions(8192) == 4 * 8192 + 22 * 512
    assert math.isclose(gemma.train_flops_per_token(100), 3 * gemma.forward_flops_per_token(100))
