"""Stack file → one LaunchSpec per replica: adapter choice and port assignment."""

from __future__ import annotations

import dataclasses
import socket

from homellm.config import ModelConfig, StackConfig, StackWarning
from homellm.engines.base import (
    ArgOrigin,
    EngineAdapter,
    LaunchSpec,
    engine_flag,
    false_refusal,
)
from homellm.engines.sglang import SglangAdapter
from homellm.engines.transformers import TransformersAdapter
from homellm.engines.vllm import VllmAdapter
from homellm.errors import ConfigError

FIRST_ENGINE_PORT = 8100


def adapter_for(engine: str) -> EngineAdapter:
    if engine == "transformers":
        return TransformersAdapter()
    if engine == "vllm":
        return VllmAdapter()
    if engine == "sglang":
        return SglangAdapter()
    if engine == "llamacpp":
        from homellm.engines.llamacpp import LlamaCppAdapter

        return LlamaCppAdapter()
    raise ConfigError(f"unknown engine {engine!r}: expected transformers, vllm, sglang or llamacpp")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _next_free_port(host: str, start: int, taken: set[int]) -> int:
    port = start
    while port in taken or not port_is_free(host, port):
        port += 1
        if port > 65535:
            raise ConfigError(f"no free port for an engine on {host} from {start} up")
    return port


# for remote replicas; llama-cpp-python's server has no /health, /v1/models works on both kinds
HEALTH_PATHS = {"transformers": "/health", "vllm": "/health", "sglang": "/health",
                "llamacpp": "/v1/models"}


def resolve_stack(stack: StackConfig) -> list[LaunchSpec]:
    """Every replica as a LaunchSpec; replicas without a port get the next free one from 8100."""
    specs: list[LaunchSpec] = []
    taken = {stack.gateway.port}
    taken |= {r.port for m in stack.models.values() for r in m.replicas if r.port and not r.url}
    for name, stacked in stack.models.items():
        for index, replica in enumerate(stacked.replicas):
            model = stacked.for_replica(replica)
            if replica.url:
                specs.append(LaunchSpec(
                    model=name, replica=f"{name}/{index}", role=replica.role, argv=[], env={},
                    base_url=replica.url, health_url=replica.url + HEALTH_PATHS[model.engine],
                    upstream_model=name, engine=model.engine, gpus=list(replica.gpus),
                ))
                continue
            port = replica.port or _next_free_port(replica.host, FIRST_ENGINE_PORT, taken)
            taken.add(port)
            adapter = adapter_for(model.engine)
            origins = engine_arg_origins(stack, name, index, model, adapter)
            spec = adapter.launch(name, model, replica, index, port)
            specs.append(dataclasses.replace(spec, arg_origins=origins))
    return specs


def engine_arg_origins(stack: StackConfig, name: str, index: int, model: ModelConfig,
                       adapter: EngineAdapter) -> dict[str, ArgOrigin]:
    """The flag each engine_args entry of replica ``index`` becomes → where the file sets it;
    ConfigError at that FILE:LINE for ``false`` where the engine's parser has no negative."""
    replica = stack.models[name].replicas[index]
    path = ("models", name) if replica.engine_args is None else ("models", name, "replicas", index)
    origins: dict[str, ArgOrigin] = {}
    for key, value in model.engine_args.items():
        where = stack.where(*path, "engine_args", key)
        flag = adapter.arg_flag(key, value)
        if flag is None:
            negative = "--no-" + engine_flag(key).removeprefix("--")
            raise ConfigError(false_refusal(adapter.name, where, negative))
        origins[flag] = ArgOrigin(where, value)
    return origins


def stack_warnings(stack: StackConfig) -> list[StackWarning]:
    """What a valid stack file asks for that its engines will not do (printed, exit 0)."""
    found: dict[str, StackWarning] = {}
    for name, stacked in stack.models.items():
        for replica in stacked.replicas:
            if replica.url:
                continue
            model = stacked.for_replica(replica)
            for field, message in adapter_for(model.engine).config_warnings(model):
                file, line, where = stack.locate("models", name, field)
                warning = StackWarning(file, line, where, message)
                found.setdefault(str(warning), warning)
    return list(found.values())
