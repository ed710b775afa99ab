"""A loopback OpenAI-style streaming server that answers instantly or with a set timing, so the
benchmark client can measure itself (calibration). It generates no text: tokens are "t0 ", "t1 ".

It lives in ``bench`` (not the gateway's fake backend) because bench must not depend on the
gateway; it runs in its own spawned process so that it does not share the client's CPU or GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class MockTiming:
    ttft_s: float = 0.0   # send → first token message
    itl_s: float = 0.0    # between token messages
    tokens: int = 16      # at most this many (fewer when the request's max tokens say so)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class MockServer:
    """``await start()`` on a running loop; ``port=0`` picks a free one."""

    def __init__(self, timing: MockTiming, host: str = "127.0.0.1", port: int = 0) -> None:
        self.timing, self.host, self.port = timing, host, port
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                method, path = head.split(" ", 2)[:2]
                length = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                await self._answer(method, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes,
                      writer: asyncio.StreamWriter) -> None:
        if method == "get":
            obj: object = {"version": "homellm-mock"} if path == "/version" else {
                "object": "list", "data": [{"id": "mock", "object": "model"}]}
            data = json.dumps(obj).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(data), data))
            return
        self.requests += 1
        request = json.loads(body)
        chat = path.endswith("/chat/completions")
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or 1 << 30
        count = max(1, min(int(limit), self.timing.tokens))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        head = b'data: {"id":"mock","object":"x","model":"mock","choices":[{"index":0,'
        start = time.perf_counter()
        for i in range(count):
            # due times from the request's start, so the mock's own lag does not accumulate
            due = start + self.timing.ttft_s + i * self.timing.itl_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            piece = (b'"delta":{"content":"t%d "}' if chat else b'"text":"t%d "') % i
            writer.write(_chunk(head + piece + b',"finish_reason":null}]}\n\n'))
            await writer.drain()
        usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        tail = json.dumps({"id": "mock", "choices": [], "usage": usage}).encode()
        writer.write(_chunk(b"data: " + tail + b"\n\n") + _chunk(b"data: [DONE]\n\n")
                     + b"0\r\n\r\n")
        await writer.drain()


def _main(conn: Connection, timing: MockTiming) -> None:
    async def run() -> None:
        server = MockServer(timing)
        await server.start()
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(conn.fileno(), gone.set)  # "stop", or EOF when the parent dies
        await gone.wait()
        await server.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run())
    else:
        uvloop.run(run())


@contextlib.contextmanager
def mock_server_process(timing: MockTiming, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run a ``MockServer`` in a spawned process; yields its base URL."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_main, args=(child, timing), daemon=True, name="homellm-mock")
    proc.start()
    child.close()
    try:
        if not parent.poll(start_timeout_s):
            raise RuntimeError("the calibration server did not start")
        yield f"http://127.0.0.1:{parent.recv()}"
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()
