"""The stack file (``homellm.yaml``): schema and loading with one-line, file:line errors."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from homellm.errors import ConfigError
from homellm.longcontext import LongContextError, extension_for, window_for_source

EngineName = Literal["transformers", "vllm", "sglang", "llamacpp"]
ENGINE_NAMES: tuple[str, ...] = ("transformers", "vllm", "sglang", "llamacpp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaConfig(_Strict):
    """One engine process (or one remote backend, when ``url`` is given)."""

    gpus: list[int] = Field(default_factory=list, description="GPU indices; [] means CPU")
    role: Literal["primary", "backup"] = "primary"
    port: int | None = Field(default=None, ge=1, le=65535)
    host: str = "127.0.0.1"
    url: str | None = Field(default=None, description="remote backend base URL; not started here")
    # per-replica overrides of the model's settings: a GGUF backup on llama.cpp behind a
    # transformers or vLLM primary, for example
    engine: EngineName | None = None
    source: str | None = None
    engine_args: dict[str, str | int | float | bool | None] | None = None

    @field_validator("gpus")
    @classmethod
    def _gpus_unique(cls, gpus: list[int]) -> list[int]:
        if any(g < 0 for g in gpus):
            raise ValueError("GPU indices are 0 or more")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"a GPU is listed twice in {gpus}")
        return gpus

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url.rstrip("/") if url else url


class ModelConfig(_Strict):
    """One served model; ``replicas`` may override engine, source and engine_args each."""

    source: str = Field(description="a local Hugging Face folder, a .gguf file, or a hub id")
    engine: EngineName = "transformers"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_context: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine_args: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    replicas: list[ReplicaConfig] = Field(min_length=1)

    def for_replica(self, replica: ReplicaConfig) -> ModelConfig:
        """This model as one replica runs it, its overrides applied."""
        update = {key: value for key in ("engine", "source", "engine_args")
                  if (value := getattr(replica, key)) is not None}
        return self.model_copy(update=update) if update else self


class HealthConfig(_Strict):
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    fail_threshold: int = Field(default=2, ge=1, description="passive failures before ejection")
    cooldown_s: float = Field(default=10.0, ge=0)


class TimeoutConfig(_Strict):
    connect_s: float = Field(default=5.0, gt=0)
    first_token_s: float = Field(default=600.0, gt=0, description="long prefills are not stalls")
    between_tokens_s: float = Field(default=60.0, gt=0)


class KeyLimits(_Strict):
    """Limits of one API key; None: no limit of that kind."""

    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="prompt + completion tokens a minute")
    concurrent: int | None = Field(default=None, ge=1, description="requests in flight")


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_concurrent_requests: int | None = Field(default=None, ge=1,
                                                description="over all keys; None: no limit")
    per_key: KeyLimits = Field(default_factory=KeyLimits, description="every key's default")
    keys: dict[str, KeyLimits] = Field(default_factory=dict, description="by key name")


class ClientsConfig(_Strict):
    """How long the gateway waits on a client, and how many client connections it keeps open
    (see homellm.gateway.connections; nginx's client_header_timeout, client_body_timeout,
    keepalive_timeout and worker_connections are the same ideas)."""

    header_timeout_s: float = Field(default=10.0, gt=0, description="connection open (or the "
                                    "first byte after a response) to the end of the headers")
    body_timeout_s: float = Field(default=30.0, gt=0, description="between two reads of a body")
    idle_timeout_s: float = Field(default=15.0, gt=0, description="keep-alive between requests")
    max_connections: int = Field(default=1024, ge=1, description="more are refused (503)")


class GatewayConfig(_Strict):
    listen: str = "127.0.0.1:8080"
    api_keys_file: str | None = None
    max_attempts: int = Field(default=3, ge=1, description="backends tried before the first byte")
    health: HealthConfig = Field(default_factory=HealthConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)

    @field_validator("listen", mode="before")
    @classmethod
    def _listen_form(cls, listen: object) -> str:
        listen = str(listen)
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT (like 127.0.0.1:8080), got {listen!r}")
        if host not in ("localhost", "0.0.0.0", "::") and not host.startswith("["):
            try:
                ipaddress.ip_address(host)
            except ValueError as exc:
                raise ValueError(f"expected an IP address or localhost, got {host!r}") from exc
        return listen

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SupervisorConfig(_Strict):
    ready_timeout_s: float = Field(default=600.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    crash_loop_restarts: int = Field(default=5, ge=1)
    crash_loop_window_s: float = Field(default=120.0, gt=0)
    stop_grace_s: float = Field(default=10.0, gt=0)
    log_max_bytes: int = Field(default=10_000_000, ge=10_000)
    log_backups: int = Field(default=3, ge=0)


class StackConfig(_Strict):
    models: dict[str, ModelConfig] = Field(min_length=1)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    run_dir: str | None = None

    # where the file was read from: set by parse_stack, so later layers (engines) can name the
    # FILE:LINE of a field they refuse
    _file: str = PrivateAttr(default="homellm.yaml")
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    def locate(self, *path: str | int) -> tuple[str, int, str]:
        """(file, line, dotted.path) of a field, at the nearest line the file has for it."""
        line = _nearest_line(self._lines, path) or 1
        return self._file, line, ".".join(str(p) for p in path)

    def where(self, *path: str | int) -> str:
        """``FILE:LINE: dotted.path``: how a one-line config error starts."""
        file, line, field = self.locate(*path)
        return f"{file}:{line}: {field}"

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        if self.gateway.api_keys_file is None and not is_loopback(self.gateway.host):
            # `up` would bind it: without keys anyone on the network could use the models
            raise ValueError(f"gateway.listen: {self.gateway.listen} is not loopback, and no API "
                             "keys are configured; listen on 127.0.0.1 or set "
                             "gateway.api_keys_file")
        seen_gpu: dict[int, str] = {}
        seen_port: dict[tuple[str, int], str] = {(self.gateway.host, self.gateway.port): "gateway"}
        for name, model in self.models.items():
            for index, replica in enumerate(model.replicas):
                where = f"models.{name}.replicas.{index}"
                engine = replica.engine or model.engine
                if replica.url is None and engine in ("vllm", "sglang") and not replica.gpus:
                    raise ValueError(f"{where}.gpus: {engine} needs at least one GPU")
                for gpu in replica.gpus:
                    if gpu in seen_gpu:
                        raise ValueError(
                            f"{where}.gpus: GPU {gpu} is already used by {seen_gpu[gpu]}"
                        )
                    seen_gpu[gpu] = where
                if replica.port is not None and replica.url is None:
                    key = (replica.host, replica.port)
                    if key in seen_port:
                        raise ValueError(
                            f"{where}.port: port {replica.port} is already used by {seen_port[key]}"
                        )
                    seen_port[key] = where
            if not any(r.role == "primary" for r in model.replicas):
                raise ValueError(f"models.{name}.replicas: at least one replica must be primary")
        return self


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Map every key path in the YAML document to its 1-based line."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_index(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, (*path, index), out)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for cut in range(len(loc), -1, -1):
        key = tuple(str(p) if not isinstance(p, int) else p for p in loc[:cut])
        if key in lines:
            return lines[key]
    return None


def _field_path_from_message(message: str) -> tuple[Any, ...] | None:
    head = message.split(":", 1)[0]
    if "." not in head or " " in head:
        return None
    return tuple(int(p) if p.isdigit() else p for p in head.split("."))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, mapping: yaml.MappingNode, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.mapping, self.key, self.line, self.first_line = mapping, key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently, so the line a user edits may not be the one in force)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden, as YAML's merge allows
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _DuplicateKey(node, key, line, first[key])
                first[key] = line
            except TypeError:
                continue  # an unhashable key: the safe loader's own error says so
        return super().construct_mapping(node, deep)


def _mapping_paths(node: yaml.Node, path: tuple[Any, ...], out: dict[int, tuple[Any, ...]]
                   ) -> None:
    """id(mapping node) → its key path, to name where a duplicate key sits."""
    if isinstance(node, yaml.MappingNode):
        out[id(node)] = path
        for key_node, value_node in node.value:
            _mapping_paths(value_node, (*path, key_node.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _mapping_paths(item, (*path, index), out)


def read_yaml_mapping(text: str, filename: str, expected: str
                      ) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """YAML text → (mapping, line of every key path); one-line ConfigError for a syntax error,
    a key given twice in one mapping (naming both lines), or a document that is not a mapping
    (``expected`` says what it should hold)."""
    loader = _UniqueKeyLoader(text)
    root: yaml.Node | None = None
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except _DuplicateKey as exc:
        paths: dict[int, tuple[Any, ...]] = {}
        if root is not None:
            _mapping_paths(root, (), paths)
        where = ".".join(str(p) for p in (*paths.get(id(exc.mapping), ()), exc.key))
        raise ConfigError(f"{filename}:{exc.line}: {where}: duplicate key (first at line "
                          f"{exc.first_line})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{filename}{line}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: expected a mapping with {expected}")
    lines: dict[tuple[Any, ...], int] = {}
    if root is not None:
        _line_index(root, (), lines)
    return data, lines


def parse_stack(text: str, filename: str = "homellm.yaml") -> StackConfig:
    """Validate stack-file text; raise ConfigError 'FILE:LINE: field: what was expected'."""
    data, lines = read_yaml_mapping(text, filename, "a 'models:' section")
    try:
        stack = StackConfig.model_validate(data)
        stack._file, stack._lines = filename, lines
        return stack
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "literal_error":
            message = f"expected {error['ctx']['expected']}, got {error['input']!r}"
        elif error["type"] == "missing":
            message = "required field is missing"
        field_path = _field_path_from_message(message) if not loc else None
        if field_path is not None:
            loc, message = field_path, message.split(": ", 1)[1]
        line = _nearest_line(lines, loc)
        where = ".".join(str(p) for p in loc) or "(top)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{filename}:{line or 1}: {where}: {message}{more}") from None


def read_config_text(file: Path, what: str) -> str:
    """A config file's UTF-8 text, or a one-line ConfigError naming the file and ``what`` it is
    (``stack file``, ``run config file``)."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the {what}: {exc}") from None


