"""``vllm serve``: GPU production engine (tensor parallel over the replica's GPUs)."""

from __future__ import annotations

import shutil
import sys

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.base import EngineAdapter, LaunchSpec, render_engine_args


class VllmAdapter(EngineAdapter):
    name = "vllm"
    # flags checked against vllm/engine/arg_utils.py and entrypoints/openai/cli_args.py of
    # this release (docs/engines.md); the preflight re-checks the installed one's --help
    documented_version = "vllm 0.33.0"

    def _cli(self) -> list[str]:
        exe = shutil.which("vllm")
        return [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]

    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        argv = [*self._cli(), "serve", model.source, "--host", replica.host, "--port", str(port),
                "--served-model-name", model_name]
        if len(replica.gpus) > 1:
            argv += ["--tensor-parallel-size", str(len(replica.gpus))]
        if model.max_context:
            argv += ["--max-model-len", str(model.max_context)]
        if model.dtype != "auto":
            argv += ["--dtype", model.dtype]
        argv += render_engine_args(model.engine_args)
        base = f"http://{replica.host}:{port}"
        return LaunchSpec(
            model=model_name, replica=f"{model_name}/{index}", role=replica.role, argv=argv,
            env=self.cuda_env(replica.gpus), base_url=base, health_url=f"{base}/health",
            upstream_model=model_name, engine=self.name, gpus=list(replica.gpus),
        )

    def help_argv(self, spec: LaunchSpec) -> list[str]:
        # plain --help lists only groups in recent releases; =all prints every flag
        return [*self._cli(), "serve", "--help=all"]
