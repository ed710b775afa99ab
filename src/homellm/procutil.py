"""Child processes that do not outlive their parent: the kernel signals them when the process
that started them dies for any reason, SIGKILL included (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: dlopen is unsafe after one


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when ``parent_pid`` dies."""

    def setup() -> None:  # runs in the child between fork and exec
        _libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup
