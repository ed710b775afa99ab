"""SGLang's ``python -m sglang.launch_server``: GPU production engine."""

from __future__ import annotations

import sys

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.base import FalseFlags, LaunchSpec, ServedModelAdapter


class SglangAdapter(ServedModelAdapter):
    name = "sglang"
    # flags checked against sglang/srt/arg_groups/fields/*.py of this release (docs/engines.md)
    documented_version = "sglang 0.5.23"
    tensor_parallel_flag = "--tp-size"
    pipeline_parallel_arg = "pp_size"
    config_override_arg = "json_model_override_args"
    context_flag = "--context-length"
    # srt/arg_groups/arg_utils.py turns a bool field into store_true (no negative); only the
    # fields under srt/arg_groups/fields/ that declare argparse.BooleanOptionalAction have --no-x
    false_flags = FalseFlags(all_negatable=False, negatives=frozenset({
        "--no-dcp-replicate-q-proj", "--no-dllm-fdfo", "--no-enable-decoder-swa-bounded-replay",
        "--no-enable-dsa-fused-indexer", "--no-enable-fused-qk-norm-rope",
        "--no-enable-tf32-matmul", "--no-enable-tp-lm-head-all-to-all",
        "--no-experts-shared-outer-loras", "--no-lora-strict-loading",
        "--no-mm-enable-dp-encoder", "--no-ple-offload-embedding",
        "--no-speculative-enable-w4a4-mxfp4-megamoe",
    }))

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server"]

    def head_argv(self, model: ModelConfig, replica: ReplicaConfig, port: int) -> list[str]:
        return [*self._cli(), "--model-path", model.source, "--host", replica.host,
                "--port", str(port)]

    def serves_embeddings(self, engine_args: dict[str, object]) -> bool:
        # sglang 0.5.23 routes /v1/embeddings always (srt/entrypoints/http_server.py) but only
        # an --is-embedding model answers it, and such a model does not generate
        return bool(engine_args.get("is_embedding"))

    def help_argv(self, spec: LaunchSpec) -> list[str]:
        return [*self._cli(), "--help"]
