"""``vllm serve``: GPU production engine (tensor parallel over the replica's GPUs)."""

from __future__ import annotations

import shutil
import sys
from typing import ClassVar

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.base import FalseFlags, LaunchSpec, ServedModelAdapter


class VllmAdapter(ServedModelAdapter):
    name = "vllm"
    # flags checked against vllm/engine/arg_utils.py and entrypoints/common/cli_args.py of
    # this release (docs/engines.md); the preflight re-checks the installed one's --help
    documented_version = "vllm 0.33.0"
    tensor_parallel_flag = "--tensor-parallel-size"
    pipeline_parallel_arg = "pipeline_parallel_size"
    config_override_arg = "hf_overrides"
    context_flag = "--max-model-len"
    # vllm/engine/arg_utils.py: boolean fields become argparse BooleanOptionalAction, which
    # vllm/utils/argparse_utils.py (EnableDisableAction) spells --enable-x/--disable-x (its
    # --help lists those; --no-enable-x is still parsed, hidden); plain store_true flags with no
    # negative: arg_utils.py (--data-parallel-multi-port-external-lb, --disable-log-stats,
    # --aggregate-engine-logging), entrypoints/common/cli_args.py (--headless, --grpc), and
    # --hf-token (bool | str: a bare flag or a value)
    false_flags = FalseFlags(
        all_negatable=True,
        store_true=frozenset({"--headless", "--grpc", "--data-parallel-multi-port-external-lb",
                              "--disable-log-stats", "--aggregate-engine-logging",
                              "--hf-token"}),
        inverse_prefixes=(("--enable-", "--disable-"), ("--disable-", "--enable-")),
    )

    def _cli(self) -> list[str]:
        exe = shutil.which("vllm")
        return [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]

    def head_argv(self, model: ModelConfig, replica: ReplicaConfig, port: int) -> list[str]:
        return [*self._cli(), "serve", model.source, "--host", replica.host, "--port", str(port)]

    def serves_embeddings(self, engine_args: dict[str, object]) -> bool:
        # vLLM 0.33 registers chat and completions for the generate runner and /v1/embeddings
        # for the pooling one (entrypoints/openai/launchers/api_server/routers.py,
        # pooling/factories.py); `--runner auto` picks pooling only for embedding
        # architectures, which a stack file names with runner: pooling
        return engine_args.get("runner") == "pooling"

    # vllm serve --help needs a platform: on a machine without a GPU the CUDA wheel stops at
    # "Failed to infer device type" (vllm/config/device.py). Its CPU platform builds the same
    # parser, so the flags listed, and the check, are the same on every machine.
    help_env: ClassVar[dict[str, str]] = {"VLLM_TARGET_DEVICE": "cpu"}

    def help_argv(self, spec: LaunchSpec) -> list[str]:
        # plain --help lists only groups in recent releases; =all prints every flag
        return [*self._cli(), "serve", "--help=all"]