def load_stack(path: str | Path, check_sources: bool = True) -> StackConfig:
    """Read and validate a stack file; relative model folders resolve against the file's folder."""
    file = Path(path)
    text = read_config_text(file, "stack file")
    stack = parse_stack(text, str(file))
    base = file.resolve().parent
    keys = stack.gateway.api_keys_file
    if keys is not None and not Path(keys).expanduser().is_absolute():
        stack.gateway.api_keys_file = str(base / keys)
    lines: dict[tuple[Any, ...], int] = {}
    _line_index(yaml.compose(text), (), lines)
    for name, model in stack.models.items():
        holders: list[tuple[tuple[Any, ...], Any]] = [(("models", name), model)]
        holders += [(("models", name, "replicas", i), r) for i, r in enumerate(model.replicas)
                    if r.source is not None]
        for path, holder in holders:
            resolved = resolve_source(holder.source, base)
            if resolved is not None:
                holder.source = str(resolved)
            elif check_sources and not is_hub_id(holder.source):
                line = lines.get((*path, "source"), 1)
                where = ".".join(str(p) for p in path)
                raise ConfigError(f"{file}:{line}: {where}.source: model {holder.source!r} "
                                  "not found")
        if model.max_context:
            line = lines.get(("models", name, "max_context"), 1)
            runs = [(r.source or model.source, r.engine or model.engine) for r in model.replicas
                    if r.url is None]
            check_long_context(f"{file}:{line}: models.{name}.max_context",
                               model.max_context, runs)
    return stack


