"""``homellm up``: stack file → engine processes (supervised) → gateway, until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from rich.console import Console

from homellm.config import GatewayConfig, StackConfig, is_loopback
from homellm.engines.base import LaunchSpec
from homellm.engines.preflight import preflight
from homellm.errors import ConfigError
from homellm.fsutil import atomic_write_text, homellm_home
from homellm.gateway.admin import ReplicaControl
from homellm.gateway.app import Gateway
from homellm.gateway.backends import BackendInfo
from homellm.gateway.connections import guarded_server_config
from homellm.keys import KeyVerifier
from homellm.reload import reload_stack
from homellm.stackcheck import resolve_for_start
from homellm.supervisor import EventCallback, Supervisor


@dataclass
class Running:
    """A live stack: what ``up`` and ``demo`` hold while serving."""

    stack: StackConfig
    specs: list[LaunchSpec]
    supervisor: Supervisor
    gateway: Gateway
    url: str  # the gateway's base URL
    run_dir: Path


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``up`` owns SIGINT/SIGTERM."""

    on_started: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # no await between uvicorn setting ``started`` and this call, so no request is answered
        # and no signal handled before the caller knows the gateway is serving
        if self.started and self.on_started is not None:
            self.on_started()


def default_run_dir(stack_file: Path) -> Path:
    return homellm_home() / "runs" / stack_file.resolve().stem


def _bind(config: GatewayConfig) -> socket.socket:
    # beyond loopback without keys is refused by the stack file's validation (config.py)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"gateway.listen: cannot listen on {config.listen}: "
                          f"{exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def backends_of(specs: list[LaunchSpec]) -> list[BackendInfo]:
    return [BackendInfo(model=s.model, name=s.replica, role=s.role, base_url=s.base_url,
                        health_url=s.health_url, upstream_model=s.upstream_model,
                        routes=s.routes) for s in specs]


@contextlib.asynccontextmanager
async def running_stack(stack: StackConfig, run_dir: Path,
                        on_event: EventCallback | None = None,
                        on_phase: Callable[[str], None] | None = None,
                        on_serving: Callable[[], None] | None = None) -> AsyncIterator[Running]:
    """Start engines (waiting for readiness), then the gateway; stop both on exit.
    ``on_serving`` runs the moment the gateway starts answering."""
    phase = on_phase or (lambda text: None)
    gateways: list[Gateway] = []
    rechecks: set[asyncio.Task[object]] = set()

    def on_supervisor_event(replica: str, event: str, detail: str) -> None:
        if event == "ready" and gateways:  # a restarted engine: route to it now, not next check
            task = asyncio.get_running_loop().create_task(gateways[0].backend_restarted(replica))
            rechecks.add(task)
            task.add_done_callback(rechecks.discard)
        if on_event is not None:
            on_event(replica, event, detail)

    resolved = resolve_for_start(stack)  # keys file, commands: what `homellm check` refuses
    for warning in resolved.warnings:
        phase(f"warning: {warning}")
    sock = _bind(stack.gateway)  # fail on a taken port before starting any engine
    try:
        specs = resolved.specs
        phase("checking engine flags against the installed engines")
        specs = [await asyncio.to_thread(preflight, spec) for spec in specs]
        supervisor = Supervisor(specs, stack.supervisor, run_dir, on_supervisor_event)
        phase(f"starting {sum(not s.remote for s in specs)} engine process(es)")
        await supervisor.start_all()
    except BaseException:
        sock.close()
        raise
    gateway = Gateway(backends_of(specs), stack.gateway)
    if stack.gateway.api_keys_file:
        gateway.keys = KeyVerifier(Path(stack.gateway.api_keys_file))
    gateway.admin_key = admin_key(run_dir)
    gateway.control = replica_control(supervisor, specs)
    gateways.append(gateway)
    # read deadlines and the connection cap (gateway.clients): the settings in force at each
    # new connection or request, so a reload applies
    server = _Server(guarded_server_config(
        gateway.app, lambda: gateway.config.clients, gateway.metrics.registry,
        log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=5))
    server.on_started = on_serving
    serve_task: asyncio.Task[None] | None = None
    try:
        await gateway.start()
        # the engines are ready (the supervisor saw it): let the gateway see it too before the
        # first request, or early requests find every backend still "starting" (503)
        await gateway.check_health()
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serve_task.done():
                serve_task.result()
                raise ConfigError(f"gateway.listen: the gateway on {stack.gateway.listen} "
                                  "stopped while starting")
            await asyncio.sleep(0.02)
        host = stack.gateway.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{stack.gateway.port}"
        yield Running(stack, specs, supervisor, gateway, url, run_dir)
    finally:
        server.should_exit = True
        if serve_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(serve_task, 10)
        await gateway.stop()
        await supervisor.stop_all()
        sock.close()


