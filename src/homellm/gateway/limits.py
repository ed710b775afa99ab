"""Request limits: per key requests and tokens per minute and concurrency; global concurrency.

Rates are token buckets (as nginx's ``limit_req`` and OpenAI's limits behave): a key with
``rpm: 60`` may send a burst of 60 requests, then one more per second. Tokens per minute count
prompt plus completion tokens from the backend's ``usage``; while a request is in flight its
``max_tokens`` (or ``max_completion_tokens``) is held back from the bucket, and when it ends the
hold is replaced by what the backend reported (a response without usage keeps the hold). A
request whose hold alone is larger than the whole bucket is admitted once the bucket is full,
so a small ``tpm`` never locks a key out for good.

A refusal says which limit and after how many seconds the same request would pass
(``Retry-After``). Limits come from the stack file (``gateway.limits``) and may be replaced while
serving (:meth:`Limits.configure`): running counts carry over, a changed rate starts its bucket
full.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from homellm.config import KeyLimits, LimitsConfig

RPM, TPM, CONCURRENT, GLOBAL = "rpm", "tpm", "concurrent", "global"


class TokenBucket:
    """``capacity`` units, refilled at ``capacity`` per minute; the level may go below zero
    (a request that used more tokens than it held back leaves a debt)."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / 60.0
        self.level = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available; 0: available now."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass(slots=True)
class Refusal:
    limit: str  # rpm, tpm, concurrent, global
    retry_after_s: int
    message: str


class _KeyState:
    __slots__ = ("in_flight", "limits", "requests", "tokens")

    def __init__(self, limits: KeyLimits, now: float) -> None:
        self.limits = limits
        self.in_flight = 0
        self.requests = TokenBucket(limits.rpm, now) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm, now) if limits.tpm else None

    def reconfigure(self, limits: KeyLimits, now: float) -> None:
        if limits.rpm != self.limits.rpm:
            self.requests = TokenBucket(limits.rpm, now) if limits.rpm else None
        if limits.tpm != self.limits.tpm:
            self.tokens = TokenBucket(limits.tpm, now) if limits.tpm else None
        self.limits = limits


@dataclass(slots=True)
class Ticket:
    """An admitted request: hand it back to :meth:`Limits.release` when the request is over."""

    key: _KeyState | None
    held_tokens: int


def merge(*layers: KeyLimits | None) -> KeyLimits:
    """Field by field, the first layer that sets a limit wins."""
    values = {}
    for name in ("rpm", "tpm", "concurrent"):
        values[name] = next((getattr(layer, name) for layer in layers
                             if layer is not None and getattr(layer, name) is not None), None)
    return KeyLimits(**values)


def _seconds(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class Limits:
    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.in_flight = 0
        self._keys: dict[str, _KeyState] = {}

    @property
    def max_body_bytes(self) -> int:
        return self.config.max_body_bytes

    def configure(self, config: LimitsConfig) -> None:
        """New limits from a reloaded stack file; keys' running counts are kept."""
        self.config = config  # each key's state adopts its new limits on its next request

    def _state(self, key_name: str, key_limits: KeyLimits | None, now: float) -> _KeyState | None:
        limits = merge(self.config.keys.get(key_name), key_limits, self.config.per_key)
        state = self._keys.get(key_name)
        if state is None:
            if limits.rpm is None and limits.tpm is None and limits.concurrent is None:
                return None
            state = self._keys[key_name] = _KeyState(limits, now)
        elif state.limits != limits:
            state.reconfigure(limits, now)
        return state

    def admit(self, key_name: str | None, key_limits: KeyLimits | None,
              held_tokens: int) -> Ticket | Refusal:
        """Admit a request (counting it) or say why not. ``key_name`` None: no API keys in use,
        so only the global limit applies."""
        cap = self.config.max_concurrent_requests
        if cap is not None and self.in_flight >= cap:
            return Refusal(GLOBAL, 1, f"the gateway is at its limit of {cap} concurrent "
                                      "requests; retry shortly")
        state = None
        if key_name is not None:
            now = time.monotonic()
            state = self._state(key_name, key_limits, now)
            if state is not None:
                limits = state.limits
                if limits.concurrent is not None and state.in_flight >= limits.concurrent:
                    return Refusal(CONCURRENT, 1, f"key {key_name!r} has {limits.concurrent} "
                                   "requests in flight, its concurrency limit")
                if state.requests is not None:
                    wait_s = state.requests.wait_for(1, now)
                    if wait_s > 0:
                        return Refusal(RPM, _seconds(wait_s), f"key {key_name!r} is over its "
                                       f"limit of {limits.rpm} requests per minute")
                if state.tokens is not None:
                    wait_s = state.tokens.wait_for(held_tokens, now)
                    if wait_s > 0:
                        return Refusal(TPM, _seconds(wait_s), f"key {key_name!r} is over its "
                                       f"limit of {limits.tpm} tokens per minute")
                    state.tokens.take(held_tokens)
                if state.requests is not None:
                    state.requests.take(1)
                state.in_flight += 1
        self.in_flight += 1
        return Ticket(state, held_tokens)

    def release(self, ticket: Ticket, used_tokens: int | None) -> None:
        """The request is over; ``used_tokens``: prompt + completion from usage, None: unknown
        (the hold stays charged)."""
        self.in_flight -= 1
        state = ticket.key
        if state is None:
            return
        state.in_flight -= 1
        if state.tokens is not None and used_tokens is not None:
            state.tokens.give(ticket.held_tokens - used_tokens, time.monotonic())


def held_tokens(payload: dict[str, object]) -> int:
    """What a request may cost before its usage is known: its completion-token cap."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = payload.get(field)
        if (type(value) is int or type(value) is float) and value > 0:
            return int(value)  # validated: a float here is a whole number (2.0)
    return 0
