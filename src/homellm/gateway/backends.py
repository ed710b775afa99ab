"""Backend state and pool selection for the gateway: pure logic, no I/O.

A backend is one OpenAI-compatible server known only by its URLs. Its state moves between:

- ``starting``: never seen healthy yet; not routed to;
- ``ready``: routed to;
- ``down``: an active check failed, or a connection was refused; an active check brings it back;
- ``ejected``: ``fail_threshold`` consecutive passive failures; not routed to until the cooldown
  is over *and* an active check passes.

Independently of its health, a backend can be *drained* by an operator: it gets no new requests
(retries included) while those in flight finish, and its health is still checked.

Every method that changes the state returns a :class:`Transition` (or ``None``) so the caller can
log it; nothing here logs, sleeps or touches the network. Times are ``time.monotonic()`` values
passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

STARTING = "starting"
READY = "ready"
DOWN = "down"
EJECTED = "ejected"
STATES: tuple[str, ...] = (STARTING, READY, DOWN, EJECTED)

PRIMARY = "primary"
BACKUP = "backup"

#: the routes the gateway forwards; a backend pre-builds one upstream URL per route
PROXY_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass(frozen=True)
class BackendInfo:
    """How the gateway sees one backend: a public model name and URLs, nothing about processes."""

    model: str  # public model name clients send in "model"
    name: str  # unique backend id, e.g. "tiny/0"
    role: str  # "primary" | "backup"
    base_url: str  # e.g. "http://127.0.0.1:8101" (OpenAI routes at base_url + "/v1/...")
    health_url: str  # GET → 200 when ready
    upstream_model: str  # value to put in the forwarded body's "model"
    routes: tuple[str, ...] = PROXY_PATHS  # the proxy routes its engine serves


@dataclass(frozen=True)
class Transition:
    """One state change of one backend, for the log."""

    backend: str
    old: str
    new: str
    reason: str


class Backend:
    """Mutable runtime state of one backend (owned by the gateway's event loop)."""

    __slots__ = (
        "consecutive_failures",
        "drained",
        "ejected_until",
        "failures",
        "info",
        "last_error",
        "name",
        "outstanding",
        "requests",
        "state",
        "successes",
        "urls",
    )

    def __init__(self, info: BackendInfo) -> None:
        if info.role not in (PRIMARY, BACKUP):
            raise ValueError(
                f"backend {info.name}: role must be primary or backup, got {info.role!r}"
            )
        unknown = set(info.routes) - set(PROXY_PATHS)
        if unknown:
            raise ValueError(f"backend {info.name}: no such proxy route(s) "
                             f"{', '.join(sorted(unknown))}; known: {', '.join(PROXY_PATHS)}")
        self.info = info
        self.name = info.name
        base = info.base_url.rstrip("/")
        self.urls: dict[str, str] = {path: base + path for path in PROXY_PATHS}
        self.state = STARTING
        self.outstanding = 0
        self.consecutive_failures = 0
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.ejected_until: float | None = None
        self.drained = False

    # -- transitions -------------------------------------------------------------------------

    def _move(self, new: str, reason: str) -> Transition | None:
        old = self.state
        if old == new:
            return None
        self.state = new
        if new != EJECTED:
            self.ejected_until = None
        if new == READY:
            self.consecutive_failures = 0
        return Transition(self.name, old, new, reason)

    def check_passed(self, now: float) -> Transition | None:
        """An active health check succeeded."""
        if self.state == EJECTED and self.ejected_until is not None and now < self.ejected_until:
            return None
        reason = (
            "cooldown over, health check passed" if self.state == EJECTED else "health check passed"
        )
        return self._move(READY, reason)

    def process_replaced(self) -> Transition | None:
        """A new engine process serves this URL: the old one's failures and ejection are void."""
        self.consecutive_failures = 0
        if self.state == EJECTED:
            return self._move(DOWN, "engine restarted, ejection cleared; awaiting a health check")
        return None

    def check_failed(self, now: float, error: str) -> Transition | None:
        """An active health check failed (status, timeout or connection error)."""
        self.last_error = error
        if self.state == READY:
            return self._move(DOWN, f"health check failed: {error}")
        if self.state == EJECTED and (self.ejected_until is None or now >= self.ejected_until):
            return self._move(DOWN, f"health check failed after cooldown: {error}")
        return None

    def request_succeeded(self) -> None:
        """A forwarded request completed (passive success)."""
        self.successes += 1
        self.consecutive_failures = 0

    def request_failed(
        self, now: float, error: str, threshold: int, cooldown_s: float, refused: bool = False
    ) -> Transition | None:
        """A forwarded request failed because of the backend (connect error, 5xx, timeout, drop)."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        if self.state != READY:
            return None
        if refused:
            return self._move(DOWN, f"connection refused: {error}")
        if self.consecutive_failures >= threshold:
            transition = self._move(
                EJECTED, f"{self.consecutive_failures} consecutive failures, last: {error}"
            )
            self.ejected_until = now + cooldown_s
            return transition
        return None

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.info.model,
            "role": self.info.role,
            "state": self.state,
            "drained": self.drained,
            "outstanding": self.outstanding,
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "last_error": self.last_error,
            "ejected_until": self.ejected_until,
        }


class Pool:
    """The backends of one public model: primaries first, least outstanding, round-robin ties.

    ``routes``: the proxy routes every one of its backends serves. Only those are advertised and
    forwarded, so a failover never lands on an engine that lacks the route.
    """

    __slots__ = ("_rr", "backends", "backups", "model", "primaries", "routes")

    def __init__(self, model: str, backends: Iterable[Backend]) -> None:
        self.model = model
        self.backends: list[Backend] = list(backends)
        self.primaries = [b for b in self.backends if b.info.role == PRIMARY]
        self.backups = [b for b in self.backends if b.info.role == BACKUP]
        self.routes = tuple(p for p in PROXY_PATHS
                            if all(p in b.info.routes for b in self.backends))
        self._rr = 0

    def healthy(self) -> int:
        return sum(1 for b in self.backends if b.state == READY and not b.drained)

    def pick(self, exclude: Collection[Backend] = ()) -> Backend | None:
        """Choose a backend for the next attempt, or ``None`` when no ready one is left.

        Ready primaries not in ``exclude`` come first, least outstanding requests wins, ties are
        broken round-robin. Backups are chosen only when no such primary is left: when every
        primary is unhealthy, or (on a retry) when every ready primary already failed this request.
        """
        for tier in (self.primaries, self.backups):
            best: list[Backend] = []
            least = 0
            for backend in tier:
                if backend.state != READY or backend.drained or backend in exclude:
                    continue
                if not best or backend.outstanding < least:
                    best = [backend]
                    least = backend.outstanding
                elif backend.outstanding == least:
                    best.append(backend)
            if best:
                if len(best) == 1:
                    return best[0]
                self._rr += 1
                return best[self._rr % len(best)]
        return None


def build_pools(backends: Iterable[Backend]) -> dict[str, Pool]:
    """Group backends by public model name (insertion order kept)."""
    grouped: dict[str, list[Backend]] = {}
    for backend in backends:
        grouped.setdefault(backend.info.model, []).append(backend)
    return {model: Pool(model, members) for model, members in grouped.items()}
