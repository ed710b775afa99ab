"""``plan serve --write homellm.yaml``: a stack file for the chosen layout.

The vLLM adapter (``engines/base.py``) turns a replica's ``gpus`` into
``CUDA_VISIBLE_DEVICES`` and, with more than one GPU, ``--tensor-parallel-size len(gpus)``;
``max_context`` becomes ``--max-model-len``, ``dtype`` ``--dtype`` and ``engine_args`` the
remaining flags. So replicas are one entry per GPU, TP one entry with every GPU, and PP one
entry with every GPU whose ``engine_args`` set ``pipeline_parallel_size`` (the adapter then
gives ``--tensor-parallel-size`` as GPUs ÷ PP, so no flag is given twice).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml

from homellm.config import parse_stack
from homellm.errors import ConfigError
from homellm.fsutil import atomic_write_text
from homellm.models_catalog import catalog_entry
from homellm.plan.serve import ServePlan
from homellm.plan.serve_memory import precision

ReplicaMode = Literal["active-active", "active-standby"]
_STACK_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "half": "float16",
                 "float32": "float32", "float": "float32", "auto": "auto"}
# --dtype fp8 is bfloat16 activations with FP8 weights: `dtype` gets the engine's --dtype and
# engine_args the --quantization (and --kv-cache-dtype) flags, as in plan serve's flags


def model_key(name: str) -> str:
    """``Qwen/Qwen3-30B-A3B`` → ``qwen3-30b-a3b`` (the served model name)."""
    key = re.sub(r"[^a-z0-9._-]+", "-", name.rsplit("/", 1)[-1].lower()).strip("-")
    return key or "model"


def stack_source(model: str) -> str:
    """A stack file's ``source`` for plan's MODEL argument: a catalog short name becomes the
    Hugging Face repo id the engines load (an alias its own repo id); a folder or config.json
    becomes the folder's absolute path; anything else stays as given."""
    path = Path(model).expanduser()
    if path.exists():
        folder = path.parent if path.is_file() else path
        return str(folder.resolve())
    entry = catalog_entry(model)
    if entry is None or "/" in model:
        return model
    key = model.strip().lower()
    return next((repo for repo in entry.aliases if repo.split("/")[-1].lower() == key),
                entry.repo)


def stack_data(plan: ServePlan, *, source: str, layout: str | None = None,
               mode: ReplicaMode = "active-active", name: str | None = None,
               listen: str = "127.0.0.1:8080") -> dict[str, Any]:
    """The stack file as data for ``layout`` (default: the recommended one); ``source`` as
    :func:`stack_source` makes it (a catalog short name becomes its repo id)."""
    source = stack_source(source)
    kind = layout or plan.recommended
    if kind is None:
        raise ConfigError(f"--write: nothing to write, no layout fits: {plan.reason}")
    if kind not in plan.layouts:
        raise ConfigError(f"--layout: expected one of {', '.join(plan.layouts)}, got {kind!r}")
    chosen = plan.layouts[kind]
    if not chosen.fits and chosen.memory.max_context <= 0:
        raise ConfigError(f"--write: {chosen.label} does not fit: {chosen.memory.error}")
    engine_args: dict[str, Any] = {"gpu_memory_utilization": plan.gpu_memory_utilization}
    prec = precision(plan.dtype, plan.kv_cache_dtype)
    if prec.quantization:
        engine_args["quantization"] = prec.quantization
    if plan.kv_cache_dtype != "auto":
        engine_args["kv_cache_dtype"] = plan.kv_cache_dtype
    if kind == "replicas":
        roles = ["primary"] * len(chosen.gpus_per_replica)
        if mode == "active-standby":
            roles = ["primary"] + ["backup"] * (len(roles) - 1)
        replicas = [{"gpus": gpus, "role": role}
                    for gpus, role in zip(chosen.gpus_per_replica, roles, strict=True)]
    else:
        replicas = [{"gpus": chosen.gpus_per_replica[0], "role": "primary"}]
        if kind == "pp":
            engine_args.update(pipeline_parallel_size=chosen.pp)
    model: dict[str, Any] = {"source": source, "engine": "vllm",
                             "dtype": _STACK_DTYPES.get(prec.engine_dtype, "auto"),
                             "max_context": chosen.context, "engine_args": engine_args,
                             "replicas": replicas}
    return {"models": {name or model_key(source): model}, "gateway": {"listen": listen}}


def render_stack(plan: ServePlan, *, source: str, layout: str | None = None,
                 mode: ReplicaMode = "active-active", name: str | None = None,
                 listen: str = "127.0.0.1:8080") -> str:
    """YAML text of the stack file, headed by what was planned and why; validated with
    :func:`homellm.config.parse_stack` before it is returned."""
    data = stack_data(plan, source=source, layout=layout, mode=mode, name=name, listen=listen)
    kind = layout or plan.recommended
    chosen = plan.layouts[str(kind)]
    gpus = ", ".join(g.key for g in plan.gpus)
    head = [f"# homellm plan serve: {plan.model.name} on {gpus} — {chosen.label}"
            + (f", {mode}" if kind == "replicas" and chosen.replicas > 1 else ""),
            f"# vllm serve flags per replica: {shlex.join(chosen.flags)}"]
    if kind == plan.recommended:
        head.append("# why: " + plan.reason)
    text = "\n".join(_wrap(line) for line in head) + "\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    parse_stack(text, "homellm.yaml (generated)")
    return text


def write_stack(path: str | Path, plan: ServePlan, *, source: str, layout: str | None = None,
                mode: ReplicaMode = "active-active", name: str | None = None,
                listen: str = "127.0.0.1:8080", overwrite: bool = False) -> Path:
    """Write the stack file atomically; refuse to replace an existing file unless asked."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: already exists; remove it or pass --force")
    atomic_write_text(target, render_stack(plan, source=source, layout=layout, mode=mode,
                                           name=name, listen=listen))
    return target


def _wrap(line: str, width: int = 98) -> str:
    """Keep comment lines readable: wrap at ``width`` with ``#   `` continuations."""
    words, out, cur = line.split(" "), [], ""
    for word in words:
        if cur and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = "#   " + word
        else:
            cur = f"{cur} {word}" if cur else word
    out.append(cur)
    return "\n".join(out)
