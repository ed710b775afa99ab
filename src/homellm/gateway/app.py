"""The gateway: an OpenAI-compatible Starlette app in front of pools of backends known by URL.

Usage (inside a running event loop)::

    gw = Gateway(backends, config.gateway)
    await gw.start()          # aiohttp session + health-check tasks
    ... serve gw.app with uvicorn (access_log=False keeps the hot path quiet) ...
    await gw.stop()

The proxy routes (chat, completions, embeddings) are dispatched straight to raw ASGI handlers
before Starlette's middleware stack: here the body is read, parsed and validated once
(validation.py; OpenAI-shaped 400, 404, 413), then proxy.py forwards it. The small admin
routes go through Starlette as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from homellm.config import GatewayConfig
from homellm.errors import ConfigError
from homellm.gateway.admin import AdminApi, ReplicaControl
from homellm.gateway.backends import PROXY_PATHS, Backend, BackendInfo, build_pools
from homellm.gateway.health import HealthChecker, log_transition
from homellm.gateway.limits import Limits, Refusal, held_tokens
from homellm.gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from homellm.gateway.openapi import openapi_document
from homellm.gateway.proxy import Proxy, error_body, reject, send_json
from homellm.gateway.validation import validate
from homellm.keys import KeyRecord, KeyVerifier

__all__ = ["BackendInfo", "Gateway"]

log = logging.getLogger("homellm.gateway")

class _ClientGone(Exception):
    """The client disconnected while sending its request."""


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit`` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else None
    parts, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class _ProxyRoute:
    """A raw ASGI app for one proxy route (a class, so Starlette's Route treats it as ASGI)."""

    __slots__ = ("_handle", "path")

    def __init__(self, handle: Any, path: str) -> None:
        self._handle = handle
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._handle(self.path, scope, receive, send)
        except Exception:  # a bug, not a backend failure: log it, answer 500 when still possible
            log.exception("event=internal_error path=%s", self.path)
            with contextlib.suppress(Exception):
                await reject(send, 500, "internal gateway error (see the gateway log)",
                             "internal_error")


class _GatewayApp(Starlette):
    """Starlette, with the proxy routes served without going through the middleware stack."""

    def __init__(self, fast: dict[str, _ProxyRoute], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast = fast

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._fast.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = error_body(message, "invalid_request_error", code)
    return Response(body, exc.status_code, exc.headers, media_type="application/json")


class Gateway:
    """Pools of backends per public model name, the ASGI app, health checks and accounting."""

    def __init__(self, backends: Sequence[BackendInfo], config: GatewayConfig) -> None:
        names: set[str] = set()
        for info in backends:
            if info.name in names:
                raise ConfigError(f"gateway: backend name {info.name!r} is used twice")
            names.add(info.name)
        self.config = config
        try:
            self.backends = [Backend(info) for info in backends]
        except ValueError as exc:
            raise ConfigError(f"gateway: {exc}") from None
        self.pools = build_pools(self.backends)
        self.served_by: Counter[str] = Counter()
        self.admin_key: str | None = None  # set by whoever runs the gateway; None: admin API off
        self.control: ReplicaControl | None = None  # the process side (supervisor), if any
        self.keys: KeyVerifier | None = None  # None: no API keys (then loopback only, see up)
        self.created = int(time.time())
        self.metrics = GatewayMetrics(self.pools)  # its own registry, served at GET /metrics
        self.limits = Limits(config.limits)
        self._hashing = asyncio.Semaphore(2)
        self._proxy = Proxy(self.pools, config, self.served_by, self.metrics)
        self._session: aiohttp.ClientSession | None = None
        self._health: HealthChecker | None = None
        fast = {path: _ProxyRoute(self._handle, path) for path in PROXY_PATHS}
        routes = [Route(path, fast[path], methods=["POST"]) for path in PROXY_PATHS]
        routes += [
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._alive, methods=["GET"]),
            Route("/ready", self._ready, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),  # no auth, like /ready
            Route("/openapi.json", self._openapi, methods=["GET"]),
        ]
        routes += AdminApi(self).routes()
        self.app = _GatewayApp(fast, routes=routes, exception_handlers={HTTPException: _http_error})

    async def start(self) -> None:
        """Open the shared upstream session and start the health checks (first check at once)."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=4.0,  # below uvicorn's 5 s, so we never reuse a closing connection
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._proxy.bind(self._session)
        self._health = HealthChecker(self._session, self.backends, self.config.health)
        self._health.start()

    async def stop(self) -> None:
        """Stop the health checks and close the upstream session."""
        if self._health is not None:
            await self._health.stop()
            self._health = None
        self._proxy.bind(None)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def configure(self, config: GatewayConfig) -> None:
        """Apply a reloaded stack file's gateway section: limits, timeouts, attempts, health.

        ``listen`` and the keys file are read at start only (``up`` refuses a reload that
        changes them); requests in flight finish under the settings they started with.
        """
        self.config = config
        self.limits.configure(config.limits)
        self._proxy.configure(config)
        if self._health is not None:
            self._health.configure(config.health)

    async def backend_restarted(self, name: str) -> bool:
        """The supervisor replaced the engine behind ``name``: forget the dead process's ejection
        and check the new one now, so traffic returns without waiting out the cooldown."""
        backend = next((b for b in self.backends if b.name == name), None)
        if backend is None:
            raise KeyError(name)
        log_transition(backend.process_replaced())
        return (await self.check_health(name))[name]

    async def check_health(self, name: str | None = None) -> dict[str, bool]:
        """Run an active check now on one backend (or all) and apply it; name → passed.

        Handy after a supervisor restarted an engine: no need to wait for the next interval.
        """
        if self._health is None:
            raise RuntimeError("the gateway is not started")
        chosen = [b for b in self.backends if name is None or b.name == name]
        if not chosen:
            raise KeyError(name)
        results = await asyncio.gather(*(self._health.check(b) for b in chosen))
        return {b.name: ok for b, ok in zip(chosen, results, strict=True)}

    def snapshot(self) -> list[dict[str, Any]]:
        """Per backend: name, model, role, state, outstanding, counters, last error, ejection."""
        return [backend.snapshot() for backend in self.backends]

    def healthy_counts(self) -> dict[str, dict[str, int]]:
        return {
            model: {"healthy": pool.healthy(), "total": len(pool.backends)}
            for model, pool in self.pools.items()
        }

    # -- routes --------------------------------------------------------------------------

    def _key_for(self, authorization: str) -> KeyRecord | None:
        """The key record an ``Authorization: Bearer`` header names, or None."""
        if self.keys is None or authorization[:7].lower() != "bearer ":
            return None
        return self.keys.verify(authorization[7:].strip())

    async def _check_key(self, authorization: str) -> KeyRecord | None:
        """Like _key_for, but a key not seen before is hashed in a thread (tens of ms of
        scrypt must not stall every stream on the event loop), two at a time at most."""
        keys = self.keys
        if keys is None or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        record, settled = keys.lookup(token)
        if settled or record is None:
            return record
        async with self._hashing:
            good = await asyncio.to_thread(keys.confirm, token, record)
        return keys.settle(token, record, good)

    async def _handle(self, path: str, scope: Any, receive: Any, send: Any) -> None:
        """A proxy route: check the key, read, parse and check the body once, then forward it."""
        received = time.perf_counter()
        key = None
        if self.keys is not None:
            authorization = next((v.decode("latin-1") for k, v in scope["headers"]
                                  if k == b"authorization"), "")
            key = await self._check_key(authorization)
            if key is None:
                return await reject(send, 401, "Incorrect or missing API key (send it as "
                                    "Authorization: Bearer ...)", "invalid_api_key")
        limits = self.limits
        try:
            body = await _read_body(receive, limits.max_body_bytes)
        except _ClientGone:
            return
        if body is None:
            msg = (f"request body larger than {limits.max_body_bytes} bytes "
                   "(gateway.limits.max_body_bytes)")
            return await reject(send, 413, msg, "request_too_large")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return await reject(send, 400, f"the request body is not valid JSON: {exc}",
                                "invalid_json")
        if not isinstance(payload, dict):
            return await reject(send, 400, "the request body must be a JSON object",
                                "invalid_json")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            code = "missing_required_parameter" if model is None else "invalid_type"
            msg = "you must provide a model parameter (a string)"
            return await reject(send, 400, msg, code, "model")
        pool = self.pools.get(model)
        if pool is None:
            msg = f"The model `{model}` does not exist; see GET /v1/models"
            return await reject(send, 404, msg, "model_not_found", "model")
        if key is not None and not key.allows(model):
            return await reject(send, 403, f"the key {key.name!r} may not use model `{model}`",
                                "model_not_allowed", "model")
        if path not in pool.routes:
            served = ", ".join(pool.routes) or "none"
            msg = (f"The model `{model}` is served by an engine without {path} "
                   f"(its routes: {served})")
            return await reject(send, 404, msg, "route_not_served", "model")
        violation = validate(path, payload)
        if violation is not None:
            return await reject(send, 400, violation.message, violation.code, violation.param)
        key_name = key.name if key is not None else ""
        ticket = limits.admit(key.name if key is not None else None,
                              key.key_limits if key is not None else None, held_tokens(payload))
        if isinstance(ticket, Refusal):
            return await self._refuse(send, model, key_name, ticket)
        used = None
        try:
            used = await self._proxy.serve(pool, path, payload, body, receive, send, received,
                                           key_name)
        finally:
            limits.release(ticket, used)

    async def _refuse(self, send: Any, model: str, key_name: str, refusal: Refusal) -> None:
        self.metrics.rate_limited_request(model, key_name, refusal.limit)
        # OpenAI's 429 body: type "requests" or "tokens", code rate_limit_exceeded
        body = error_body(f"{refusal.message}; retry after {refusal.retry_after_s} s",
                          "tokens" if refusal.limit == "tpm" else "requests",
                          "gateway_busy" if refusal.limit == "global" else "rate_limit_exceeded")
        await send_json(send, 429, body, [(b"retry-after", b"%d" % refusal.retry_after_s)])

    async def _models(self, request: Request) -> Response:
        key = None
        if self.keys is not None:
            key = self._key_for(request.headers.get("authorization", ""))
            if key is None:
                body = error_body("Incorrect or missing API key", "invalid_request_error",
                                  "invalid_api_key")
                return Response(body, 401, media_type="application/json")
        data = [
            {"id": model, "object": "model", "created": self.created, "owned_by": "homellm",
             "routes": list(pool.routes)}
            for model, pool in self.pools.items() if key is None or key.allows(model)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _openapi(self, request: Request) -> Response:
        """The API document; with keys, only for a valid key (it names the models)."""
        if self.keys is not None and self._key_for(request.headers.get("authorization", "")) \
                is None:
            body = error_body("Incorrect or missing API key", "invalid_request_error",
                              "invalid_api_key")
            return Response(body, 401, media_type="application/json")
        routes = {model: pool.routes for model, pool in self.pools.items()}
        return JSONResponse(openapi_document(routes, with_keys=self.keys is not None))

    async def _alive(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ready(self, request: Request) -> Response:
        counts = self.healthy_counts()
        ready = all(c["healthy"] > 0 for c in counts.values())
        return JSONResponse({"ready": ready, "models": counts}, status_code=200 if ready else 503)
