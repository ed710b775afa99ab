"""llama.cpp for GGUF models: its own ``llama-server`` when on PATH, else llama-cpp-python's server.

The two servers spell their flags differently (``--ctx-size`` vs ``--n_ctx``) and answer
readiness differently (``/health`` vs ``/v1/models``), so the adapter builds each command whole.
Both take a single ``.gguf`` file: a Hugging Face folder is refused with the conversion command
(``homellm gguf``), never converted behind the user's back.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Literal

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.base import (
    OPENAI_ROUTES,
    EngineAdapter,
    FalseFlags,
    LaunchSpec,
    render_engine_args,
)
from homellm.engines.rope import rope_extension
from homellm.errors import EngineError
from homellm.longcontext import RopeExtension

ServerKind = Literal["auto", "llama-server", "llama_cpp.server"]

PYTHON_SERVER_MODULE = "llama_cpp.server"
LLAMA_ROPE_SCALING_TYPE_YARN = 2  # llama_cpp/llama_cpp.py (enum llama_rope_scaling_type)
LLAMA_SERVER_VERSION = "llama.cpp 0c1e57098"  # the commit llama-cpp-python 0.3.36 vendors
LLAMA_CPP_PYTHON_VERSION = "llama-cpp-python 0.3.36"
GGUF_MAGIC = b"GGUF"
FULL_OFFLOAD_LAYERS = "999"  # llama-server: more layers than any model has = all of them

EngineArgs = dict[str, str | int | float | bool | None]

# common/arg.cpp at that commit: a boolean option is declared with its positive and its negative
# spellings; options declared with one list (store_true style) have no negative
LLAMA_SERVER_FALSE_FLAGS = FalseFlags(all_negatable=False, negatives=frozenset({
    "--no-agent", "--no-cache-idle-slots", "--no-cache-prompt", "--no-cont-batching",
    "--no-context-shift", "--no-conversation", "--no-cors-credentials", "--no-display-prompt",
    "--no-escape", "--no-jinja", "--no-kv-offload", "--no-kv-unified", "--no-log-jsonl",
    "--no-log-prefix", "--no-log-timestamps", "--no-mmproj", "--no-mmproj-auto",
    "--no-mmproj-offload", "--no-models-autoload", "--no-op-offload", "--no-perf", "--no-ppl",
    "--no-prefill-assistant", "--no-reasoning-preserve", "--no-repack", "--no-show-timings",
    "--no-skip-chat-parsing", "--no-slots", "--no-spec-draft-backend-sampling", "--no-warmup",
    "--no-ui", "--no-webui", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy",
}))


class LlamaCppAdapter(EngineAdapter):
    name = "llamacpp"
    # llama-server: tools/server/README.md and common/arg.cpp at that commit (vendored in the
    # llama-cpp-python 0.3.36 sdist); llama_cpp.server: its --help and llama_cpp/server/settings.py
    documented_version = f"{LLAMA_SERVER_VERSION} (llama-server); {LLAMA_CPP_PYTHON_VERSION}"
    false_flags = LLAMA_SERVER_FALSE_FLAGS

    def __init__(self, server: ServerKind = "auto") -> None:
        self.server = server

    def llama_server_path(self) -> str | None:
        """llama.cpp's own binary, preferred when installed; None means llama-cpp-python's."""
        if self.server == "llama_cpp.server":
            return None
        found = shutil.which("llama-server")
        if found is None and self.server == "llama-server":
            raise EngineError("llama-server is not on PATH: install llama.cpp or use "
                              "llama-cpp-python's server (pip install 'llama-cpp-python[server]')")
        return found

    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        gguf = gguf_model_file(model.source)
        offload = bool(replica.gpus) and model.device != "cpu"
        exe = self.llama_server_path()
        rope = rope_extension(model, str(gguf))  # the GGUF's own context_length is the window
        if exe is not None:
            argv = llama_server_argv(exe, gguf, model_name, model, replica.host, port,
                                     replica.gpus if offload else [], rope)
            health_path = "/health"  # 503 while loading, 200 once the model is in memory
        else:
            argv = python_server_argv(gguf, model_name, model, replica.host, port,
                                      replica.gpus if offload else [], rope)
            health_path = "/v1/models"  # no /health; uvicorn starts after the model has loaded
        base = f"http://{_url_host(replica.host)}:{port}"
        # both servers embed only when started for it: llama-server answers /v1/embeddings with
        # 501 "Start it with --embeddings", llama_cpp.server's create_embedding raises (a 500)
        # unless --embedding True
        embeds = any(model.engine_args.get(a) for a in ("embedding", "embeddings"))
        return LaunchSpec(
            model=model_name, replica=f"{model_name}/{index}", role=replica.role, argv=argv,
            env=self.cuda_env(replica.gpus), base_url=base, health_url=base + health_path,
            upstream_model=model_name,  # the alias we set; both servers answer to it
            engine=self.name, gpus=list(replica.gpus),
            routes=OPENAI_ROUTES if embeds else ("/v1/chat/completions", "/v1/completions"),
        )

    def arg_flag(self, name: str, value: str | int | float | bool | None) -> str | None:
        if self.llama_server_path() is None:  # llama_cpp.server takes `--flag False`
            return python_server_flag(name)
        return super().arg_flag(name, value)

    def help_argv(self, spec: LaunchSpec) -> list[str]:
        if is_python_server(spec.argv):
            return [spec.argv[0], "-m", PYTHON_SERVER_MODULE, "--help"]
        if spec.argv:
            return [spec.argv[0], "--help"]
        exe = self.llama_server_path()
        return [exe, "--help"] if exe else [sys.executable, "-m", PYTHON_SERVER_MODULE, "--help"]


def is_python_server(argv: list[str]) -> bool:
    return argv[1:3] == ["-m", PYTHON_SERVER_MODULE]


def llama_server_argv(exe: str, gguf: Path, alias: str, model: ModelConfig, host: str, port: int,
                      gpus: list[int], rope: RopeExtension | None = None) -> list[str]:
    """``llama-server``: dashed long flags only (the preflight checks ``--`` flags)."""
    ours: list[tuple[str, list[str]]] = [
        ("--model", [str(gguf)]), ("--host", [host]), ("--port", [str(port)]),
        ("--alias", [alias]),
    ]
    if model.max_context:
        ours.append(("--ctx-size", [str(model.max_context)]))
    if rope is not None:
        # common/arg.cpp: --rope-scale N sets rope_freq_scale = 1/N; --yarn-orig-ctx N
        ours += [("--rope-scaling", ["yarn"]), ("--rope-scale", [f"{rope.factor:g}"]),
                 ("--yarn-orig-ctx", [str(rope.original_max_position_embeddings)])]
    # no GPUs: leave --n-gpu-layers out; a CPU build ignores it and CUDA_VISIBLE_DEVICES="" hides
    # every GPU from a CUDA build anyway
    if gpus:
        ours.append(("--n-gpu-layers", [FULL_OFFLOAD_LAYERS]))
    if len(gpus) > 1:
        # layer split (the default --split-mode) in equal parts over the visible GPUs
        ours.append(("--tensor-split", [",".join("1" for _ in gpus)]))
    extra = render_engine_args(model.engine_args, LLAMA_SERVER_FALSE_FLAGS, "llama-server")
    return [exe, *_without_overridden(ours, extra), *extra]


def python_server_argv(gguf: Path, alias: str, model: ModelConfig, host: str, port: int,
                       gpus: list[int], rope: RopeExtension | None = None) -> list[str]:
    """``python -m llama_cpp.server``: underscore flags, and booleans need a value."""
    ours: list[tuple[str, list[str]]] = [
        ("--model", [str(gguf)]), ("--host", [host]), ("--port", [str(port)]),
        ("--model_alias", [alias]),
        # the default (True) aborts a running request when another arrives: with concurrent
        # clients most of them get nothing; False queues them instead
        ("--interrupt_requests", ["False"]),
    ]
    if model.max_context:
        ours.append(("--n_ctx", [str(model.max_context)]))
    if rope is not None:
        # llama_cpp/server/settings.py: rope_scaling_type (the enum's int), rope_freq_scale
        # (1/factor, as llama-server's --rope-scale sets it), yarn_orig_ctx
        ours += [("--rope_scaling_type", [str(LLAMA_ROPE_SCALING_TYPE_YARN)]),
                 ("--rope_freq_scale", [repr(1.0 / rope.factor)]),
                 ("--yarn_orig_ctx", [str(rope.original_max_position_embeddings)])]
    if gpus:
        ours.append(("--n_gpu_layers", ["-1"]))  # -1 = every layer
    if len(gpus) > 1:
        ours.append(("--tensor_split", ["1"] * len(gpus)))  # nargs="*" list of proportions
    extra = render_python_server_args(model.engine_args)
    return [sys.executable, "-m", PYTHON_SERVER_MODULE, *_without_overridden(ours, extra), *extra]


def render_python_server_args(args: EngineArgs) -> list[str]:
    """Like ``render_engine_args`` but in llama_cpp.server's spelling: ``--n_batch 256``.

    Its argparse takes every boolean as ``--flag True|False`` (a bare flag is an error), so
    ``True``/``False`` are passed as values rather than dropped; ``None`` is a bare flag.
    """
    argv: list[str] = []
    for name, value in args.items():
        argv.append(python_server_flag(name))
        if value is not None:
            argv.append(str(value))  # True → "True", as its bool parser wants
    return argv


def python_server_flag(name: str) -> str:
    """``n-batch`` and ``n_batch`` both become llama_cpp.server's ``--n_batch``."""
    return "--" + name.lstrip("-").replace("-", "_")


def _without_overridden(ours: list[tuple[str, list[str]]], extra: list[str]) -> list[str]:
    """Our flags, less those the stack file's engine_args set itself (no duplicate flags)."""
    theirs = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    return [part for flag, values in ours if flag not in theirs for part in (flag, *values)]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def gguf_model_file(source: str) -> Path:
    """The ``.gguf`` file the source names; EngineError (one line) for anything else."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            raise EngineError(
                f"{source} is a Hugging Face folder; llama.cpp needs a .gguf file: convert it with "
                f"'homellm gguf {source} {path.with_suffix('.gguf')}' "
                "and set the model's source to that .gguf"
            )
        raise EngineError(f"{source} is a folder; llama.cpp needs a single .gguf file as source")
    if not path.exists():
        if not source.startswith((".", "/", "~")) and source.count("/") == 1:
            raise EngineError(f"{source} looks like a hub id; llama.cpp needs a local .gguf file "
                              "(download one, or a Hugging Face folder to convert)")
        raise EngineError(f"GGUF model file not found: {source}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise EngineError(f"cannot read {source}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise EngineError(f"{source} is not a GGUF file (it does not start with 'GGUF')")
    return Path(os.path.abspath(path))
