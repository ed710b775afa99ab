"""What ``homellm up`` refuses or warns about before it binds a port or starts an engine.

``homellm check`` runs the same function, so a file that ``check`` passes is one ``up`` starts,
short of a taken port and, without ``--preflight``, flags the installed engines lack (``up``
always asks them).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from homellm.config import StackConfig, StackWarning
from homellm.engines.base import LaunchSpec
from homellm.engines.registry import resolve_stack, stack_warnings
from homellm.errors import ConfigError
from homellm.keys import KeyVerifier


@dataclass(frozen=True)
class ResolvedStack:
    """A stack file's processes, and what in it will not do what it says (exit 0 still)."""

    specs: list[LaunchSpec]
    warnings: list[StackWarning]


def resolve_for_start(stack: StackConfig) -> ResolvedStack:
    """The keys file (missing or broken: refused), every replica's command (ConfigError at the
    FILE:LINE of what the engine cannot take), and the warnings."""
    if stack.gateway.api_keys_file:
        KeyVerifier(Path(stack.gateway.api_keys_file))
    return ResolvedStack(resolve_stack(stack), stack_warnings(stack))


def check_run_folder(folder: Path, where: str) -> None:
    """ConfigError unless ``folder`` can hold `up`'s logs and admin key. A probe: it is made and
    written to, then whatever the probe made is removed again (`up` makes it for real)."""
    folder = folder.expanduser().absolute()
    made = None
    if not folder.exists():
        made = folder
        while not made.parent.exists() and made.parent != made:
            made = made.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: cannot use {folder} as the run folder: "
                          f"{exc.strerror or exc}") from None
    finally:
        if made is not None and made.is_dir():
            shutil.rmtree(made, ignore_errors=True)
