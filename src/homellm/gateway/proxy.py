"""Forwarding: model rewrite, retry before the first byte, streaming pass-through, timeouts.

Requests arrive here parsed and validated (app.py) as raw ASGI calls, without Starlette request
or response objects, so a streamed token costs one upstream read and one ``send``. Timeouts and
client disconnects are both handled by cancelling the request's own task through
:class:`_Control`, whose single lazy timer is re-armed only when it fires, so moving a deadline
per chunk is two float stores.

Response headers go to the client only once the first complete upstream SSE event (or, without
streaming, the whole upstream body) is in hand; until then any backend failure is retried on the
next backend. After that a failure ends the client's stream with an OpenAI-style error event.

Only a backend that did not answer (refused, dropped, timed out, empty) is a passive failure. An
engine's error answer goes back in OpenAI's shape with its own message (engine_errors.py): a 4xx
at once; a 5xx after one retry on a peer, and it counts against the backend only when the peer
serves the request (else the request is at fault, and no client can eject a backend).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from homellm.config import GatewayConfig
from homellm.gateway.backends import BACKUP, EJECTED, Backend, Pool
from homellm.gateway.engine_errors import engine_error
from homellm.gateway.health import describe_error, log_transition
from homellm.gateway.metrics import NO_BACKEND, GatewayMetrics, parse_usage

log = logging.getLogger("homellm.gateway")

INF = float("inf")
TIMEOUT = "timeout"
CLIENT = "client"
MAX_PENDING_BYTES = 1024 * 1024  # an SSE event longer than this is passed on unsplit
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
_DONE = b"data: [DONE]\n\n"
# a request two backends answered with a 5xx is not tried further: it is the request's fault
_SAME_ANSWER_LIMIT = 2
_UPSTREAM_HEADERS = {"Content-Type": "application/json", "Accept": "*/*"}
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> bytes:
    """OpenAI's error shape."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


