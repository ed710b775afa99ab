"""What every engine adapter produces: the exact process to start and how to tell it is ready."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.rope import rope_extension, with_config_overrides
from homellm.errors import ConfigError


@dataclass(frozen=True)
class LaunchSpec:
    """One replica, resolved: the command, its added environment, and where it answers."""

    model: str  # the public model name (stack-file key)
    replica: str  # "MODEL/INDEX", unique in the stack
    role: str  # primary | backup
    argv: list[str]  # empty for a remote backend (nothing to start)
    env: dict[str, str]  # added to the inherited environment
    base_url: str  # http://host:port, no trailing slash; OpenAI routes live under /v1
    health_url: str  # GET → 200 when ready to serve
    upstream_model: str  # the name to put in the request's "model" field for this engine
    engine: str
    gpus: list[int] = field(default_factory=list)
    # flags dropped, not refused, when the installed engine lacks them (nice-to-have features)
    optional_flags: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        return not self.argv


def engine_flag(name: str) -> str:
    """``max_model_len`` and ``max-model-len`` both become ``--max-model-len``."""
    return "--" + name.lstrip("-").replace("_", "-")


def render_engine_args(args: dict[str, str | int | float | bool | None]) -> list[str]:
    """``{flag: value}`` → argv; ``True`` or ``None`` is a bare flag, ``False`` leaves it out."""
    argv: list[str] = []
    for name, value in args.items():
        if value is False:
            continue
        argv.append(engine_flag(name))
        if value is not True and value is not None:
            argv.append(str(value))
    return argv


class EngineAdapter(ABC):
    """Builds the command for one engine. Knows nothing of networking beyond the health URL."""

    name: str
    # the version whose documentation the emitted flags were checked against
    documented_version: str

    @abstractmethod
    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        """The process for replica ``index`` of ``model``, listening on ``port``."""

    @abstractmethod
    def help_argv(self, spec: LaunchSpec) -> list[str]:
        """A command whose output lists every flag the installed engine accepts."""

    def flags_to_check(self, spec: LaunchSpec) -> list[str]:
        """The ``--flags`` in the launch command (values and positionals left out)."""
        return sorted({a.split("=", 1)[0] for a in spec.argv if a.startswith("--")})

    @staticmethod
    def cuda_env(gpus: list[int]) -> dict[str, str]:
        # an empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU replica cannot grab one by accident
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


class ServedModelAdapter(EngineAdapter):
    """Engines serving under ``--served-model-name`` with TP/context/dtype flags (vLLM, SGLang)."""

    tensor_parallel_flag: str
    context_flag: str
    # the engine_args key of pipeline parallelism: the replica's GPUs are then tp × pp
    pipeline_parallel_arg: str
    # the engine_args key taking config.json overrides as JSON (rope scaling for long contexts)
    config_override_arg: str

    @abstractmethod
    def head_argv(self, model: ModelConfig, replica: ReplicaConfig, port: int) -> list[str]:
        """The command up to and including model, host and port."""

    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        argv = [*self.head_argv(model, replica, port), "--served-model-name", model_name]
        pp = model.engine_args.get(self.pipeline_parallel_arg) or 1
        if not isinstance(pp, int) or pp < 1 or len(replica.gpus) % pp:
            raise ConfigError(f"models.{model_name}.engine_args.{self.pipeline_parallel_arg}: "
                              f"{pp!r} must be a whole divisor of the replica's "
                              f"{len(replica.gpus)} GPU(s)")
        tp = max(1, len(replica.gpus) // pp)
        if tp > 1:
            argv += [self.tensor_parallel_flag, str(tp)]
        if model.max_context:
            argv += [self.context_flag, str(model.max_context)]
        if model.dtype != "auto":
            argv += ["--dtype", model.dtype]
        argv += render_engine_args(with_config_overrides(
            model_name, model.engine_args, self.config_override_arg, rope_extension(model)))
        base = f"http://{replica.host}:{port}"
        return LaunchSpec(
            model=model_name, replica=f"{model_name}/{index}", role=replica.role, argv=argv,
            env=self.cuda_env(replica.gpus), base_url=base, health_url=f"{base}/health",
            upstream_model=model_name, engine=self.name, gpus=list(replica.gpus),
        )
