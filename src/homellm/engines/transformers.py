"""``transformers serve``: the embedded default engine, on CPU or CUDA."""

from __future__ import annotations

import sys

from homellm.config import ModelConfig, ReplicaConfig, is_hub_id
from homellm.engines.base import EngineAdapter, FalseFlags, LaunchSpec

# `transformers serve` (cli/serving/server.py) has chat and completions, and no /v1/embeddings
ROUTES = ("/v1/chat/completions", "/v1/completions")


class TransformersAdapter(EngineAdapter):
    name = "transformers"
    # flags checked against `transformers serve --help` of this release (see docs/engines.md)
    documented_version = "transformers 5.23.0"
    # cli/serve.py declares its options with typer, which makes every bool option --x/--no-x
    false_flags = FalseFlags(all_negatable=True)

    def _cli(self) -> list[str]:
        # the module form finds the transformers installed beside homellm, with no PATH lookup
        return [sys.executable, "-m", "transformers.cli.transformers"]

    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        gpus = replica.gpus
        if model.device == "cpu" or (model.device == "auto" and not gpus):
            device = "cpu"
        elif len(gpus) == 1:
            device = "cuda:0"  # the one GPU CUDA_VISIBLE_DEVICES leaves visible
        else:
            # device_map="auto" splits layers over the visible GPUs: it fits bigger models but
            # runs them one GPU at a time, so decoding gets no faster (tensor parallel needs vLLM)
            device = "auto"
        argv = [*self._cli(), "serve", model.source, "--host", replica.host, "--port", str(port),
                "--device", device]
        if model.dtype != "auto":
            argv += ["--dtype", model.dtype]
        optional: list[str] = []
        if device != "cpu" and "continuous_batching" not in model.engine_args:
            # on CPU its sampler ignores temperature=0 and stop strings (docs/engines.md)
            argv.append("--continuous-batching")
            optional.append("--continuous-batching")
        argv += self.render_engine_args(model.engine_args)
        env = self.cuda_env(gpus)
        if not is_hub_id(model.source):
            env["HF_HUB_OFFLINE"] = "1"
        base = f"http://{replica.host}:{port}"
        return LaunchSpec(
            model=model_name, replica=f"{model_name}/{index}", role=replica.role, argv=argv,
            env=env, base_url=base, health_url=f"{base}/health",
            upstream_model=model.source,  # a pinned server answers only to its own model id
            engine=self.name, gpus=list(gpus), optional_flags=tuple(optional), routes=ROUTES,
        )

    def help_argv(self, spec: LaunchSpec) -> list[str]:
        return [*self._cli(), "serve", "--help"]

    def config_warnings(self, model: ModelConfig) -> list[tuple[str, str]]:
        if model.max_context is None:
            return []
        # `transformers serve --help` (5.23.0) has no context-length option; the model runs
        # with whatever length a request brings
        return [("max_context", f"transformers serve has no context-length limit, so "
                 f"{model.max_context} is not enforced: longer requests still reach the model; "
                 "use vllm, sglang or llamacpp to enforce it, or remove max_context")]

