"""What every engine adapter produces: the exact process to start and how to tell it is ready."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from homellm.config import ModelConfig, ReplicaConfig
from homellm.engines.rope import rope_extension, unknown_window_warning, with_config_overrides
from homellm.errors import ConfigError

#: the OpenAI routes an engine serves unless its adapter names fewer (the gateway forwards and
#: advertises only the routes a model's engines serve)
OPENAI_ROUTES: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
EMBEDDINGS_ROUTE = "/v1/embeddings"


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
    routes: tuple[str, ...] = OPENAI_ROUTES  # the OpenAI routes this engine serves
    # flag → the stack file's engine_args entry it came from, so a flag the installed engine
    # refuses is reported at FILE:LINE of that entry (filled by registry.resolve_stack)
    arg_origins: dict[str, ArgOrigin] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return not self.argv


@dataclass(frozen=True)
class ArgOrigin:
    """Where an engine flag was asked for: ``homellm.yaml:7: models.a.engine_args.x``."""

    where: str
    value: str | int | float | bool | None


def engine_flag(name: str) -> str:
    """``max_model_len`` and ``max-model-len`` both become ``--max-model-len``."""
    return "--" + name.lstrip("-").replace("_", "-")


EngineArgs = dict[str, str | int | float | bool | None]


@dataclass(frozen=True)
class FalseFlags:
    """How an engine's parser turns a boolean flag off, as its source for the documented version
    declares it: ``engine_args: {x: false}`` must reach the engine as that form, or be refused
    (leaving the flag out keeps the engine's default, which may be on)."""

    # True: every boolean flag has a negative form (argparse's BooleanOptionalAction, typer's
    # bool options); False: plain store_true flags, only ``negatives`` exist
    all_negatable: bool
    # all_negatable: the flags that have none (store_true)
    store_true: frozenset[str] = frozenset()
    # not all_negatable: the negative flags that exist
    negatives: frozenset[str] = frozenset()
    # prefix swaps before ``--no-``: vLLM pairs ``--enable-x`` with ``--disable-x``
    inverse_prefixes: tuple[tuple[str, str], ...] = ()

    def negative(self, flag: str) -> str | None:
        """The flag that turns ``flag`` off; None when the engine has none."""
        if self.all_negatable:
            if flag in self.store_true:
                return None
            for prefix, inverse in self.inverse_prefixes:
                if flag.startswith(prefix):
                    return inverse + flag.removeprefix(prefix)
            return "--no-" + flag.removeprefix("--")
        negative = "--no-" + flag.removeprefix("--")
        return negative if negative in self.negatives else None


def false_refusal(engine: str, where: str, negative: str) -> str:
    """The one line for ``x: false`` where the engine has no ``negative`` form of ``--x``."""
    return f"{where}: false, but {engine} has no {negative}; remove it or set true"


def render_engine_args(args: EngineArgs, false_flags: FalseFlags, engine: str) -> list[str]:
    """``{flag: value}`` → argv; ``True`` or ``None`` is a bare flag, ``False`` the engine's
    negative form (ConfigError where it has none)."""
    argv: list[str] = []
    for name, value in args.items():
        flag = engine_flag(name)
        if value is False:
            negative = false_flags.negative(flag)
            if negative is None:
                raise ConfigError(false_refusal(engine, f"engine_args.{name}",
                                                "--no-" + flag.removeprefix("--")))
            argv.append(negative)
            continue
        argv.append(flag)
        if value is not True and value is not None:
            argv.append(str(value))
    return argv


class EngineAdapter(ABC):
    """Builds the command for one engine. Knows nothing of networking beyond the health URL."""

    name: str
    # the version whose documentation the emitted flags were checked against
    documented_version: str
    # how that version's parser spells a boolean flag turned off
    false_flags: FalseFlags

    def arg_flag(self, name: str, value: str | int | float | bool | None) -> str | None:
        """The flag engine_args ``name: value`` becomes; None: false, with no negative form."""
        flag = engine_flag(name)
        return self.false_flags.negative(flag) if value is False else flag

    def render_engine_args(self, args: EngineArgs) -> list[str]:
        return render_engine_args(args, self.false_flags, self.name)

    def config_warnings(self, model: ModelConfig) -> list[tuple[str, str]]:
        """(field, message) for settings of ``model`` this engine cannot apply."""
        return []

    @abstractmethod
    def launch(self, model_name: str, model: ModelConfig, replica: ReplicaConfig,
               index: int, port: int) -> LaunchSpec:
        """The process for replica ``index`` of ``model``, listening on ``port``."""

    @abstractmethod
    def help_argv(self, spec: LaunchSpec) -> list[str]:
        """A command whose output lists every flag the installed engine accepts."""

    #: added to the environment of that command (where not set already)
    help_env: ClassVar[dict[str, str]] = {}

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

    def config_warnings(self, model: ModelConfig) -> list[tuple[str, str]]:
        warning = unknown_window_warning(model, self.name)
        return [("max_context", warning)] if warning else []

    @abstractmethod
    def serves_embeddings(self, engine_args: dict[str, object]) -> bool:
        """The engine runs the model as an embedding (pooling) model: /v1/embeddings only."""

    def served_routes(self, model: ModelConfig) -> tuple[str, ...]:
        """A generating model serves chat and completions; a pooling one embeddings (the
        engines answer the other routes with an error, so the gateway does not forward them)."""
        if self.serves_embeddings(model.engine_args):
            return (EMBEDDINGS_ROUTE,)
        return tuple(r for r in OPENAI_ROUTES if r != EMBEDDINGS_ROUTE)

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
        argv += self.render_engine_args(with_config_overrides(
            model_name, model.engine_args, self.config_override_arg, rope_extension(model)))
        base = f"http://{replica.host}:{port}"
        return LaunchSpec(
            model=model_name, replica=f"{model_name}/{index}", role=replica.role, argv=argv,
            env=self.cuda_env(replica.gpus), base_url=base, health_url=f"{base}/health",
            upstream_model=model_name, engine=self.name, gpus=list(replica.gpus),
            routes=self.served_routes(model),
        )
