"""A model's context window, and the rope scaling its authors document for going past it.

``max_position_embeddings`` in a model's ``config.json`` is the longest context its engines
accept as it stands. Beyond it, homellm uses only what the model card documents: static YaRN
with the card's ``original_max_position_embeddings``, up to the card's largest factor
(``models_catalog.YarnRecipe``), with the smallest factor that covers the asked context, because
static YaRN rescales every request and the cards warn it may cost quality on shorter texts.
Anything else is refused in one line that names the fix.

Where the facts come from: a local model folder's ``config.json`` (or a ``.gguf`` file's
metadata), the Hugging Face cache for a hub id, else the catalog entry for it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from homellm.errors import ConfigError
from homellm.models_catalog import CATALOG, YarnRecipe, catalog_entry

__all__ = ["ContextWindow", "LongContextError", "RopeExtension", "YarnRecipe", "extension_for",
           "window_for_source", "window_from_config"]

# Factors are rounded up to a multiple of this. A quarter is exact in binary floating point, so
# factor × original is a whole number of tokens and transformers' check that
# max_position_embeddings / original_max_position_embeddings equals the factor
# (modeling_rope_utils.py, _validate_yarn_rope_parameters) holds exactly; the card's own
# examples (2.0 for 65,536, 4.0 for 131,072 over 32,768) are multiples of it.
FACTOR_STEP = 0.25

# the config.json fields that identify a catalog model in a local copy (and a fine-tune of it)
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "num_experts")


class LongContextError(ConfigError):
    """``max_context`` is beyond what the model and its documented rope scaling reach."""

    def __init__(self, problem: str, limit: int) -> None:
        super().__init__(problem)
        self.problem = problem   # the sentence, without a file:line (the caller adds its own)
        self.limit = limit       # the longest max_context that would be accepted


@dataclass(frozen=True)
class ContextWindow:
    """What a model's own config.json (and its card's recipe) say about its context."""

    native: int                  # max_position_embeddings
    recipe: YarnRecipe | None    # the authors' documented YaRN; None if none documented
    scaled_in_config: bool       # config.json already carries rope scaling with a factor
    rope_theta: float = 10000.0  # the RoPE base the extension keeps
    name: str = ""               # for messages
    config_scaling: str = ""     # the config's own rope scaling, in words ("" when none)
    config_reach: int = 0        # its factor × original_max_position_embeddings (0: unknown)


@dataclass(frozen=True)
class RopeExtension:
    """The rope scaling to emit for one asked context."""

    factor: float
    original_max_position_embeddings: int
    rope_theta: float
    source: str
    max_context: int             # factor × original: the scaled model's window

    def rope_parameters(self) -> dict[str, Any]:
        """transformers 5's ``rope_parameters`` for it."""
        return {"rope_type": "yarn", "factor": self.factor,
                "original_max_position_embeddings": self.original_max_position_embeddings,
                "rope_theta": self.rope_theta}

    def config_overrides(self) -> dict[str, Any]:
        """The config.json fields to override: ``rope_parameters`` and the scaled
        ``max_position_embeddings``. vLLM 0.33 takes ``max_position_embeddings`` as the
        window of a YaRN model without multiplying by the factor (config/model.py
        ``_get_and_verify_max_len``), and SGLang 0.5.23's Qwen3 models compute the YaRN factor
        as ``max_position_embeddings / original_max_position_embeddings``
        (srt/models/qwen3_moe.py ``compute_yarn_parameters``): both need it scaled."""
        return {"rope_parameters": self.rope_parameters(),
                "max_position_embeddings": self.max_context}

    def describe(self) -> str:
        return (f"YaRN factor {self.factor:g} over {self.original_max_position_embeddings:,} "
                f"tokens (window {self.max_context:,})")


def window_from_config(config: dict[str, Any], name: str = "") -> ContextWindow:
    """The window of a parsed config.json; ConfigError when it has no usable
    ``max_position_embeddings``."""
    window = _window(config, name)
    if window is None:
        raise ConfigError(f"{name or 'config.json'}: field 'max_position_embeddings' is missing "
                          "or not a positive integer")
    return window