ADMIN_KEY_FILE = "admin.key"


def admin_key(run_dir: Path) -> str:
    """The admin API's key: made once per run folder, readable by its owner only."""
    path = Path(run_dir) / ADMIN_KEY_FILE
    try:
        key = path.read_text("utf-8").strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = "hla-" + secrets.token_urlsafe(32)
    atomic_write_text(path, key + "\n", mode=0o600)
    return key


def replica_control(supervisor: Supervisor, specs: list[LaunchSpec]) -> ReplicaControl:
    remote = {s.replica for s in specs if s.remote}

    def status() -> dict[str, dict[str, object]]:
        return {s.replica: {"process_state": s.state, "pid": s.pid, "restarts": s.restarts,
                            "last_exit": s.last_exit, "process_error": s.last_error}
                for s in supervisor.status()}

    async def restart(name: str) -> None:
        if name in remote:
            raise ValueError(f"{name} is a remote backend: homellm does not run it")
        await supervisor.restart(name)

    return ReplicaControl(status=status, restart=restart)


async def wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; return the signal number."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    try:
        return await received
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# How `up` ends on a signal, the same while engines start and once it serves (README,
# docs/architecture.md). SIGTERM is how service managers ask a service to stop (systemd's
# `systemctl stop`, `docker stop`, Kubernetes): a clean stop, exit 0, needing no
# SuccessExitStatus=. SIGINT is a person pressing Ctrl-C: 130 (128 + SIGINT), as shells report
# an interrupted command and as `homellm train` exits, so `homellm up && next` goes no further.
STOP_EXIT_CODES: dict[signal.Signals, int] = {signal.SIGTERM: 0, signal.SIGINT: 130}


class StopSignals:
    """SIGINT and SIGTERM handled from before the first engine starts to the end of ``up``.

    While starting, a signal cancels the start (which stops whatever began); once serving, it
    ends the wait. Installing both before the gateway listens leaves no moment in which a
    signal finds Python's default handler (a KeyboardInterrupt and exit 130 after a clean start).
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.received: asyncio.Future[int] = self.loop.create_future()
        self.serving = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self.received.done():
            return
        self.received.set_result(sig)
        if not self.serving and self.task is not None:
            self.task.cancel()

    def mark_serving(self) -> None:
        self.serving = True

    def close(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.remove_signal_handler(sig)


def enable_reload(running: Running, stack_file: Path, console: Console) -> None:
    """``homellm reload`` (admin API) and SIGHUP re-read ``stack_file`` (see reload.py)."""
    in_force = [running.stack]
    loopback = is_loopback(running.stack.gateway.host)

    async def reload() -> dict[str, object]:
        try:
            new, result = reload_stack(running.gateway, in_force[0], stack_file, loopback)
        except ConfigError as exc:
            console.print(f"{time.strftime('%H:%M:%S')} reload refused: {exc}")
            raise
        in_force[0] = running.stack = new
        changed = ", ".join(result["changed"]) or "nothing changed"  # type: ignore[arg-type]
        console.print(f"{time.strftime('%H:%M:%S')} reloaded {stack_file}: {changed}")
        return result

    def on_sighup() -> None:
        task = asyncio.get_running_loop().create_task(reload())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported above

    if running.gateway.control is not None:
        running.gateway.control.reload = reload
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)


async def serve_stack(stack: StackConfig, run_dir: Path, console: Console,
                      stack_file: Path | None = None) -> int:
    """``homellm up``: start the stack, print where it answers, serve until a signal."""
    stop = StopSignals()

    def on_event(replica: str, event: str, detail: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {replica}: {event} {detail}")

    try:
        # a signal once the gateway answers stops a serving stack, not one "while starting"
        # (the message differs; the exit code does not: STOP_EXIT_CODES)
        async with running_stack(stack, run_dir, on_event, console.print,
                                 on_serving=stop.mark_serving) as running:
            stop.serving = True
            if stack_file is not None:
                enable_reload(running, stack_file, console)
            console.print(f"gateway {running.url}/v1 serving "
                          f"{', '.join(stack.models)}; logs in {run_dir / 'logs'}; Ctrl-C stops")
            received = await stop.received
            console.print(f"{signal.Signals(received).name}: stopping engines")
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not stop.received.done() or task is None:
            raise
        task.uncancel()  # our own signal: a requested stop, and everything is stopped
        name = signal.Signals(stop.received.result()).name
        console.print(f"{name} while starting: engines stopped")
    finally:
        stop.close()
    return STOP_EXIT_CODES[signal.Signals(stop.received.result())]


def run_loop(coro_factory: Callable[[], object]) -> object:
    """Run a coroutine on uvloop when installed (faster gateway), else asyncio's loop."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_factory())  # type: ignore[arg-type]