async def send_json(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if headers:
        start.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def reject(send: Any, status: int, message: str, code: str,
                  param: str | None = None) -> None:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    await send_json(send, status, error_body(message, type_, code, param))


def split_events(data: bytes) -> tuple[bytes, bytes]:
    """Split SSE bytes into (complete events, unfinished tail)."""
    if data.endswith(_EVENT_ENDS):
        return data, b""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    return data[:cut], data[cut:]


class _Control:
    """Per-request cancellation: a deadline on upstream reads, and the client's disconnect."""

    __slots__ = (
        "_handle", "_loop", "_task", "armed_at", "attempts", "backend", "committed", "deadline",
        "done", "first_at", "gone", "reason", "served", "status", "usage",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self.armed_at = INF
        self.deadline = INF
        self.committed = False  # response headers went to the client: no retry any more
        self.done = False  # the final response is on its way: nothing left to cancel
        self.gone = False  # the client disconnected
        self.reason: str | None = None
        # for the metrics, read once when the request is over
        self.attempts = 0
        self.backend: Backend | None = None  # the last backend tried
        self.served = False  # that backend's answer went to the client
        self.status = 0  # the HTTP status the client got
        self.first_at = 0.0  # perf_counter() when the first SSE event was sent
        self.usage: bytes | None = None  # a complete answer's body, or a stream's last events

    def expect(self, seconds: float) -> None:
        """The next upstream wait must end within ``seconds`` from now."""
        deadline = self._loop.time() + seconds
        self.deadline = deadline
        if deadline < self.armed_at:
            self._arm(deadline)

    def idle(self) -> None:
        self.deadline = INF

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.armed_at = INF
        deadline = self.deadline
        if deadline == INF:
            return
        if self._loop.time() >= deadline:
            self.cancel(TIMEOUT)
        else:
            self._arm(deadline)

    def cancel(self, reason: str) -> None:
        if reason == CLIENT:
            self.gone = True
        if self.reason is None and not self.done:
            self.reason = reason
            self._task.cancel()

    def take(self) -> str | None:
        """After a CancelledError: our reason (the cancellation undone), or None if not ours."""
        reason = self.reason
        if reason is not None:
            self.reason = None
            self.deadline = INF
            self._task.uncancel()
            if reason == TIMEOUT and self.gone:  # the client left meanwhile: deliver that too
                self.cancel(CLIENT)
        return reason

    def close(self) -> None:
        self.done = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _watch_disconnect(receive: Any, control: _Control) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            control.cancel(CLIENT)
            return


@dataclass(slots=True)
class _Failure:
    """A failed attempt before anything reached the client: what to answer if it is the last."""

    status: int
    code: str
    message: str
    body: bytes | None = None  # the engine's 5xx answer in OpenAI's shape (engine_errors.py)
    answered: bool = False  # the engine answered with an HTTP error (it is alive)


class Proxy:
    """Forwards one request to the model's pool, retrying on the next backend before first byte."""

    def __init__(self, pools: dict[str, Pool], config: GatewayConfig,
                 served_by: Counter[str], metrics: GatewayMetrics | None = None) -> None:
        self._pools = pools
        self._metrics = metrics if metrics is not None else GatewayMetrics(pools)
        self._served_by = served_by
        self._session: aiohttp.ClientSession | None = None
        self.configure(config)
        backends = [b for pool in pools.values() for b in pool.backends]
        self._urls = {b.name: {p: URL(u) for p, u in b.urls.items()} for b in backends}
        self._names = {b.name: b.name.encode("ascii", "backslashreplace") for b in backends}

    def configure(self, config: GatewayConfig) -> None:
        """Timeouts and attempts from a (re)loaded stack file; requests in flight keep theirs."""
        self._config = config
        timeouts = config.timeouts
        self._first_token_s = timeouts.first_token_s
        self._between_s = timeouts.between_tokens_s
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect_s, sock_connect=timeouts.connect_s
        )

    def bind(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session

    async def serve(self, pool: Pool, path: str, payload: dict[str, Any], body: bytes,
                    receive: Any, send: Any, received: float | None = None,
                    key_name: str = "") -> int | None:
        """Forward a validated request (``body`` is its raw JSON, ``payload`` the parsed one;
        ``received``: ``time.perf_counter()`` when the request arrived, for the metrics).

        Returns the tokens the backend reported using (prompt + completion), None if unknown.
        """
        if self._session is None:
            await reject(send, 503, "the gateway is not started", "not_started")
            return None
        if received is None:
            received = time.perf_counter()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        control = _Control(loop, task)
        watcher = loop.create_task(_watch_disconnect(receive, control))
        self._metrics.request_started(pool.model)
        used: int | None = None
        try:
            stream = payload.get("stream") is True and path != "/v1/embeddings"
            await self._forward(pool, path, payload, body, stream, control, send)
        except asyncio.CancelledError:
            if control.take() is None:
                raise
        finally:
            cut_short = control.gone and not control.done  # before close() sets done
            control.close()
            watcher.cancel()
            used = self._account(pool.model, control, received, cut_short, key_name)
        return used

    def _account(self, model: str, control: _Control, received: float, cut_short: bool,
                 key_name: str) -> int | None:
        """The request is over: one call to the metrics (no per-chunk accounting anywhere);
        returns the tokens used as the backend reported them."""
        metrics = self._metrics
        metrics.request_finished(model)
        backend, served = control.backend, control.served
        status = control.status
        if cut_short:
            status = 499  # the client went away first (nginx's "client closed request")
        elif not status:
            status = 500  # an internal error, or the server stopping
        prompt = completion = None
        if control.usage is not None:
            prompt, completion = parse_usage(control.usage)
        metrics.request_done(
            model, backend.name if backend is not None else NO_BACKEND, status,
            control.first_at - received if control.first_at else None,
            time.perf_counter() - received if served else None,
            prompt, completion, control.attempts,
            failover=served and backend is not None
            and (control.attempts > 1 or backend.info.role == BACKUP),
            usage_expected=control.usage is not None, key_name=key_name,
        )
        if prompt is None and completion is None:
            return None
        return (prompt or 0) + (completion or 0)

    async def _forward(
        self, pool: Pool, path: str, payload: dict[str, Any], body: bytes, stream: bool,
        control: _Control, send: Any,
    ) -> None:
        bodies: dict[str, bytes] = {}  # the rewritten body per upstream model name
        tried: list[Backend] = []
        failure: _Failure | None = None
        answered: list[Backend] = []  # backends that answered this request with a 5xx
        answer: _Failure | None = None  # the first such answer, kept for the client
        while len(tried) < self._config.max_attempts and len(answered) < _SAME_ANSWER_LIMIT:
            backend = pool.pick(tried)
            if backend is None:
                break
            tried.append(backend)
            control.backend, control.attempts = backend, len(tried)
            upstream_model = backend.info.upstream_model
            data = body if upstream_model == pool.model else bodies.get(upstream_model)
            if data is None:
                payload["model"] = upstream_model
                data = bodies[upstream_model] = json.dumps(payload).encode()
            backend.outstanding += 1
            backend.requests += 1
            try:
                failure = await self._attempt(backend, path, data, stream, control, send,
                                              len(tried))
            finally:
                backend.outstanding -= 1
            if failure is None:
                if control.status < 400:
                    self._convict(answered, backend)
                return
            if failure.answered:
                answered.append(backend)
                answer = answer or failure
            log.warning('event=attempt_failed model=%s backend=%s attempt=%d status=%d error="%s"',
                        pool.model, backend.name, len(tried), failure.status, failure.message)
            self._metrics.attempt_failed(pool.model, backend.name, failure.code)
        failure = answer or failure  # an engine's own answer says more than a dropped one
        control.done = True
        control.status = failure.status if failure is not None else 503
        headers = [(b"x-homellm-attempts", b"%d" % len(tried))]
        if tried:
            headers.append((b"x-homellm-backend", self._names[tried[-1].name]))
        if failure is None:
            msg = f"no healthy backend for model {pool.model!r}"
            body = error_body(msg, "server_error", "no_healthy_backend")
            await send_json(send, 503, body, headers)
        else:
            body = failure.body or error_body(failure.message, "server_error", failure.code)
            await send_json(send, failure.status, body, headers)

    def _convict(self, answered: list[Backend], served_by: Backend) -> None:
        """A peer served the request that these backends answered with a 5xx: so the request
        was fine, and each of them gets a passive failure."""
        for backend in answered:
            self._failed(backend, f"answered HTTP 5xx to a request {served_by.name} served")

    def _failed(self, backend: Backend, error: str, refused: bool = False) -> None:
        health = self._config.health
        now = time.monotonic()
        transition = backend.request_failed(now, error, health.fail_threshold, health.cooldown_s,
                                            refused)
        log_transition(transition)
        if transition is not None and transition.new == EJECTED:
            self._metrics.ejected(backend.info.model, backend.name)

    def _succeeded(self, backend: Backend) -> None:
        backend.request_succeeded()
        self._served_by[backend.name] += 1

    async def _attempt(
        self, backend: Backend, path: str, data: bytes, stream: bool, control: _Control,
        send: Any, attempt: int,
    ) -> _Failure | None:
        """One try on one backend: None once a response went to the client, else the failure."""
        assert self._session is not None
        name = backend.name
        headers = [(b"x-homellm-backend", self._names[name]),
                   (b"x-homellm-attempts", b"%d" % attempt)]
        response: aiohttp.ClientResponse | None = None
        control.committed = False
        try:
            control.expect(self._first_token_s)  # connect + headers + first chunk
            response = await self._session.post(
                self._urls[name][path], data=data, headers=_UPSTREAM_HEADERS,
                timeout=self._client_timeout,
            )
            if response.status >= 400 or not stream:
                return await self._whole(backend, response, control, send, headers)
            return await self._stream(backend, response, control, send, headers)
        except asyncio.CancelledError:
            if control.reason != TIMEOUT:
                raise  # the client went away (or the server stops): nothing to answer
            control.take()
            committed = control.committed
            limit = self._between_s if committed else self._first_token_s
            error = f"no {'next' if committed else 'first'} token within {limit} s"
            code, status, refused = "upstream_timeout", 504, False
        except (aiohttp.ClientError, OSError) as exc:
            error, code, status = describe_error(exc), "upstream_disconnected", 502
            refused = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                exc.os_error, ConnectionRefusedError
            )
            if isinstance(exc, TimeoutError):
                code, status = "upstream_timeout", 504
            elif isinstance(exc, aiohttp.ClientConnectorError):
                code = "upstream_unavailable"
        finally:
            if response is not None:
                # after the end of the body this is a no-op (the connection went back to the
                # pool); before it, it drops the connection: the engine stops generating
                response.close()
        self._failed(backend, error, refused)
        if not control.committed:
            return _Failure(status, code, f"backend {name} failed: {error}")
        log.warning('event=midstream_failure backend=%s code=%s error="%s"', name, code, error)
        self._metrics.midstream_failure(backend.info.model, name)
        control.done = True
        message = f"backend {name} failed mid-stream: {error}"
        event = b"data: " + error_body(message, "server_error", code) + b"\n\n"
        await send({"type": "http.response.body", "body": event + _DONE, "more_body": False})
        return None

    async def _whole(
        self, backend: Backend, response: aiohttp.ClientResponse, control: _Control, send: Any,
        headers: list[tuple[bytes, bytes]],
    ) -> _Failure | None:
        """Read the whole upstream body (non-streaming, or an error), then answer or fail."""
        content, status, name = response.content, response.status, backend.name
        chunks = []
        chunk = await content.readany()  # still under the first-token deadline
        while chunk:
            chunks.append(chunk)
            control.expect(self._between_s)
            chunk = await content.readany()
        control.idle()
        body = b"".join(chunks)
        if status >= 400:
            # the engine answered: it is alive, so this is no passive failure (the active
            # check decides its health); a 5xx is retried once on a peer (see _forward)
            error = engine_error(status, body, name)
            if status >= 500:
                return _Failure(error.status, "upstream_error", error.message, error.body,
                                answered=True)
            status, body, ctype = error.status, error.body, "application/json"
        elif not body:
            self._failed(backend, "empty response")
            return _Failure(502, "upstream_error", f"backend {name} sent an empty body")
        else:
            ctype = response.headers.get("Content-Type", "application/json")
            control.usage = body
        control.done = control.served = True
        control.status = status
        headers.append((b"content-type", ctype.encode("latin-1", "replace")))
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if status < 400:  # a 4xx is the client's fault: neither a success nor a failure
            self._succeeded(backend)
        return None

    async def _stream(
        self, backend: Backend, response: aiohttp.ClientResponse, control: _Control, send: Any,
        headers: list[tuple[bytes, bytes]],
    ) -> _Failure | None:
        """Pass SSE through event by event; headers wait for the first complete event."""
        content = response.content
        first, pending = b"", b""
        while not first:
            chunk = await content.readany()  # still under the first-token deadline
            if not chunk:
                if not pending:
                    self._failed(backend, "stream closed before the first event")
                    return _Failure(502, "upstream_disconnected",
                                    f"backend {backend.name} closed the stream before any event")
                first, pending = pending, b""
                break
            first, pending = split_events(pending + chunk if pending else chunk)
            if len(pending) > MAX_PENDING_BYTES:
                first, pending = first + pending, b""
        control.idle()
        control.committed = control.served = True
        control.status = response.status
        start = {"type": "http.response.start", "status": response.status,
                 "headers": _SSE_HEADERS + headers}
        await send(start)
        await send({"type": "http.response.body", "body": first, "more_body": True})
        control.first_at = time.perf_counter()
        prev, last, between = b"", first, self._between_s
        while True:
            control.expect(between)
            chunk = await content.readany()
            control.idle()
            if not chunk:
                break
            if pending:
                chunk, pending = pending + chunk, b""
            if not chunk.endswith(_EVENT_ENDS):  # hold back an unfinished event
                chunk, pending = split_events(chunk)
                if len(pending) > MAX_PENDING_BYTES:
                    chunk, pending = chunk + pending, b""
                if not chunk:
                    continue
            prev, last = last, chunk  # usage may come in its own read just before [DONE]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        control.usage = prev + last + pending
        tail = b""
        if pending:
            last = tail = pending if pending.endswith(_EVENT_ENDS) else pending + b"\n\n"
        if not last.rstrip().endswith(b"[DONE]"):
            tail += _DONE  # transformers serve ends chat streams without it
        control.done = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        self._succeeded(backend)
        return None

