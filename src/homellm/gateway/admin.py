"""The admin API: replicas with their state, drain/undrain, restart through the supervisor;
and the read-only status page at ``/`` (no key: it shows states and counts, no secrets).

Guarded by the admin key (``Authorization: Bearer``), compared in constant time. The gateway
knows nothing of processes: whoever started the engines (``up``) plugs in a
:class:`ReplicaControl` that reports supervisor state and restarts a replica.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from homellm.errors import HomellmError
from homellm.gateway.proxy import error_body
from homellm.gateway.statuspage import render_status_page

if TYPE_CHECKING:
    from homellm.gateway.app import Gateway
    from homellm.gateway.backends import Backend

DRAIN_WAIT_S = 300.0


@dataclass
class ReplicaControl:
    """What the process side offers the admin API (all optional)."""

    # replica name → {"process_state", "pid", "restarts", "last_exit", "process_error"}
    status: Callable[[], dict[str, dict[str, Any]]] | None = None
    restart: Callable[[str], Awaitable[None]] | None = None
    # re-read the stack file; raises HomellmError saying why it was refused
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None


def _error(status: int, message: str, code: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Response(error_body(message, kind, code), status, media_type="application/json")


def display_state(backend_state: str, drained: bool, process_state: str | None) -> str:
    """One word for people: failed (supervisor gave up) > draining > the gateway's health view."""
    if process_state == "failed":
        return "failed"
    if drained:
        return "draining"
    return backend_state


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def routes(self) -> list[Route]:
        base = "/admin/replicas"
        return [
            Route("/", self._page, methods=["GET"]),
            Route(base, self._guard(self._list), methods=["GET"]),
            Route(base + "/{model}/{index:int}/drain", self._guard(self._drain), methods=["POST"]),
            Route(base + "/{model}/{index:int}/undrain", self._guard(self._undrain),
                  methods=["POST"]),
            Route(base + "/{model}/{index:int}/restart", self._guard(self._restart),
                  methods=["POST"]),
            Route("/admin/reload", self._guard(self._reload), methods=["POST"]),
        ]

    def _guard(self, handler: Callable[[Request], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            key = self._gateway.admin_key
            if not key:
                return _error(403, "the admin API is disabled: no admin key is configured",
                              "admin_disabled")
            given = request.headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                return _error(401, "a valid admin key is required (Authorization: Bearer ...)",
                              "invalid_admin_key")
            return await handler(request)

        return guarded

    def replicas(self) -> list[dict[str, Any]]:
        control = self._gateway.control
        processes = control.status() if control and control.status else {}
        rows = []
        for snapshot in self._gateway.snapshot():
            process = processes.get(snapshot["name"], {})
            ejected_until = snapshot.pop("ejected_until")
            rows.append({
                **snapshot,
                "display_state": display_state(snapshot["state"], snapshot["drained"],
                                               process.get("process_state")),
                "ejected_for_s": (round(max(0.0, ejected_until - time.monotonic()), 1)
                                  if ejected_until else None),
                **process,
            })
        return rows

    def _backend(self, request: Request) -> Backend | Response:
        name = f"{request.path_params['model']}/{request.path_params['index']}"
        for backend in self._gateway.backends:
            if backend.name == name:
                return backend
        return _error(404, f"no replica {name!r}; see GET /admin/replicas", "replica_not_found")

    async def _page(self, request: Request) -> Response:
        return HTMLResponse(render_status_page(self.replicas(), self._gateway.healthy_counts()))

    async def _list(self, request: Request) -> Response:
        return JSONResponse({"replicas": self.replicas()})

    async def _drain(self, request: Request) -> Response:
        backend = self._backend(request)
        if isinstance(backend, Response):
            return backend
        try:
            wait_s = float(request.query_params.get("wait_s", DRAIN_WAIT_S))
        except ValueError:
            return _error(400, "wait_s must be a number of seconds", "invalid_wait")
        backend.drained = True  # from here on pick() skips it, retries included
        deadline = time.monotonic() + wait_s
        while backend.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return JSONResponse({"replica": backend.name, "drained": True,
                             "in_flight": backend.outstanding,
                             "complete": backend.outstanding == 0})

    async def _undrain(self, request: Request) -> Response:
        backend = self._backend(request)
        if isinstance(backend, Response):
            return backend
        backend.drained = False
        return JSONResponse({"replica": backend.name, "drained": False})

    async def _restart(self, request: Request) -> Response:
        backend = self._backend(request)
        if isinstance(backend, Response):
            return backend
        control = self._gateway.control
        if control is None or control.restart is None:
            return _error(409, f"{backend.name} is not started by this homellm (remote backend "
                               "or no supervisor)", "not_supervised")
        try:
            await control.restart(backend.name)
        except ValueError as exc:
            return _error(409, str(exc), "not_supervised")
        return JSONResponse({"replica": backend.name, "restarted": True})

    async def _reload(self, request: Request) -> Response:
        control = self._gateway.control
        if control is None or control.reload is None:
            return _error(409, "this gateway was not started from a stack file it can re-read",
                          "reload_unsupported")
        try:
            return JSONResponse(await control.reload())
        except HomellmError as exc:
            return _error(422, str(exc), "reload_refused")
