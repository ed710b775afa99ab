"""SGLang's ``python -m sglang.launch_server``: GPU production engine."""

from __future__ import annotations

import sys

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.base import EngineAdapter, LaunchSpec, render_engine_args


class SglangAdapter(EngineAdapter):
    name = "sglang"
    # flags checked against sglang/srt/server_args.py of this release (docs/engines.md)
    documented_version = "sglang 0.5.23"

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server"]

    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        argv = [*self._cli(), "--model-path", model.source, "--host", replica.host,
                "--port", str(port), "--served-model-name", model_name]
        if len(replica.gpus) > 1:
            argv += ["--tp-size", str(len(replica.gpus))]
        if model.max_context:
            argv += ["--context-length", str(model.max_context)]
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
        return [*self._cli(), "--help"]
