"""Built-in catalog of well-known architectures (their ``config.json`` facts, with sources) and
our own training presets; :func:`resolve_model` turns a name or a path into a ModelSpec.

Sources: "[src: ...]" names where the fields were read (a copy of the Hugging Face
``config.json`` in a public GitHub repository, or homellm's shared/reference/plan-facts.md,
which itself cites HF dumps); "[recalled]" marks fields written from memory, not re-read from
a source, and cross-checked only against the model card's parameter counts (tests).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homellm.errors import ConfigError
from homellm.modelspec import ModelSpec, model_spec_from_config


@dataclass(frozen=True)
class YarnRecipe:
    """Static YaRN as a model's authors document it: RoPE positions are interpolated by
    ``factor`` (≤ ``max_factor``) from ``original_max_position_embeddings`` tokens."""

    original_max_position_embeddings: int
    max_factor: float
    source: str                     # the model card (a copy we read) that documents it

    @property
    def max_context(self) -> int:
        return int(self.original_max_position_embeddings * self.max_factor)


@dataclass(frozen=True)
class CatalogEntry:
    name: str                       # short name, as the HF repo names it: "Qwen3-30B-A3B"
    repo: str                       # Hugging Face repo id: "Qwen/Qwen3-30B-A3B"
    config: dict[str, Any]          # the config.json fields that shape the model
    source: str                     # where the fields come from, "[recalled]" where not re-read
    card: str = ""                  # the model card's own parameter figures, for people and tests
    aliases: tuple[str, ...] = ()   # other repo ids with the same architecture

    @property
    def verified(self) -> bool:
        return "[recalled]" not in self.source

    def spec(self) -> ModelSpec:
        return model_spec_from_config(dict(self.config), name=self.name,
                                      source=f"{self.repo}: {self.source}")

    @property
    def yarn(self) -> YarnRecipe | None:
        """The rope-scaling recipe its card documents for contexts beyond its config's window."""
        return YARN_RECIPES.get(self.name)


_LLM_PROF = ("[src: config.json copy in github.com/citsjtu2020/LLM-Prof "
             "sglang/Model_Config.md]")
_PLAN_FACTS = "[src: shared/reference/plan-facts.md §1, from HF config.json dumps]"
_MLC = ("[src: HF config.json copies in github.com/mlc-ai/mlc-llm "
        "python/mlc_llm/model/model_preset.py @79d603f]")
_QWEN25_CARD = ("the card (copy in github.com/ZHUI/paddlenlp_model_readme "
                "Qwen/{name}/index.md @40a7101): \"The current config.json is set for context "
                "length up to 32,768 tokens\"; 131,072 with YaRN factor 4")


# The long-context recipes the model cards document (static YaRN). The Qwen3 cards from 4B up
# (dense and MoE) say "32,768 natively and 131,072 tokens with YaRN" and give
# {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}; the 0.6B and
# 1.7B cards give "Context Length: 32,768" and no YaRN section, so they get no recipe.
QWEN3_YARN = YarnRecipe(
    32768, 4.0, "Qwen3 model card, 'Processing Long Texts' (copies in github.com/"
    "JoseAdrianRodriguezGonzalez/Llm-Component @0dd5e6e: Qwen__Qwen3-30B-A3B-GGUF/README.md, "
    "QuantFactory__Qwen3-4B-GGUF/README.md)")
QWEN25_INSTRUCT_YARN = YarnRecipe(
    32768, 4.0, "Qwen2.5-Instruct model card, 'Processing Long Texts' (copy in github.com/"
    "ZHUI/paddlenlp_model_readme Qwen/Qwen2.5-7B-Instruct/index.md @10d0a05)")
YARN_RECIPES: dict[str, YarnRecipe] = {
    **{name: QWEN3_YARN for name in ("Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
                                     "Qwen3-30B-A3B", "Qwen3-235B-A22B")},
    **{name: QWEN25_INSTRUCT_YARN for name in ("Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct",
                                               "Qwen2.5-32B-Instruct")},
}


