"""Model presets for pre-training: Qwen3-style ``transformers`` models (RMSNorm, RoPE, SwiGLU,
q/k-norm, GQA from 1.3b) whose vocabulary comes from the tokenizer.

The 125m, 350m, 1.3b and 3b shapes are ``models_catalog.TRAIN_PRESETS`` (so ``homellm
plan`` and ``homellm train`` size the same models); ``tiny`` is for tests and ``760m`` is the
GPT-3 760M shape (hidden 1536, 24 layers, 16 heads of 96) with the SwiGLU width set so the
total lands near 760M at a 32,000 vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from homellm.errors import ConfigError
from homellm.models_catalog import TRAIN_PRESETS
from homellm.modelspec import ModelSpec, model_spec_from_config

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, Qwen3Config, Qwen3ForCausalLM


def _shape(h: int, layers: int, heads: int, kv: int, head_dim: int, ffn: int,
           tied: bool) -> dict[str, Any]:
    return {"hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim, "intermediate_size": ffn,
            "tie_word_embeddings": tied}


_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "tie_word_embeddings")


def _from_catalog(name: str) -> dict[str, Any]:
    return {key: TRAIN_PRESETS[name][key] for key in _SHAPE_KEYS}


# name -> shape; totals at vocab 32,000: tiny 4.5M (0.39M non-embedding), 125m 123.7M,
# 350m 360.0M, 760m 757.0M (707.9M), 1.3b 1.301B, 3b 3.015B
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _shape(128, 2, 4, 2, 32, 384, tied=True),
    "125m": _from_catalog("125M"),
    "350m": _from_catalog("355M"),
    "760m": _shape(1536, 24, 16, 16, 96, 4352, tied=True),
    "1.3b": _from_catalog("1.3B"),
    "3b": _from_catalog("3B"),
}
_ALIASES = {"355m": "350m"}
DEFAULT_MAX_POSITION = 2048
DEFAULT_ROPE_THETA = 100_000.0
RMS_NORM_EPS = 1e-6


def preset_names() -> list[str]:
    return list(PRESETS)


def canonical_preset(name: str) -> str | None:
    """The preset's key for a name in any case (``125M`` → ``125m``); None if not a preset."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in PRESETS else None


def preset_config(name: str, vocab_size: int, *, max_position: int = DEFAULT_MAX_POSITION,
                  rope_theta: float = DEFAULT_ROPE_THETA, tie: bool | None = None,
                  bos_token_id: int | None = None, eos_token_id: int | None = None,
                  pad_token_id: int | None = None) -> Qwen3Config:
    """A ``transformers.Qwen3Config`` of a preset; ``tie`` overrides the preset's choice of tied
    input and output embeddings. ``max_position`` only records the longest trained length: RoPE
    has no position table."""
    from transformers import Qwen3Config

    key = canonical_preset(name)
    if key is None:
        raise ConfigError(f"model preset '{name}': unknown; presets: {', '.join(PRESETS)}")
    if vocab_size < 1:
        raise ConfigError(f"model preset '{name}': vocab_size must be 1 or more, "
                          f"got {vocab_size}")
    if max_position < 1 or rope_theta <= 0:
        raise ConfigError(f"model preset '{name}': max_position and rope_theta must be "
                          f"positive, got {max_position} and {rope_theta}")
    shape = dict(PRESETS[key])
    if tie is not None:
        shape["tie_word_embeddings"] = tie
    layers = shape["num_hidden_layers"]
    return Qwen3Config(
        vocab_size=vocab_size, **shape, max_position_embeddings=max_position,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        rms_norm_eps=RMS_NORM_EPS, attention_bias=False, hidden_act="silu",
        use_sliding_window=False, sliding_window=None, max_window_layers=layers,
        attention_dropout=0.0, initializer_range=0.02, use_cache=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def config_spec(config: Qwen3Config | dict[str, Any], name: str = "") -> ModelSpec:
    """The ModelSpec (parameter counts, memory and FLOPs facts) of a model config."""
    data = config if isinstance(config, dict) else config.to_dict()
    return model_spec_from_config(data, name=name or str(data.get("model_type")),
                                  source="homellm train preset")


def preset_spec(name: str, vocab_size: int, **kwargs: Any) -> ModelSpec:
    return config_spec(preset_config(name, vocab_size, **kwargs), name=f"homellm-{name}")


def tokenizer_vocab_size(tok_dir: str | Path) -> int:
    """The vocabulary the model's embedding needs: every id the tokenizer can produce."""
    from homellm.tokenizer import load_tokenizer

    return load_tokenizer(tok_dir).get_vocab_size(with_added_tokens=True)


def model_config(model: str, vocab_size: int, *, max_position: int = DEFAULT_MAX_POSITION,
                 rope_theta: float | None = None, tie: bool | None = None) -> PretrainedConfig:
    """A preset at ``vocab_size`` (with ``rope_theta``, ``max_position`` and ``tie``), or the
    config.json / model folder ``model`` names, as it is: its vocab_size must cover the
    tokenizer's ``vocab_size``."""
    from transformers import AutoConfig

    if canonical_preset(model) is not None:
        theta = {"rope_theta": rope_theta} if rope_theta else {}
        return preset_config(model, vocab_size, max_position=max_position, tie=tie, **theta)
    try:
        loaded = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: {model}: not a loadable model config "
                          f"({str(exc).splitlines()[0]})") from None
    _check_vocab(model, loaded.vocab_size, vocab_size)
    return loaded


def model_spec(model: str, vocab_size: int, **kwargs: Any) -> ModelSpec:
    """The ModelSpec of what :func:`model_config` builds, without importing transformers for
    a config path."""
    if canonical_preset(model) is not None:
        return config_spec(model_config(model, vocab_size, **kwargs),
                           name=f"homellm-{canonical_preset(model)}")
    spec = model_spec_from_config(model)
    _check_vocab(model, spec.vocab_size, vocab_size)
    return spec


def _check_vocab(model: str, model_vocab: int, tokenizer_vocab: int) -> None:
    if model_vocab < tokenizer_vocab:
        raise ConfigError(f"model: {model}: vocab_size {model_vocab} is below the tokenizer's "
                          f"{tokenizer_vocab}")


def build_model(config: Qwen3Config, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> Qwen3ForCausalLM:
    """A freshly initialised causal LM; ``device="meta"`` builds the shapes without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameters; tied weights counted once, and non-embedding leaves
    out the input embedding and an untied LM head, as model cards and ModelSpec count them."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = {id(p): p.numel() for m in _embedding_modules(model) for p in m.parameters()}
    return total, total - sum(embeddings.values())


def _embedding_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    found = [m for m in (get_in() if get_in else None, get_out() if get_out else None)
             if m is not None]
    return found


def describe_params(model: torch.nn.Module) -> str:
    """One line for the start of a run: ``parameters: 123.7M total, 99.1M non-embedding``."""
    total, non_embedding = param_counts(model)
    return f"parameters: {_human(total)} total, {_human(non_embedding)} non-embedding"


def _human(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"
