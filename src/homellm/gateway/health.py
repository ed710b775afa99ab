"""Active health checks: one task per backend, for the gateway's whole life.

Each task GETs the backend's ``health_url`` at once, then every ``health.interval_s`` (sooner when
an ejected backend's cooldown ends before the next tick), with ``health.timeout_s`` per check.
A 2xx answer is a pass; anything else (status, timeout, connection error) is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import aiohttp

from homellm.config import HealthConfig
from homellm.gateway.backends import EJECTED, Backend, Transition

log = logging.getLogger("homellm.gateway")


def log_transition(transition: Transition | None) -> None:
    """One log line per backend state change (ejections and returns included)."""
    if transition is None:
        return
    level = logging.INFO if transition.new == "ready" else logging.WARNING
    event = "backend_ejected" if transition.new == EJECTED else "backend_state"
    log.log(
        level,
        'event=%s backend=%s from=%s to=%s reason="%s"',
        event,
        transition.backend,
        transition.old,
        transition.new,
        transition.reason.replace('"', "'"),
    )


def describe_error(exc: BaseException) -> str:
    """A short one-line text for an exception (its type, then its message when it has one)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class HealthChecker:
    """Runs the active checks; state changes go through :class:`Backend` methods."""

    def __init__(
        self, session: aiohttp.ClientSession, backends: Iterable[Backend], config: HealthConfig
    ) -> None:
        self._session = session
        self._backends = list(backends)
        self._config = config
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._tasks: list[asyncio.Task[None]] = []

    def configure(self, config: HealthConfig) -> None:
        """New settings from a reloaded stack file, in force from each backend's next check."""
        self._config = config
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    def start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(backend), name=f"homellm-health-{backend.name}")
            for backend in self._backends
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self, backend: Backend) -> bool:
        """Run one check now and apply its result; returns whether it passed."""
        try:
            async with self._session.get(
                backend.info.health_url, timeout=self._timeout, allow_redirects=False
            ) as response:
                await response.read()
                ok = 200 <= response.status < 300
                error = "" if ok else f"health check answered HTTP {response.status}"
        except TimeoutError:
            ok, error = False, f"health check timed out after {self._config.timeout_s} s"
        except (aiohttp.ClientError, OSError) as exc:
            ok, error = False, describe_error(exc)
        now = time.monotonic()
        if ok:
            log_transition(backend.check_passed(now))
        else:
            log_transition(backend.check_failed(now, error))
        return ok

    async def _run(self, backend: Backend) -> None:
        while True:
            interval = self._config.interval_s
            try:
                await self.check(backend)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one odd failure end the checks for good
                log.exception("event=health_check_error backend=%s", backend.name)
            delay = interval
            if backend.state == EJECTED and backend.ejected_until is not None:
                delay = min(interval, max(0.0, backend.ejected_until - time.monotonic()))
            await asyncio.sleep(delay)
