"""Slow and idle clients: read deadlines and a cap on open connections (``gateway.clients``).

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``)
but sets no deadline on reading a request: a client that connects and sends nothing, or half a
header, or half a body, holds its connection (and a file descriptor) forever. This module's
protocol is uvicorn's own httptools protocol with a read deadline added, armed and cancelled the
way uvicorn arms its keep-alive timer (``loop.call_later`` after a read or a parser event,
cancelled on the next one), plus a connection count:

- **header**: from the connection opening, or from the first byte after a response, until the
  request's headers are complete: one deadline, not extended by bytes that trickle in. Nothing
  received: the connection is closed (``idle``); part of a request: 408, then closed.
- **body**: between two reads of the body (nginx's ``client_body_timeout``): a body that is still
  arriving may take as long as it takes; one that stops for ``body_timeout_s`` gets 408 (when no
  response has started) and the connection is closed. The app, waiting on ``receive()``, sees a
  disconnect, so nothing reaches a backend. Time spent with reading paused by flow control (the
  app not consuming the body) does not count.
- **idle**: uvicorn's keep-alive timer, set per connection from ``idle_timeout_s``.
- **cap**: a connection opened while ``max_connections`` are open is answered 503 with
  ``Connection: close`` at once, without parsing its request, and closed (see
  :class:`RefusedConnection`); the ones already open go on being served.

Settings are read when a timer is armed and when a connection opens, so a reload applies to
the next request. A request that arrives whole in one read arms no timer; the per-read cost is
one clock read and a few comparisons; nothing is done per response chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from homellm.config import ClientsConfig

log = logging.getLogger("homellm.gateway")

#: file descriptors per client connection (the client's and, while proxied, the upstream one)
FDS_PER_CONNECTION = 2
#: descriptors for everything else: logs, the listening socket, health checks, engine pipes
FD_RESERVE = 256

#: why the gateway closed a connection itself, the ``phase`` label of the timeout counter
PHASES = ("idle", "header", "body")


def _response(status: int, reason: str, message: str, code: str,
              extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    head += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _timeout_response(message: str) -> bytes:
    return _response(408, "Request Timeout", message, "request_timeout")


class ClientGuard:
    """One gateway's client settings (read through ``settings``, so reloads apply) and counts."""

    def __init__(self, settings: Callable[[], ClientsConfig]) -> None:
        self.settings = settings
        self.open = 0
        self.refused = 0
        self.lingering = 0  # refused connections being closed (see RefusedConnection)
        self.timeouts = dict.fromkeys(PHASES, 0)
        self._fds_sized_for = 0
        self.refusal = _response(
            503, "Service Unavailable", "too many open connections to the gateway "
            "(gateway.clients.max_connections); retry later", "too_many_connections",
            (("retry-after", "1"),))

    def size_fds(self, cap: int) -> None:
        """Fit the open-file limit to ``cap`` connections (again only when the cap changed)."""
        if cap != self._fds_sized_for:
            self._fds_sized_for = cap
            ensure_fd_limit(cap)

    def admit(self) -> bool:
        """A connection opens: True to serve it, False to refuse it (counted)."""
        cap = self.settings().max_connections
        self.size_fds(cap)  # a reload may have raised it
        if self.open >= cap:
            self.refused += 1
            return False
        self.open += 1
        return True

    def protocol(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> GuardedHttpProtocol:
        """What uvicorn calls per connection (``uvicorn.Config(http=guard.protocol)``)."""
        return GuardedHttpProtocol(self, config, server_state, app_state, _loop)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read deadlines and the connection cap.

    One timer per connection, armed only while a request is incomplete: a request that arrives
    whole in one read (the usual case) arms nothing. The timer's callback looks at where the
    request stands (head, body) to decide; body progress is a timestamp, not a re-armed timer.
    """

    def __init__(self, guard: ClientGuard, config: uvicorn.Config, server_state: Any,
                 app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._request_begun = False  # part of a request's head has arrived, not all of it
        self._in_body = False  # the head is complete, the body is not
        self._last_read = 0.0

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self._guard.admit():
            transport.set_protocol(RefusedConnection(self._guard, transport))
            return
        self._admitted = True
        super().connection_made(transport)
        settings = self._guard.settings()
        self.timeout_keep_alive = settings.idle_timeout_s  # type: ignore[assignment]
        self._arm(settings.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.open -= 1
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        super().data_received(data)
        if self._timer is None and not self.transport.is_closing():
            # a request left incomplete by this read, or bytes that begin none (a bare CRLF
            # after a response cancels uvicorn's keep-alive timer): time it from now
            if self._in_body:
                self._arm(self._guard.settings().body_timeout_s)
            elif self._request_begun or self.cycle is None or self.cycle.response_complete:
                self._arm(self._guard.settings().header_timeout_s)

    def _unsupported_upgrade_warning(self) -> None:
        pass  # answered as plain HTTP (ws="none"); two log lines per request would be a client's

    # -- parser events -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._request_begun = False
        self._in_body = True
        timer = self._timer
        if timer is not None:  # the head came in several reads: now the body's deadline rules
            body_timeout = self._guard.settings().body_timeout_s
            if timer.when() > self._last_read + body_timeout:
                self._arm(body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel()
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.transport.is_closing() \
                and self.timeout_keep_alive_task is None and not self.pipeline:
            # the app answered before the body ended (401, 413): uvicorn armed its keep-alive
            # timer then, and the body's bytes cancelled it; arm it again, or nothing would
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    # -- the deadline ------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._deadline)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        settings = self._guard.settings()
        if self._in_body:
            self._body_deadline(settings.body_timeout_s)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request's head while the previous response is still being sent:
            # its deadline starts over, until that response is done
            self._arm(settings.header_timeout_s)
            return
        if self._request_begun:
            self._guard.timeouts["header"] += 1
            self.transport.write(_timeout_response(
                f"the request's headers did not arrive within {settings.header_timeout_s:g} s "
                "(gateway.clients.header_timeout_s)"))
        else:
            self._guard.timeouts["idle"] += 1
        self.transport.close()

    def _body_deadline(self, timeout: float) -> None:
        waited = self.loop.time() - self._last_read
        if self.flow.read_paused or waited < timeout:  # still arriving, or we stopped reading
            self._arm(timeout if self.flow.read_paused else timeout - waited)
            return
        self._guard.timeouts["body"] += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_timeout_response(
                f"the request body stopped arriving: nothing for {timeout:g} s "
                "(gateway.clients.body_timeout_s)"))
        if cycle is not None:  # the app waiting on receive() gets http.disconnect
            cycle.keep_alive = False
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


class RefusedConnection(asyncio.Protocol):
    """A connection over the cap: 503 written at once, our side shut, what the client sends
    read and dropped until it closes or ``LINGER_S`` pass (closing with its request unread would
    make the kernel send a reset, and the client would lose the 503: nginx's lingering close).
    At most ``MAX_LINGERING`` such connections linger; beyond that they are closed at once."""

    LINGER_S = 2.0
    MAX_LINGERING = 256

    def __init__(self, guard: ClientGuard, transport: asyncio.Transport) -> None:
        self._guard = guard
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        transport.write(guard.refusal)
        if guard.lingering >= self.MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        guard.lingering += 1
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._guard.lingering -= 1


class ClientCollector(Collector):
    """The guard's counts as metrics, read at scrape time (nothing on the hot path)."""

    def __init__(self, guard: ClientGuard) -> None:
        self._guard = guard

    def collect(self) -> Iterable[Any]:
        guard = self._guard
        yield GaugeMetricFamily(
            "homellm_gateway_client_connections",
            "Client connections open now (gateway.clients.max_connections caps them)",
            value=float(guard.open))
        yield CounterMetricFamily(
            "homellm_gateway_client_connections_refused",
            "Client connections refused (503, closed) because max_connections were open",
            value=float(guard.refused))
        timeouts = CounterMetricFamily(
            "homellm_gateway_client_timeouts",
            "Client connections the gateway closed for a read timeout; phase: idle (nothing "
            "sent within header_timeout_s), header (408: headers incomplete within "
            "header_timeout_s), body (408: no body bytes for body_timeout_s)",
            labels=["phase"])
        for phase in PHASES:
            timeouts.add_metric([phase], float(guard.timeouts[phase]))
        yield timeouts


def ensure_fd_limit(max_connections: int) -> None:
    """Raise this process's soft open-file limit to fit ``max_connections`` (never lowers it);
    warn when the hard limit is too low."""
    needed = FDS_PER_CONNECTION * max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("event=fd_limit_low max_connections=%d needed=%d hard_limit=%d: raise "
                    "the hard open-file limit (ulimit -Hn, LimitNOFILE=) or lower "
                    "gateway.clients.max_connections", max_connections, needed, hard)


def guarded_server_config(app: Any, settings: Callable[[], ClientsConfig], registry: Any,
                          **uvicorn_options: Any) -> uvicorn.Config:
    """A uvicorn config serving ``app`` with the client guard, its metrics in ``registry``."""
    guard = ClientGuard(settings)
    guard.size_fds(settings().max_connections)
    registry.register(ClientCollector(guard))
    # ws="none": the gateway has no WebSocket route, and an upgraded connection would leave this
    # protocol (and the count of open connections) without a connection_lost
    return uvicorn.Config(app, http=guard.protocol, ws="none",  # type: ignore[arg-type]
                          timeout_keep_alive=settings().idle_timeout_s,  # type: ignore[arg-type]
                          **uvicorn_options)
