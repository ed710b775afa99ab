"""Before start: ask the installed engine for its own --help and refuse flags it does not know."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

from homellm.engines.base import LaunchSpec, false_refusal
from homellm.engines.registry import adapter_for
from homellm.errors import ConfigError, EngineError

_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w.-]*)")
_help_cache: dict[tuple[str, ...], frozenset[str]] = {}


def accepted_flags(help_argv: list[str], timeout_s: float = 180.0,
                   env: dict[str, str] | None = None) -> frozenset[str]:
    """Every ``--flag`` that appears in the engine's help text (cached per command); ``env``
    is added to the inherited environment, where the variable is not set already."""
    added = {k: v for k, v in (env or {}).items() if k not in os.environ}
    key = (*help_argv, *sorted(f"{k}={v}" for k, v in added.items()))
    if key in _help_cache:
        return _help_cache[key]
    try:
        done = subprocess.run(help_argv, capture_output=True, text=True, timeout=timeout_s,
                              check=False, env={**os.environ, **added} if added else None)
    except FileNotFoundError:
        raise EngineError(f"engine command not found: {help_argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"'{' '.join(help_argv)}' did not finish in {timeout_s:.0f} s") from None
    text = done.stdout + done.stderr
    flags = frozenset(m.rstrip(".") for m in _FLAG.findall(text))
    if done.returncode != 0 or "--port" not in flags:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"'{' '.join(help_argv[:4])}' failed (is the engine installed?): {last}")
    _help_cache[key] = flags
    return flags


def preflight(spec: LaunchSpec) -> LaunchSpec:
    """The spec with unsupported optional flags dropped. A flag the stack file's engine_args
    asked for and the engine lacks is a ConfigError at that entry's FILE:LINE; one homellm
    adds itself is an EngineError (the engine is older or newer than the documented one)."""
    if spec.remote:
        return spec
    adapter = adapter_for(spec.engine)
    flags = accepted_flags(adapter.help_argv(spec), env=adapter.help_env)
    unknown = [f for f in adapter.flags_to_check(spec) if f not in flags]
    refused = [f for f in unknown if f not in spec.optional_flags]
    checked = f"checked with '{' '.join(adapter.help_argv(spec)[-3:])}'"
    asked = [f for f in refused if f in spec.arg_origins]
    if asked:
        flag, origin = asked[0], spec.arg_origins[asked[0]]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        if origin.value is False:
            raise ConfigError(false_refusal(f"the installed {spec.engine}", origin.where, flag)
                              + f" ({checked}){more}")
        raise ConfigError(f"{origin.where}: the installed {spec.engine} does not accept {flag} "
                          f"({checked}); remove it or correct its name{more}")
    if refused:
        raise EngineError(
            f"{spec.replica}: the installed {spec.engine} does not accept {', '.join(refused)} "
            f"({checked}); homellm emits the flags of {adapter.documented_version}"
        )
    if not unknown:
        return spec
    argv = [a for a in spec.argv if a.split("=", 1)[0] not in unknown]
    return dataclasses.replace(spec, argv=argv, optional_flags=())