def check_long_context(where: str, context: int, runs: list[tuple[str, str]]) -> None:
    """Refuse a context beyond a model's window that its authors document no rope scaling for
    (:mod:`homellm.longcontext`), or that needs rope scaling on an engine that cannot be given
    it (``transformers serve`` takes no config override); an unknown window (a hub id neither
    cached nor in the catalog) is left to the engine. ``runs``: (source, engine) per replica."""
    for source, engine in dict.fromkeys(runs):
        window = window_for_source(source)
        if window is None:
            continue
        try:
            extension = extension_for(window, context)
        except LongContextError as exc:
            raise ConfigError(f"{where}: {exc.problem}") from None
        if extension is not None and engine == "transformers":
            raise ConfigError(
                f"{where}: {context} is beyond the model's window ({window.native}) and needs "
                f"YaRN ×{extension.factor:g}, which transformers serve cannot be given on its "
                f"command line; set max_context to {window.native} or less, serve it with "
                "vllm or sglang (homellm adds the rope scaling), or add rope_parameters to "
                "the model's config.json")


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StackWarning:
    """Something in a valid stack file that will not do what it says (not an error: exit 0)."""

    file: str
    line: int
    field: str  # dotted path, like models.a.max_context
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


def is_hub_id(source: str) -> bool:
    """``org/name`` as the Hugging Face hub names models; anything else is a local path."""
    return (not source.startswith((".", "/", "~")) and not source.endswith(".gguf")
            and source.count("/") == 1)


def resolve_source(source: str, base: Path) -> Path | None:
    """A source that names an existing file or folder (relative to ``base``) becomes absolute."""
    candidate = Path(source).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return candidate.resolve() if candidate.exists() else None