def _qwen3(h: int, layers: int, heads: int, kv: int, ffn: int, tied: bool) -> dict[str, Any]:
    return {"model_type": "qwen3", "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": 128,
            "intermediate_size": ffn, "vocab_size": 151936, "max_position_embeddings": 40960,
            "rope_theta": 1000000, "tie_word_embeddings": tied, "attention_bias": False,
            "use_sliding_window": False, "sliding_window": None, "max_window_layers": layers}


def _qwen3_moe(h: int, layers: int, heads: int, kv: int, ffn: int, moe_ffn: int,
               **extra: Any) -> dict[str, Any]:
    return {**_qwen3(h, layers, heads, kv, ffn, False), "model_type": "qwen3_moe",
            "moe_intermediate_size": moe_ffn, "num_experts": 128, "num_experts_per_tok": 8,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, **extra}


def _qwen2(h: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, tied: bool,
           max_pos: int) -> dict[str, Any]:
    return {"model_type": "qwen2", "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": ffn,
            "vocab_size": vocab, "max_position_embeddings": max_pos, "rope_theta": 1000000.0,
            "tie_word_embeddings": tied, "use_sliding_window": False,
            "sliding_window": max_pos, "max_window_layers": layers}


def _llama(h: int, layers: int, heads: int, ffn: int, tied: bool, factor: float,
           **extra: Any) -> dict[str, Any]:
    return {"model_type": "llama", "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": 8, "intermediate_size": ffn,
            "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "tie_word_embeddings": tied, "attention_bias": False, "mlp_bias": False, **extra}


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("Qwen3-0.6B", "Qwen/Qwen3-0.6B", _qwen3(1024, 28, 16, 8, 3072, True),
                 f"{_MLC} key qwen3_0.6b", "0.6B total, 0.44B non-embedding",
                 ("Qwen/Qwen3-0.6B-Base",)),
    CatalogEntry("Qwen3-1.7B", "Qwen/Qwen3-1.7B", _qwen3(2048, 28, 16, 8, 6144, True),
                 f"{_MLC} key qwen3_1.7b", "1.7B total, 1.4B non-embedding",
                 ("Qwen/Qwen3-1.7B-Base",)),
    CatalogEntry("Qwen3-4B", "Qwen/Qwen3-4B", _qwen3(2560, 36, 32, 8, 9728, True),
                 f"{_LLM_PROF} (transformers 4.51.2)", "4.0B total, 3.6B non-embedding",
                 ("Qwen/Qwen3-4B-Base",)),
    CatalogEntry("Qwen3-8B", "Qwen/Qwen3-8B", _qwen3(4096, 36, 32, 8, 12288, False),
                 f"{_LLM_PROF} (transformers 4.51.0); {_PLAN_FACTS}",
                 "8.2B total, 6.95B non-embedding", ("Qwen/Qwen3-8B-Base",)),
    CatalogEntry("Qwen3-14B", "Qwen/Qwen3-14B", _qwen3(5120, 40, 40, 8, 17408, False),
                 f"{_LLM_PROF} (transformers 4.51.0)", "14.8B total, 13.2B non-embedding",
                 ("Qwen/Qwen3-14B-Base",)),
    CatalogEntry("Qwen3-32B", "Qwen/Qwen3-32B", _qwen3(5120, 64, 64, 8, 25600, False),
                 f"{_LLM_PROF} (transformers 4.51.0); {_PLAN_FACTS}",
                 "32.8B total, 31.2B non-embedding"),
    CatalogEntry("Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B", _qwen3_moe(2048, 48, 32, 4, 6144, 768),
                 f"{_LLM_PROF} (transformers 4.51.0); {_PLAN_FACTS}",
                 "30.5B total, 3.3B activated, 29.9B non-embedding",
                 ("Qwen/Qwen3-30B-A3B-Base",)),
    CatalogEntry("Qwen3-30B-A3B-Instruct-2507", "Qwen/Qwen3-30B-A3B-Instruct-2507",
                 _qwen3_moe(2048, 48, 32, 4, 6144, 768, max_position_embeddings=262144,
                            rope_theta=10000000),
                 "[src: card copy in github.com/peterhan91/mimic_skills docs/qwen3-a3b.md "
                 "@c001b2f: 262,144 native, 48 layers, 32/4 heads, 128 experts, 8 active]; no "
                 "copy of its own config.json found: the other fields are Qwen3-30B-A3B's, and "
                 "rope_theta 10,000,000 is [recalled] (the Qwen3-Coder-30B-A3B-Instruct copy "
                 "has it). Thinking-2507 (alias): no copy of its config found either; its card "
                 "gives the same figures", "30.5B total, 3.3B activated, 29.9B non-embedding",
                 ("Qwen/Qwen3-30B-A3B-Thinking-2507",)),
    CatalogEntry("Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-Coder-30B-A3B-Instruct",
                 _qwen3_moe(2048, 48, 32, 4, 5472, 768, max_position_embeddings=262144,
                            rope_theta=10000000, max_window_layers=28,
                            router_aux_loss_coef=0.0),
                 "[src: config.json copy in github.com/ztxz16/fastllm "
                 "Qwen3-Coder-30B-A3B-Instruct/config.json @f8f04c3] (intermediate_size 5472 "
                 "is unused: every layer is sparse)", "30.5B total, 3.3B activated"),
    CatalogEntry("Qwen3-235B-A22B", "Qwen/Qwen3-235B-A22B",
                 _qwen3_moe(4096, 94, 64, 4, 12288, 1536),
                 f"{_PLAN_FACTS}; attention fields also in a GitHub catalog citing "
                 "huggingface.co/Qwen/Qwen3-235B-A22B/raw/main/config.json (retrieved "
                 "2026-05-20); intermediate_size 12288 (unused: every layer is sparse) [src: "
                 "github.com/alibaba/InferSim hf_configs/qwen3-235B-A22B_config.json @f2293da, "
                 "the 2507 file (262144, rope_theta 5e6), same shapes otherwise]",
                 "235B total, 22B activated, 234B non-embedding"),
    CatalogEntry("Qwen2.5-7B", "Qwen/Qwen2.5-7B",
                 _qwen2(3584, 28, 28, 4, 18944, 152064, False, 131072),
                 f"{_LLM_PROF} (transformers 4.40.1)", "7.61B total, 6.53B non-embedding"),
    CatalogEntry("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
                 {**_qwen2(3584, 28, 28, 4, 18944, 152064, False, 32768),
                  "sliding_window": 131072, "rms_norm_eps": 1e-06},
                 "[src: AutoConfig dump of Qwen/Qwen2.5-7B-Instruct in github.com/"
                 "kevinstephano/thunder_model_blocks hf_qwen2/qwen2_rope.py @1ab68b6]; "
                 + _QWEN25_CARD.format(name="Qwen2.5-7B-Instruct"),
                 "7.61B total, 6.53B non-embedding"),
    CatalogEntry("Qwen2.5-14B", "Qwen/Qwen2.5-14B",
                 {**_qwen2(5120, 48, 40, 8, 13824, 152064, False, 131072),
                  "rms_norm_eps": 1e-05},
                 f"{_LLM_PROF} (transformers 4.43.1)",
                 "card (copy in ZHUI/paddlenlp_model_readme Qwen/Qwen2.5-14B/index.md): "
                 "14.7B total, "
                 "13.1B non-embedding (config: 14.77B / 13.21B)"),
    CatalogEntry("Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-14B-Instruct",
                 _qwen2(5120, 48, 40, 8, 13824, 152064, False, 32768),
                 "no copy of its own config.json found: the shapes are Qwen2.5-14B's "
                 f"{_LLM_PROF}, max_position_embeddings from "
                 + _QWEN25_CARD.format(name="Qwen2.5-14B-Instruct"),
                 "14.7B total, 13.1B non-embedding"),
    CatalogEntry("Qwen2.5-32B", "Qwen/Qwen2.5-32B",
                 {**_qwen2(5120, 64, 40, 8, 27648, 152064, False, 131072),
                  "rms_norm_eps": 1e-05},
                 f"{_LLM_PROF} (transformers 4.43.1)",
                 "card (copy in ZHUI/paddlenlp_model_readme Qwen/Qwen2.5-32B/index.md): "
                 "32.5B total, "
                 "31.0B non-embedding (config: 32.76B / 31.21B)"),
    CatalogEntry("Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-32B-Instruct",
                 _qwen2(5120, 64, 40, 8, 27648, 152064, False, 32768),
                 "no copy of its own config.json found: the shapes are Qwen2.5-32B's "
                 f"{_LLM_PROF}, max_position_embeddings from "
                 + _QWEN25_CARD.format(name="Qwen2.5-32B-Instruct"),
                 "32.5B total, 31.0B non-embedding"),
    CatalogEntry("Llama-3.1-8B", "meta-llama/Llama-3.1-8B", _llama(4096, 32, 32, 14336, False, 8.0),
                 f"{_LLM_PROF} (transformers 4.43.0.dev0); {_PLAN_FACTS}", "8.03B total",
                 ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B",
                  "meta-llama/Meta-Llama-3.1-8B-Instruct")),
    CatalogEntry("Llama-3.1-70B", "meta-llama/Llama-3.1-70B",
                 _llama(8192, 80, 64, 28672, False, 8.0),
                 f"{_PLAN_FACTS}; same fields in GitHub copies of Llama-3.1-70B-Instruct's "
                 f"config.json; rope_scaling {_MLC} key llama3_1_70b", "70.6B total",
                 ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B",
                  "meta-llama/Meta-Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct")),
    CatalogEntry("Llama-3.2-3B", "meta-llama/Llama-3.2-3B",
                 _llama(3072, 28, 24, 8192, True, 32.0, head_dim=128),
                 f"{_LLM_PROF} (transformers 4.45.0.dev0)", "3.21B total",
                 ("meta-llama/Llama-3.2-3B-Instruct",)),
    CatalogEntry("Mistral-7B-v0.3", "mistralai/Mistral-7B-v0.3",
                 {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8,
                  "intermediate_size": 14336, "vocab_size": 32768,
                  "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                  "rms_norm_eps": 1e-05, "sliding_window": None, "tie_word_embeddings": False},
                 f"{_MLC} key mistral_7b_v03", "7.25B total",
                 ("mistralai/Mistral-7B-Instruct-v0.3",)),
    CatalogEntry("Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-v0.1",
                 {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8,
                  "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
                  "vocab_size": 32000, "max_position_embeddings": 32768,
                  "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
                 f"{_MLC} key Mixtral-8x7B-v0.1",
                 "46.7B total, 12.9B active (Mistral's announcement)",
                 ("mistralai/Mixtral-8x7B-Instruct-v0.1",)),
    CatalogEntry("gemma-2-9b", "google/gemma-2-9b",
                 {"model_type": "gemma2", "hidden_size": 3584, "num_hidden_layers": 42,
                  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                  "intermediate_size": 14336, "vocab_size": 256000,
                  "max_position_embeddings": 8192, "rope_theta": 10000.0,
                  "sliding_window": 4096, "tie_word_embeddings": True},
                 f"{_MLC} key gemma2_9b (no tie_word_embeddings key: gemma2's default, tied)",
                 "9.24B total", ("google/gemma-2-9b-it",)),
    CatalogEntry("gemma-3-1b-it", "google/gemma-3-1b-it",
                 {"model_type": "gemma3_text", "hidden_size": 1152, "num_hidden_layers": 26,
                  "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                  "intermediate_size": 6912, "vocab_size": 262144,
                  "max_position_embeddings": 32768, "rope_theta": 1000000,
                  "rope_local_base_freq": 10000, "sliding_window": 512,
                  "sliding_window_pattern": 6, "tie_word_embeddings": True},
                 f"{_MLC} key gemma3_1b_it (no tie_word_embeddings key: gemma3's default, tied)",
                 "1B total", ("google/gemma-3-1b-pt",)),
)


def _key(name: str) -> str:
    return name.strip().lower()


def _index() -> dict[str, CatalogEntry]:
    index: dict[str, CatalogEntry] = {}
    for entry in CATALOG:
        for key in (entry.name, entry.repo, *entry.aliases,
                    *(alias.split("/")[-1] for alias in entry.aliases)):
            index.setdefault(_key(key), entry)
    return index


def catalog_names() -> list[str]:
    """The catalog's short names, in catalog order."""
    return [entry.name for entry in CATALOG]


def catalog_entry(name: str) -> CatalogEntry | None:
    """The entry for a short name, repo id or alias, case-insensitively; None if unknown."""
    return _index().get(_key(name))


def resolve_model(name_or_path: str | Path) -> ModelSpec:
    """A ModelSpec for a catalog name (``qwen3-30b-a3b``, ``Qwen/Qwen3-30B-A3B``, an alias such
    as ``Qwen/Qwen2.5-7B-Instruct``; case does not matter), or for a path to a model folder or
    a ``config.json``. Anything else raises ConfigError naming a few close catalog names."""
    text = str(name_or_path)
    entry = catalog_entry(text)
    if entry is not None and not Path(text).expanduser().exists():
        return entry.spec()
    path = Path(text).expanduser()
    if path.exists():
        return model_spec_from_config(path)
    if isinstance(name_or_path, Path) or text.endswith(".json") or text.startswith((".", "~")):
        raise ConfigError(f"{path}: no such file or folder (expected a model folder or a "
                          "config.json)")
    keys = {_key(e.name): e.name for e in CATALOG} | {_key(e.repo): e.repo for e in CATALOG}
    close = difflib.get_close_matches(_key(text), list(keys), n=4, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(_key(text.split("/")[-1]), list(keys), n=4,
                                          cutoff=0.4)
    hint = ", ".join(dict.fromkeys(keys[c] for c in close)) or ", ".join(catalog_names()[:6])
    raise ConfigError(f"model '{text}': not in the catalog and not a path; close names: {hint} "
                      "(or pass a model folder / config.json)")


# --- our own training presets ----------------------------------------------------------------

def _preset(h: int, layers: int, heads: int, kv: int, head_dim: int, ffn: int,
            tied: bool) -> dict[str, Any]:
    return {"vocab_size": 32000, "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
            "intermediate_size": ffn, "tie_word_embeddings": tied,
            "max_position_embeddings": 2048, "rope_theta": 100000.0, "rms_norm_eps": 1e-6,
            "attention_bias": False, "hidden_act": "silu"}


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-3 paper shapes (Small, Medium, XL; 3B like Llama-3.2-3B / between 2.7B and 6.7B)
    # made Qwen3-style: SwiGLU, RMSNorm, q/k-norm, RoPE, GQA from 1.3B, vocab 32,000 (a Russian
    # BPE tokenizer). The SwiGLU width is set so the total lands on the nominal size.
    # Nominal sizes INCLUDE the embeddings (as GPT-3 counts them; tied ones counted once):
    # 125M = 123.7M (99.1M non-embedding), 355M = 360.0M (327.2M), 1.3B = 1.301B (1.170B),
    # 3B = 3.015B (2.819B).
    "125M": _preset(768, 12, 12, 12, 64, 2560, tied=True),
    "355M": _preset(1024, 24, 16, 16, 64, 3072, tied=True),
    "1.3B": _preset(2048, 24, 16, 8, 128, 5888, tied=False),
    "3B": _preset(3072, 28, 24, 8, 128, 8192, tied=False),
}
TRAIN_PRESET_NOMINAL: dict[str, int] = {"125M": 125_000_000, "355M": 355_000_000,
                                        "1.3B": 1_300_000_000, "3B": 3_000_000_000}


def train_preset_spec(name: str) -> ModelSpec:
    """The ModelSpec of a training preset (``TRAIN_PRESETS[name]`` is a ``Qwen3Config`` kwargs
    dict; ``transformers.Qwen3Config(**TRAIN_PRESETS[name])`` builds it)."""
    if name not in TRAIN_PRESETS:
        raise ConfigError(f"training preset '{name}': unknown; presets: "
                          f"{', '.join(TRAIN_PRESETS)}")
    return model_spec_from_config({"model_type": "qwen3", **TRAIN_PRESETS[name]},
                                  name=f"homellm-{name}", source="homellm TRAIN_PRESETS")
