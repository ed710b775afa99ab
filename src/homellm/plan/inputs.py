"""Parsing ``plan``'s inputs: token counts like ``10B``, models (catalog, preset or folder) and
the GPUs (catalog ids, ``--gpu-spec``, or the ones NVML sees)."""

from __future__ import annotations

import re

from homellm.errors import ConfigError
from homellm.hardware import GPUSpec, detect_gpus, parse_gpu_spec, parse_gpus
from homellm.models_catalog import TRAIN_PRESETS, resolve_model, train_preset_spec
from homellm.modelspec import ModelSpec

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, what: str = "--tokens") -> float:
    """``10B``, ``500M``, ``2.5e9``, ``1_000_000`` → a number (B = 10^9, as in "10B tokens")."""
    match = re.fullmatch(r"\s*([0-9][0-9_]*\.?[0-9]*(?:e[0-9]+)?)\s*([kmbgt]?)\s*",
                         text.lower())
    if not match:
        raise ConfigError(f"{what} {text!r}: give a number like 10B, 500M or 2.5e9")
    value = float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2)]
    if value <= 0:
        raise ConfigError(f"{what} {text!r}: must be more than 0")
    return value


def resolve_plan_model(name: str) -> ModelSpec:
    """A training preset (125m, 1.3b, ...), a catalog model, or a folder / config.json."""
    if name.lower() in {k.lower() for k in TRAIN_PRESETS}:
        key = next(k for k in TRAIN_PRESETS if k.lower() == name.lower())
        return train_preset_spec(key)
    return resolve_model(name)


def resolve_gpus(gpus: str | None, gpu_spec: str | None) -> list[GPUSpec]:
    """``--gpus 2xrtx-pro-6000``; ``--gpu-spec mem=..,bw=..,bf16=..`` (with ``--gpus N`` for N of
    them); neither: the GPUs NVML sees here."""
    if gpu_spec:
        count = int(gpus) if gpus and gpus.strip().isdigit() else 1
        if gpus and not gpus.strip().isdigit():
            raise ConfigError("with --gpu-spec, --gpus is a count (e.g. --gpus 2)")
        return [parse_gpu_spec(gpu_spec)] * count
    if gpus:
        return parse_gpus(gpus)
    found = detect_gpus()
    if not found:
        raise ConfigError("no GPU detected here (NVML): name them, e.g. --gpus 2xrtx-pro-6000, "
                          "or give --gpu-spec mem=96,bw=1792,bf16=503.8")
    unknown = [g.name for g in found if not g.speeds_known]
    if unknown:
        raise ConfigError(f"detected {unknown[0]!r}, which is not in the catalog: give its specs "
                          "with --gpu-spec mem=…,bw=…,bf16=… (and --gpus N)")
    return found
