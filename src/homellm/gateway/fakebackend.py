"""A FAST FAKE OpenAI-compatible streaming backend, for testing and benchmarking the gateway ONLY.

This is not an engine and generates no text: it replays canned tokens ("t0 ", "t1 ", ...) over a
hand-written HTTP/1.1 server on asyncio streams, so that a stream costs a few microseconds per
chunk and hundreds of concurrent streams fit on two cores next to the gateway being measured.

Routes: POST /v1/chat/completions and /v1/completions (stream and non-stream; a ``usage`` in the
last streamed chunk, then ``data: [DONE]``), POST /v1/embeddings, GET /v1/models, GET /health.
A chat body without a ``messages`` list (or a completion without ``prompt``) gets a 400.

Test knobs (constructor arguments, CLI flags, and plain attributes that may be changed while it
runs): ``fail_status`` answers every completion with that status (and ``fail_body``, raw bytes,
instead of an OpenAI-shaped error when set); ``hang_s`` waits that long
before the response headers; ``die_after`` drops the connection after K streamed chunks (before
any byte without streaming); ``stall_after`` stops sending after K chunks (until the peer goes);
``healthy=False`` makes /health answer 503 and ``health_delay_s`` makes it slow;
``send_done=False`` ends streams without [DONE] (as ``transformers serve`` does).
Counters: ``requests``, ``completed``, ``disconnects`` (peers that went away before the end),
``connections`` (TCP connections accepted), ``health_checks``, ``active``; ``last_request`` holds
the last parsed completion body.

Run it alone: ``python -m homellm.gateway.fakebackend --port 8101 --tokens 64 --delay-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import time
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 422: "Unprocessable Entity",
            500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}
_COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_response(status: int, obj: Any) -> bytes:
    body = json.dumps(obj).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    return _head(status, headers) + body


def _error(status: int, message: str) -> bytes:
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return _json_response(status, {"error": {"message": message, "type": type_, "param": None,
                                             "code": None}})


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_STREAM_HEAD = _head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                           ("transfer-encoding", "chunked")])
_DONE_CHUNK = _chunk(b"data: [DONE]\n\n")
_END = b"0\r\n\r\n"


class FakeBackend:
    """The fake backend server. ``await start()`` inside a running loop; ``port=0`` picks one."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, name: str = "fake", tokens: int = 16,
        delay_ms: float = 0.0, ttft_ms: float = 0.0, fail_status: int | None = None,
        hang_s: float = 0.0, die_after: int | None = None, stall_after: int | None = None,
        healthy: bool = True, health_delay_s: float = 0.0, send_done: bool = True,
        fail_body: bytes | None = None,
    ) -> None:
        self.host, self.port, self.name = host, port, name
        self.tokens, self.delay_ms, self.ttft_ms = tokens, delay_ms, ttft_ms
        self.fail_status, self.hang_s = fail_status, hang_s
        self.fail_body = fail_body
        self.die_after, self.stall_after = die_after, stall_after
        self.healthy, self.health_delay_s, self.send_done = healthy, health_delay_s, send_done
        self.requests = self.completed = self.disconnects = self.connections = 0
        self.health_checks = self.active = 0
        self.last_request: dict[str, Any] | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ids = itertools.count()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (like a killed engine)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # -- HTTP/1.1 with keep-alive -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                length, close = 0, False
                for line in header_lines:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    if key == "content-length":
                        length = int(value)
                    elif key == "connection":
                        close = value.strip().lower() == "close"
                body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                if not await self._dispatch(method, path, body, reader, writer) or close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _gone(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait up to ``seconds``; True when the peer closed the connection meanwhile."""
        try:
            data = await asyncio.wait_for(reader.read(65536), seconds)
        except TimeoutError:
            return False
        return not data

    async def _dispatch(self, method: str, path: str, body: bytes,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must be dropped."""
        if method == "GET" and path == "/health":
            self.health_checks += 1
            if self.health_delay_s > 0 and await self._gone(reader, self.health_delay_s):
                return False
            writer.write(_json_response(200, {"status": "ok"}) if self.healthy
                         else _error(503, "fake backend set unhealthy"))
            return True
        if method == "GET" and path == "/v1/models":
            data = [{"id": self.name, "object": "model", "created": 0, "owned_by": "fake"}]
            writer.write(_json_response(200, {"object": "list", "data": data}))
            return True
        if method != "POST" or path not in (*_COMPLETIONS, "/v1/embeddings"):
            writer.write(_error(404, f"fake backend: no route {method} {path}"))
            return True
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            writer.write(_error(400, "fake backend: body is not a JSON object"))
            return True
        self.requests += 1
        self.last_request = request
        self.active += 1
        try:
            return await self._answer(path, request, reader, writer)
        finally:
            self.active -= 1

    async def _answer(self, path: str, request: dict[str, Any],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if self.hang_s > 0 and await self._gone(reader, self.hang_s):
            self.disconnects += 1
            return False
        if self.fail_status is not None:
            if self.fail_body is None:
                writer.write(_error(self.fail_status, f"fake backend {self.name} told to fail"))
            else:  # an engine's own error shape: FastAPI's {"detail": ...}, plain text, ...
                ctype = "application/json" if self.fail_body[:1] in (b"{", b"[") else \
                    "text/plain; charset=utf-8"
                writer.write(_head(self.fail_status, [("content-type", ctype), (
                    "content-length", str(len(self.fail_body)))]) + self.fail_body)
            return True
        model = str(request.get("model", ""))
        if path == "/v1/embeddings":
            inputs = request.get("input", "")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0, float(i)]}
                    for i in range(len(inputs))]
            usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
            writer.write(_json_response(200, {"object": "list", "data": data, "model": model,
                                              "usage": usage}))
            self.completed += 1
            return True
        chat = path == "/v1/chat/completions"
        if chat and not isinstance(request.get("messages"), list):
            writer.write(_error(400, "fake backend: 'messages' must be a list"))
            return True
        if not chat and "prompt" not in request:
            writer.write(_error(400, "fake backend: 'prompt' is required"))
            return True
        limit = request.get("max_completion_tokens") or request.get("max_tokens") or self.tokens
        if type(limit) is float and limit.is_integer():  # 2.0, as engines' int() takes it
            limit = int(limit)
        if type(limit) is not int or limit < 1:  # as engines do: 400, never a crash
            writer.write(_error(400, "fake backend: max_tokens must be an integer of 1 or more"))
            return True
        count = min(limit, self.tokens)
        finish = "length" if count == limit else "stop"
        usage = {"prompt_tokens": 3, "completion_tokens": count, "total_tokens": 3 + count}
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{self.name}-{next(self._ids)}"
        if request.get("stream") is True:
            return await self._stream(reader, writer, chat, ident, model, count, finish, usage)
        if self.die_after is not None:
            writer.transport.abort()
            return False
        await asyncio.sleep((self.ttft_ms + self.delay_ms * count) / 1000)
        text = "".join(f"t{i} " for i in range(count))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        choice.update({"message": {"role": "assistant", "content": text}} if chat
                      else {"text": text, "logprobs": None})
        writer.write(_json_response(200, {
            "id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage,
        }))
        self.completed += 1
        return True

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      chat: bool, ident: str, model: str, count: int, finish: str,
                      usage: dict[str, int]) -> bool:
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        prefix = (f'data: {{"id":"{ident}","object":"{obj}","created":{created},'
                  f'"model":{json.dumps(model)},"choices":[{{"index":0,').encode()
        if chat:
            middle, suffix = b'"delta":{"content":"', b'"},"finish_reason":null}]}\n\n'
        else:
            middle, suffix = b'"text":"', b'","finish_reason":null,"logprobs":null}]}\n\n'
        writer.write(_STREAM_HEAD)
        delay, transport = self.delay_ms / 1000, writer.transport
        if self.ttft_ms > 0:
            await asyncio.sleep(self.ttft_ms / 1000)
        try:
            for i in range(count):
                if i == self.die_after:
                    transport.abort()
                    return False
                if i == self.stall_after:
                    await self._gone(reader, 3600)
                    raise ConnectionResetError
                if i and delay:
                    await asyncio.sleep(delay)
                if reader.at_eof() or transport.is_closing():
                    raise ConnectionResetError
                writer.write(_chunk(b"%s%st%d %s" % (prefix, middle, i, suffix)))
                await writer.drain()
            last: dict[str, Any] = {"index": 0, "finish_reason": finish}
            last.update({"delta": {}} if chat else {"text": "", "logprobs": None})
            final = json.dumps({"id": ident, "object": obj, "created": created, "model": model,
                                "choices": [last], "usage": usage}).encode()
            tail = _chunk(b"data: " + final + b"\n\n")
            writer.write(tail + _DONE_CHUNK + _END if self.send_done else tail + _END)
            await writer.drain()
        except ConnectionError:
            self.disconnects += 1
            return False
        self.completed += 1
        return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m homellm.gateway.fakebackend",
        description="A fast FAKE OpenAI-compatible backend for testing the homellm gateway "
        "(not an engine: it replays canned tokens).")
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, required=True)
    add("--name", default="fake")
    add("--tokens", type=int, default=16, help="tokens per completion (at most)")
    add("--delay-ms", type=float, default=0.0, help="gap between tokens")
    add("--ttft-ms", type=float, default=0.0, help="wait before the first token")
    add("--fail-status", type=int, default=None, help="answer every completion with this status")
    add("--hang-s", type=float, default=0.0, help="wait this long before the response headers")
    add("--die-after", type=int, default=None, help="drop the connection after K chunks")
    add("--stall-after", type=int, default=None, help="stop sending after K chunks")
    add("--unhealthy", action="store_true", help="/health answers 503")
    add("--health-delay-s", type=float, default=0.0, help="/health answers this late")
    add("--no-done", action="store_true", help="end streams without data: [DONE]")
    args = parser.parse_args(argv)
    fake = FakeBackend(
        host=args.host, port=args.port, name=args.name, tokens=args.tokens,
        delay_ms=args.delay_ms, ttft_ms=args.ttft_ms, fail_status=args.fail_status,
        hang_s=args.hang_s, die_after=args.die_after, stall_after=args.stall_after,
        healthy=not args.unhealthy, health_delay_s=args.health_delay_s,
        send_done=not args.no_done,
    )

    async def run() -> None:
        await fake.start()
        print(f"fake backend {fake.name} listening on {fake.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await fake.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
