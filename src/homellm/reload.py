"""Re-read the stack file of a running ``up`` (SIGHUP or ``homellm reload``) and apply it.

What a reload may change: everything under ``gateway`` except ``listen`` (limits, timeouts,
attempts, health checks, the keys file). Models, replicas, the supervisor section and the run
folder name processes that are running; changing them needs a restart, so a file that changes
them is refused as a whole. An invalid file is refused too. A refused reload changes nothing:
the configuration in force stays in force, and the caller is told why in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from homellm.config import StackConfig, load_stack
from homellm.errors import ConfigError
from homellm.gateway.app import Gateway
from homellm.keys import KeyVerifier

log = logging.getLogger("homellm.reload")

_GATEWAY_PARTS = ("api_keys_file", "max_attempts", "health", "timeouts", "limits", "clients")


def _needs_restart(old: StackConfig, new: StackConfig) -> str | None:
    if new.models != old.models:
        changed = sorted(set(old.models) ^ set(new.models)) or sorted(
            name for name in new.models if new.models[name] != old.models.get(name))
        return f"models ({', '.join(changed)})"
    for section in ("supervisor", "run_dir"):
        if getattr(new, section) != getattr(old, section):
            return section
    if new.gateway.listen != old.gateway.listen:
        return "gateway.listen"
    return None


def reload_stack(gateway: Gateway, running: StackConfig, stack_file: Path,
                 loopback: bool) -> tuple[StackConfig, dict[str, Any]]:
    """Load ``stack_file`` and apply it to ``gateway``. Returns the stack now in force and what
    happened; raises ConfigError (nothing applied) when the file is invalid or needs a restart.

    ``loopback``: the gateway listens on loopback only (else a file without keys is refused).
    """
    where = str(stack_file)
    try:
        new = load_stack(stack_file)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; the running configuration stays in force") from None
    restart = _needs_restart(running, new)
    if restart is not None:
        raise ConfigError(f"{where}: {restart} changed: that needs a restart of `homellm up` "
                          "(nothing was changed; the running configuration stays in force)")
    keys_file = new.gateway.api_keys_file
    verifier = gateway.keys
    if keys_file != running.gateway.api_keys_file:
        if keys_file is None and not loopback:
            raise ConfigError(f"{where}: gateway.api_keys_file: removing the keys of a gateway "
                              "that listens beyond loopback is refused; the running configuration "
                              "stays in force")
        try:
            verifier = KeyVerifier(Path(keys_file)) if keys_file else None
        except ConfigError as exc:
            raise ConfigError(f"{exc}; the running configuration stays in force") from None
    changed = [part for part in _GATEWAY_PARTS
               if getattr(new.gateway, part) != getattr(running.gateway, part)]
    gateway.keys = verifier
    gateway.configure(new.gateway)
    log.info("event=reloaded file=%s changed=%s", where, ",".join(changed) or "nothing")
    return new, {"reloaded": True, "file": where, "changed": changed}
