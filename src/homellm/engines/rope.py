"""Rope scaling for a ``max_context`` beyond the model's window, as the engines take it.

vLLM and SGLang take config.json overrides as one JSON object (``--hf-overrides``,
``--json-model-override-args``); llama.cpp's two servers take flags (see llamacpp.py). Which
factor, and whether the model's authors document one at all, is decided in
:mod:`homellm.longcontext`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from homellm.config import ModelConfig
from homellm.errors import ConfigError
from homellm.longcontext import RopeExtension, extension_for, window_for_source

# config.json keys that describe RoPE: a user's own override of one of them and ours cannot
# both apply
_ROPE_KEYS = ("rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings")


def rope_extension(model: ModelConfig, source: str | None = None) -> RopeExtension | None:
    """The rope scaling ``model.max_context`` needs; None when it fits the model's window or the
    window is unknown (a hub id neither cached nor in the catalog: the engine decides)."""
    if not model.max_context:
        return None
    window = window_for_source(source or model.source)
    return extension_for(window, model.max_context) if window is not None else None


def unknown_window_warning(model: ModelConfig, engine: str) -> str | None:
    """A max_context homellm cannot check: the model's window is known nowhere here."""
    if not model.max_context or window_for_source(model.source) is not None:
        return None
    why = ("no max_position_embeddings readable in it" if Path(model.source).exists() else
           "no config.json in the Hugging Face cache, not in homellm's catalog")
    return (f"the window of {model.source} is not known here ({why}), so no rope scaling is "
            f"added: {engine} refuses {model.max_context} if it is beyond the model's "
            "max_position_embeddings")


def with_config_overrides(model_name: str, engine_args: dict[str, Any], key: str,
                          extension: RopeExtension | None) -> dict[str, Any]:
    """``engine_args`` with the extension's config overrides in ``engine_args[key]``, merged
    with the user's own JSON there. A user's override of a RoPE field is refused (one line)
    rather than emitted next to ours or silently replaced."""
    if extension is None:
        return engine_args
    where = f"models.{model_name}.engine_args.{key}"
    theirs: Any = engine_args.get(key)
    if theirs is None:
        theirs = {}
    elif isinstance(theirs, str):
        try:
            theirs = json.loads(theirs)
        except ValueError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(theirs, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {theirs!r}")
    ours = extension.config_overrides()
    clash = [name for name in _ROPE_KEYS if name in theirs and theirs[name] != ours.get(name)]
    if clash:
        raise ConfigError(
            f"{where}: sets {', '.join(clash)}, but max_context needs homellm's "
            f"{extension.describe()}, emitted as {json.dumps(ours)}: remove "
            f"{', '.join(clash)} there")
    return {**engine_args, key: json.dumps({**theirs, **ours})}
