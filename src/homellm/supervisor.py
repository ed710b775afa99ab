"""Run engine processes: start and wait for readiness, restart with backoff, stop cleanly.

Each replica is its own process group, so a stop reaches every process an engine spawned. The
kernel kills an engine whose supervisor dies (PR_SET_PDEATHSIG), and a marker is set in
their environment so the next ``up`` reaps any grandchild that outlived a SIGKILLed supervisor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import logging.handlers
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from homellm.config import SupervisorConfig
from homellm.engines.base import LaunchSpec
from homellm.errors import SupervisorError
from homellm.procutil import die_with_parent

log = logging.getLogger("homellm.supervisor")

_MARKER = "HOMELLM_ENGINE_OF"
EventCallback = Callable[[str, str, str], None]  # (replica, event, detail)


@dataclass
class ReplicaStatus:
    replica: str
    model: str
    role: str
    state: str = "stopped"  # stopped | starting | ready | backoff | failed | remote
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    last_error: str = ""
    log_file: str = ""
    started_at: float | None = None


@dataclass
class _Replica:
    spec: LaunchSpec
    status: ReplicaStatus
    log_handler: logging.Handler | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    process: asyncio.subprocess.Process | None = None
    monitor: asyncio.Task[None] | None = None
    exit_times: collections.deque[float] = field(default_factory=collections.deque)
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    timed_out: bool = False  # killed by us for not getting ready in time


class Supervisor:
    def __init__(self, specs: list[LaunchSpec], config: SupervisorConfig, run_dir: Path,
                 on_event: EventCallback | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.on_event = on_event or (lambda replica, event, detail: None)
        self._replicas = {
            s.replica: _Replica(s, ReplicaStatus(s.replica, s.model, s.role,
                                                 state="remote" if s.remote else "stopped"))
            for s in specs
        }

    # ---- public -------------------------------------------------------------------------
    def status(self) -> list[ReplicaStatus]:
        return [r.status for r in self._replicas.values()]

    def pid_of(self, replica: str) -> int | None:
        return self._replicas[replica].status.pid

    async def start_all(self) -> None:
        """Start every local replica and wait until all are ready; on failure stop everything."""
        self.run_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
        reap_leftovers(self.run_dir)
        local = [r for r in self._replicas.values() if not r.spec.remote]
        for replica in local:
            replica.monitor = asyncio.create_task(self._run(replica), name=replica.spec.replica)
        waits = [asyncio.create_task(self._wait_first_ready(r)) for r in local]
        try:
            await asyncio.gather(*waits)
        except BaseException:
            for task in waits:
                task.cancel()
            await self.stop_all()
            raise

    async def stop_all(self) -> None:
        replicas = list(self._replicas.values())
        for replica in replicas:
            replica.stopping = True
        await asyncio.gather(*(self._terminate(r) for r in replicas), return_exceptions=True)
        for replica in replicas:
            if replica.monitor:
                replica.monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await replica.monitor
            if replica.status.state != "remote":
                replica.status.state = "stopped"
            replica.status.pid = None

    async def restart(self, name: str) -> None:
        """Stop one replica's process; the monitor starts it again at once (no backoff)."""
        replica = self._replicas[name]
        replica.exit_times.clear()
        await self._terminate(replica)

    # ---- internals ----------------------------------------------------------------------
    def _emit(self, replica: _Replica, event: str, detail: str = "") -> None:
        log.info("replica=%s event=%s %s", replica.spec.replica, event, detail)
        self.on_event(replica.spec.replica, event, detail)

    def _open_log(self, replica: _Replica) -> logging.Handler:
        if replica.log_handler is None:
            path = self.run_dir / "logs" / (replica.spec.replica.replace("/", "-") + ".log")
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=self.config.log_max_bytes, backupCount=self.config.log_backups,
                encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            replica.log_handler = handler
            replica.status.log_file = str(path)
        return replica.log_handler

    async def _spawn(self, replica: _Replica) -> asyncio.subprocess.Process:
        spec = replica.spec
        handler = self._open_log(replica)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        handler.emit(logging.makeLogRecord({"msg": f"--- {stamp} homellm starts: "
                                                   f"{' '.join(spec.argv)}"}))
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1",
               _MARKER: str(self.run_dir.resolve())}
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
            )
        except OSError as exc:
            raise SupervisorError(f"{spec.replica}: cannot start {spec.argv[0]}: {exc}") from None
        replica.process = process
        replica.status.pid = process.pid
        replica.status.started_at = time.time()
        return process

    async def _pump_log(self, replica: _Replica, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        handler = self._open_log(replica)
        while True:
            line = await process.stdout.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            replica.tail.append(text)
            handler.emit(logging.makeLogRecord({"msg": text}))

    async def _run(self, replica: _Replica) -> None:
        """Keep one replica running: spawn, watch readiness, restart with backoff on exit."""
        status = replica.status
        while not replica.stopping:
            status.state = "starting"
            try:
                process = await self._spawn(replica)
            except SupervisorError as exc:
                status.state, status.last_error = "failed", str(exc)
                self._emit(replica, "failed", str(exc))
                return
            self._emit(replica, "started", f"pid={process.pid}")
            pump = asyncio.create_task(self._pump_log(replica, process))
            ready = asyncio.create_task(self._watch_ready(replica, process))
            code = await process.wait()
            ready.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(pump, 2.0)
            status.pid, status.last_exit = None, code
            replica.ready_event.clear()
            if replica.stopping:
                return
            if status.started_at and time.time() - status.started_at > self.config.backoff_max_s:
                replica.exit_times.clear()  # it ran a good while: not a crash loop
            now = time.monotonic()
            replica.exit_times.append(now)
            window = self.config.crash_loop_window_s
            while replica.exit_times and now - replica.exit_times[0] > window:
                replica.exit_times.popleft()
            if replica.timed_out:
                status.last_error = f"not ready after {self.config.ready_timeout_s:.0f} s, killed"
            else:
                status.last_error = f"exited with code {code}" + _tail_hint(replica)
            replica.timed_out = False
            if len(replica.exit_times) >= self.config.crash_loop_restarts:
                status.state = "failed"
                self._emit(replica, "failed", f"crash loop: {len(replica.exit_times)} exits in "
                           f"{self.config.crash_loop_window_s:.0f} s; last: {status.last_error}")
                return
            delay = min(self.config.backoff_initial_s * 2 ** (len(replica.exit_times) - 1),
                        self.config.backoff_max_s)
            status.state = "backoff"
            self._emit(replica, "exited", f"code={code} restart_in={delay:.1f}s")
            await asyncio.sleep(delay)
            status.restarts += 1

    async def _watch_ready(self, replica: _Replica, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while process.returncode is None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(replica.spec.health_url)).status_code == 200:
                        replica.status.state = "ready"
                        replica.ready_event.set()
                        self._emit(replica, "ready", replica.spec.base_url)
                        return
                if time.monotonic() > deadline:
                    replica.timed_out = True
                    self._emit(replica, "not-ready", "killing it")
                    _kill_group(process.pid, signal.SIGKILL)
                    return
                await asyncio.sleep(0.25)

    async def _wait_first_ready(self, replica: _Replica) -> None:
        while not replica.ready_event.is_set():
            if replica.status.state in ("failed", "backoff") or (
                    replica.monitor and replica.monitor.done()):
                await self._terminate(replica)
                raise SupervisorError(
                    f"{replica.spec.replica} ({replica.spec.engine}) did not become ready: "
                    f"{replica.status.last_error or 'exited'}; log {replica.status.log_file}"
                    + _tail_block(replica))
            await asyncio.sleep(0.1)

    async def _terminate(self, replica: _Replica) -> None:
        process = replica.process
        if process is None or process.returncode is not None:
            return
        _kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.config.stop_grace_s)
        except TimeoutError:
            self._emit(replica, "kill", f"no exit {self.config.stop_grace_s:.0f} s after SIGTERM")
        _kill_group(process.pid, signal.SIGKILL)  # stragglers in the group, if any
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), 5.0)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def reap_leftovers(run_dir: Path) -> list[int]:
    """Kill engine processes that a previous, SIGKILLed ``up`` in this run folder left behind.

    Every engine we start carries ``HOMELLM_ENGINE_OF=<run folder>`` in its environment, and its
    children inherit it, so this finds grandchildren too without trusting recycled pids.
    """
    marker = f"{_MARKER}={Path(run_dir).resolve()}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    if killed:
        log.warning("reaped leftover engine processes pids=%s run_dir=%s", killed, run_dir)
    return killed


def _tail_hint(replica: _Replica) -> str:
    return f" ({replica.tail[-1][:200]})" if replica.tail else ""


def _tail_block(replica: _Replica, lines: int = 15) -> str:
    if not replica.tail:
        return ""
    return "\n--- last log lines ---\n" + "\n".join(list(replica.tail)[-lines:])