def window_for_source(source: str) -> ContextWindow | None:
    """The window of a stack file's ``source``: a model folder or config.json, a .gguf file,
    a hub id in the Hugging Face cache, or a hub id in the catalog; None when unknown."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        config = _gguf_config(path)
        return _window(config, path.name) if config is not None else None
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        config = _read_json(path / "config.json" if path.is_dir() else path)
        return _window(config, path.name) if config is not None else None
    if path.exists():
        return None
    cached = _hf_cache_config(source)
    if cached is not None:
        return _window(cached, source)
    entry = catalog_entry(source)
    if entry is None:
        return None
    window = _window(entry.config, entry.repo)
    if window is None or window.scaled_in_config:
        return window
    return ContextWindow(window.native, entry.yarn, False, window.rope_theta, entry.repo)


def extension_for(window: ContextWindow, context: int,
                  field: str = "max_context") -> RopeExtension | None:
    """None when ``context`` fits the native window; else the smallest documented YaRN factor
    that covers it (rounded up to a multiple of :data:`FACTOR_STEP`). LongContextError, naming
    the longest context that would be accepted (as ``field``: the stack file's max_context,
    plan's --context), when no documented recipe covers it."""
    if context <= window.native:
        return None
    who = f"{window.name}: " if window.name else ""
    beyond = (f"{who}context {context:,} is beyond the model's window ({window.native:,} tokens, "
              "max_position_embeddings in its config.json)")
    if window.scaled_in_config and window.config_reach > window.native:
        raise LongContextError(
            f"{beyond}; its config.json scales RoPE ({window.config_scaling}) but leaves "
            f"max_position_embeddings at {window.native}, and engines take that field as the "
            f"scaled window: set it to {window.config_reach} in config.json, or {field} to "
            f"{window.native} or less", window.native)
    if window.scaled_in_config:
        raise LongContextError(f"{beyond}, which already includes its config's own rope scaling "
                               f"({window.config_scaling}): set {field} to {window.native} "
                               "or less", window.native)
    recipe = window.recipe
    if recipe is None:
        raise LongContextError(f"{beyond} and its authors document no rope scaling for it: set "
                               f"{field} to {window.native} or less (or serve a model made "
                               "for longer contexts)", window.native)
    if context > recipe.max_context:
        raise LongContextError(
            f"{who}context {context:,} is beyond what its documented YaRN reaches "
            f"({recipe.max_context:,} = factor {recipe.max_factor:g} × "
            f"{recipe.original_max_position_embeddings:,}, {recipe.source.split(' (')[0]}): set "
            f"{field} to {recipe.max_context} or less", recipe.max_context)
    original = recipe.original_max_position_embeddings
    factor = min(math.ceil(context / original / FACTOR_STEP) * FACTOR_STEP, recipe.max_factor)
    return RopeExtension(factor=float(factor), original_max_position_embeddings=original,
                         rope_theta=window.rope_theta, source=recipe.source,
                         max_context=int(factor * original))


# --- reading config.json -----------------------------------------------------------------------

def _window(config: dict[str, Any], name: str) -> ContextWindow | None:
    text = config.get("text_config")
    if "max_position_embeddings" not in config and isinstance(text, dict):
        config = text
    native = config.get("max_position_embeddings")
    if isinstance(native, bool) or not isinstance(native, int) or native < 1:
        return None
    scaling, reach = _config_scaling(config)
    theta = config.get("rope_theta")
    for rope in _rope_dicts(config):
        theta = rope.get("rope_theta", theta)
    theta = float(theta) if isinstance(theta, (int, float)) and theta > 0 else 10000.0
    recipe = None if scaling else _catalog_recipe(config)
    return ContextWindow(native=native, recipe=recipe, scaled_in_config=bool(scaling),
                         rope_theta=theta, name=name, config_scaling=scaling,
                         config_reach=reach)


def _rope_dicts(config: dict[str, Any]) -> list[dict[str, Any]]:
    """``rope_parameters`` / ``rope_scaling``, one dict per layer type when nested (Gemma 3)."""
    found: list[dict[str, Any]] = []
    for key in ("rope_parameters", "rope_scaling"):
        rope = config.get(key)
        if not isinstance(rope, dict):
            continue
        nested = [v for v in rope.values() if isinstance(v, dict)]
        found += nested if nested else [rope]
    return found


def _config_scaling(config: dict[str, Any]) -> tuple[str, int]:
    """The config's own rope scaling in words ("" when it has none with a factor), and the
    window it reaches (factor × original_max_position_embeddings; 0 when not given)."""
    for rope in _rope_dicts(config):
        kind = rope.get("rope_type") or rope.get("type") or "default"
        factor = rope.get("factor")
        if kind != "default" and isinstance(factor, (int, float)) and factor != 1:
            original = rope.get("original_max_position_embeddings")
            if isinstance(original, int) and not isinstance(original, bool):
                return f"{kind} factor {factor:g} over {original:,}", int(factor * original)
            return f"{kind} factor {factor:g}", 0
    return "", 0


def _catalog_recipe(config: dict[str, Any]) -> YarnRecipe | None:
    """The recipe of the catalog model this config is a copy (or a fine-tune) of: same
    model_type, shapes and window. The model_type alone is not enough: Qwen3-0.6B and -1.7B
    share Qwen3-8B's type and window, but their cards document no YaRN."""
    for entry in CATALOG:
        recipe = entry.yarn
        if recipe is None or recipe.original_max_position_embeddings > config.get(
                "max_position_embeddings", 0):
            continue
        if all(config.get(key) == entry.config.get(key) for key in _SHAPE_KEYS
               if key in entry.config):
            return recipe
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hf_cache_config(repo_id: str) -> dict[str, Any] | None:
    """config.json of a hub id in the Hugging Face cache (huggingface_hub's layout:
    ``models--ORG--NAME/snapshots/<commit>/``, ``refs/main`` naming the commit)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
        hub = os.path.join(home, "hub")
    repo = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        commit = ""
    candidates = [snapshots / commit / "config.json"] if commit else []
    if snapshots.is_dir():
        candidates += sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime,
                             reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return _read_json(candidate)
    return None


# --- reading a GGUF file's metadata ------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_ARCH_TYPES = {"qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe"}


class _Truncated(Exception):
    pass


def _gguf_config(path: Path) -> dict[str, Any] | None:
    """The GGUF metadata as the config.json fields :func:`_window` reads (llama.cpp's keys:
    ``{arch}.context_length``, ``{arch}.rope.scaling.*``, ...); None if it cannot be read."""
    try:
        with path.open("rb") as handle:
            meta = _gguf_metadata(handle)
    except (OSError, _Truncated, struct.error, UnicodeDecodeError):
        return None
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not isinstance(meta.get(f"{arch}.context_length"), int):
        return None

    def field(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    config: dict[str, Any] = {
        "model_type": _GGUF_ARCH_TYPES.get(arch, arch),
        "max_position_embeddings": field("context_length"),
        "hidden_size": field("embedding_length"), "num_hidden_layers": field("block_count"),
        "num_attention_heads": field("attention.head_count"),
        "num_key_value_heads": field("attention.head_count_kv"),
    }
    if field("expert_count") is not None:
        config["num_experts"] = field("expert_count")
    if field("rope.freq_base") is not None:
        config["rope_theta"] = field("rope.freq_base")
    kind, factor = field("rope.scaling.type"), field("rope.scaling.factor")
    if isinstance(kind, str) and kind != "none" and factor is not None:
        config["rope_scaling"] = {"rope_type": kind, "factor": factor}
        if field("rope.scaling.original_context_length") is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = field(
                "rope.scaling.original_context_length")
    return config


def _gguf_metadata(handle: BinaryIO) -> dict[str, Any]:
    """Key/values of a GGUF (v2, v3) header up to the tokenizer's (which come after the
    architecture's in llama.cpp's converter, and are large)."""
    if _take(handle, 4) != b"GGUF":
        raise _Truncated
    version, _tensors, count = struct.unpack("<IQQ", _take(handle, 20))
    if version < 2 or count > 1_000_000:
        raise _Truncated
    meta: dict[str, Any] = {}
    for _ in range(count):
        key = _gguf_string(handle)
        if key.startswith("tokenizer."):
            break
        (kind,) = struct.unpack("<I", _take(handle, 4))
        meta[key] = _gguf_value(handle, kind)
    return meta


def _gguf_value(handle: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, _take(handle, struct.calcsize(fmt)))[0]
    if kind == _GGUF_STRING:
        return _gguf_string(handle)
    if kind == _GGUF_ARRAY:
        item, length = struct.unpack("<IQ", _take(handle, 12))
        if item == _GGUF_ARRAY or length > 10_000_000:
            raise _Truncated
        return [_gguf_value(handle, item) for _ in range(length)]
    raise _Truncated


def _gguf_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _take(handle, 8))
    if length > 1_000_000:
        raise _Truncated
    return _take(handle, length).decode("utf-8")


def _take(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise _Truncated
    return data
