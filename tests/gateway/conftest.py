"""Harness for gateway tests: FAKE backends (homellm.gateway.fakebackend, not engines) and a real
gateway served by uvicorn, all on one background event loop, on loopback ports chosen at run time.

Tests talk to the gateway over real HTTP from the main thread (httpx, the openai client).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
import uvicorn

from homellm.config import GatewayConfig, HealthConfig, TimeoutConfig
from homellm.gateway.app import Gateway
from homellm.gateway.backends import BackendInfo
from homellm.gateway.fakebackend import FakeBackend
from tests.conftest import free_port  # noqa: F401 (re-export: a port where nothing listens)

T = TypeVar("T")
MODEL = "tiny"


class LoopThread:
    """One event loop (uvloop when present) running in a daemon thread."""

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.background: list[concurrent.futures.Future[Any]] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_later(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run without waiting (teardowns); close() waits for it and reports its errors."""
        self.background.append(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        try:
            for future in self.background:
                future.result(15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


def make_config(
    *,
    max_attempts: int = 3,
    interval_s: float = 0.05,
    timeout_s: float = 0.5,
    fail_threshold: int = 2,
    cooldown_s: float = 0.5,
    connect_s: float = 1.0,
    first_token_s: float = 5.0,
    between_tokens_s: float = 5.0,
) -> GatewayConfig:
    return GatewayConfig(
        max_attempts=max_attempts,
        health=HealthConfig(
            interval_s=interval_s,
            timeout_s=timeout_s,
            fail_threshold=fail_threshold,
            cooldown_s=cooldown_s,
        ),
        timeouts=TimeoutConfig(
            connect_s=connect_s, first_token_s=first_token_s, between_tokens_s=between_tokens_s
        ),
    )


def info(
    target: FakeBackend | int,
    name: str,
    role: str = "primary",
    model: str = MODEL,
    upstream_model: str | None = None,
) -> BackendInfo:
    """A BackendInfo for a fake backend, or for a bare port where nothing listens."""
    base = target.base_url if not isinstance(target, int) else f"http://127.0.0.1:{target}"
    return BackendInfo(
        model=model,
        name=name,
        role=role,
        base_url=base,
        health_url=base + "/health",
        upstream_model=upstream_model or model,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


class ScriptedFake:
    """A FAKE backend replaying a byte script for every POST (health: 200), for SSE edge cases.

    ``parts`` are written one by one with ``gap_s`` between them after the response head; then
    the connection is aborted (``end="abort"``) or the chunked body is finished (``"finish"``).
    """

    HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")

    def __init__(self, parts: list[bytes], end: str = "finish", gap_s: float = 0.05) -> None:
        self.parts, self.end, self.gap_s = parts, end, gap_s
        self.server: asyncio.Server | None = None
        self.base_url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                if head.startswith("get /health"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    continue
                writer.write(self.HEAD)
                for part in self.parts:
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(self.gap_s)
                if self.end == "abort":
                    writer.transport.abort()
                    return
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class RunningGateway:
    def __init__(self, gw: Gateway, server: uvicorn.Server, task: asyncio.Task[None], port: int):
        self.gw, self.server, self.task, self.port = gw, server, task, port
        self.url = f"http://127.0.0.1:{port}"

    def state(self, name: str) -> dict[str, Any]:
        return next(s for s in self.gw.snapshot() if s["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 5.0) -> None:
        wait_until(lambda: self.state(name)["state"] == state, timeout, f"{name} -> {state}")

    def wait_idle(self, timeout: float = 5.0) -> None:
        wait_until(
            lambda: all(s["outstanding"] == 0 for s in self.gw.snapshot()),
            timeout,
            "outstanding == 0",
        )

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=kwargs.pop("timeout", 10.0), trust_env=False, **kwargs
        )

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key="test-key", max_retries=0, timeout=10.0
        )

    def async_openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key="test-key", max_retries=0, timeout=10.0
        )


class Harness:
    """Makes fake backends and gateways on the shared loop; stops them all at teardown."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.fakes: list[FakeBackend] = []
        self.gateways: list[RunningGateway] = []
        self.scripts: list[ScriptedFake] = []

    def fake(self, **knobs: Any) -> FakeBackend:
        fake = FakeBackend(**knobs)
        self.lt.run(fake.start())
        self.fakes.append(fake)
        return fake

    def stop_fake(self, fake: FakeBackend) -> None:
        self.lt.run(fake.stop())

    def scripted(self, parts: list[bytes], end: str = "finish", gap_s: float = 0.05
                 ) -> ScriptedFake:
        fake = ScriptedFake(parts, end, gap_s)
        self.lt.run(fake.start())
        self.scripts.append(fake)
        return fake

    def gateway(self, backends: list[BackendInfo], wait_ready: list[str] | None = None,
                wrap: Callable[[Any], Any] | None = None, **config: Any) -> RunningGateway:
        """Start a gateway; wait until the named backends (default: all) are ready.

        ``wrap`` turns ``gw.app`` into the app actually served (to mount it in another app).
        """
        gw = Gateway(backends, make_config(**config))

        async def start() -> RunningGateway:
            await gw.start()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            app = wrap(gw.app) if wrap else gw.app
            server = uvicorn.Server(uvicorn.Config(
                app, lifespan="off", log_level="warning", access_log=False, http="httptools",
                timeout_graceful_shutdown=1,
            ))
            task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
            return RunningGateway(gw, server, task, sock.getsockname()[1])

        running = self.lt.run(start())
        self.gateways.append(running)
        for name in wait_ready if wait_ready is not None else [b.name for b in backends]:
            running.wait_state(name, "ready")
        return running

    def close(self) -> None:
        async def stop_all() -> None:
            for running in self.gateways:
                running.server.should_exit = True
            for running in self.gateways:
                await running.task
                await running.gw.stop()
            for fake in self.fakes:
                await fake.stop()
            for script in self.scripts:
                await script.stop()

        # uvicorn's shutdown sleeps 0.2 s: let it happen while the next test runs
        self.lt.run_later(stop_all())


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def harness(loop_thread: LoopThread) -> Iterator[Harness]:
    h = Harness(loop_thread)
    yield h
    h.close()
