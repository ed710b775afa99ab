"""Prometheus metrics of the gateway (``GET /metrics``); every name and label is in docs/metrics.md.

Each :class:`GatewayMetrics` owns its own ``CollectorRegistry`` (not the process-global one), so
several gateways can live in one process. The proxy calls it once per request, at the end, and
once per failed attempt: nothing is updated per streamed chunk. Backend health and per-backend
outstanding requests are read from the pools at scrape time by a collector, so they cost nothing
on the hot path.

Token counts come from the backend's ``usage``: the non-streaming body, or the last SSE events of
a stream (``transformers serve`` always sends it; vLLM and SGLang only when the client asked with
``stream_options.include_usage``; the gateway never adds that to a client's request). A response
without it is counted in ``homellm_gateway_responses_without_usage_total``.

``key_name`` (the API key's name, never the key; empty when the gateway uses no keys) labels
the request and token counters and the rate-limit counter: per-key usage is what one bills or
limits by. Latency histograms leave it out, so their series count stays models × backends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from homellm.gateway.backends import STATES

if TYPE_CHECKING:
    from homellm.gateway.backends import Pool

__all__ = [
    "CONTENT_TYPE_LATEST",
    "E2E_BUCKETS",
    "NO_BACKEND",
    "TTFT_BUCKETS",
    "GatewayMetrics",
    "parse_usage",
]

#: time to first token, seconds: 5 ms (a warm small model) to 2 min (a long prefill on a loaded
#: engine); finer below 1 s, where interactive use lives
TTFT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 120.0,
)
#: end-to-end request duration, seconds: 50 ms (a short answer or an embedding) to 10 min
#: (thousands of tokens on a slow engine)
E2E_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0,
)
#: the ``backend`` label of a request that no backend answered (no healthy backend left)
NO_BACKEND = "none"

_USAGE_KEY = b'"usage"'
_USAGE_WINDOW = 4096  # a usage object is a few hundred bytes, token details included
_decoder = json.JSONDecoder()


def parse_usage(data: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from the last ``"usage"`` object in ``data``.

    ``data`` is a whole JSON response body, or the last SSE event(s) of a stream; only the few
    hundred bytes after the last ``"usage"`` key are decoded, never the whole body (an embeddings
    answer can be megabytes). ``(None, None)`` when there is no usable usage (absent, ``null``,
    malformed). Never raises.
    """
    at = data.rfind(_USAGE_KEY)
    if at < 0:
        return None, None
    try:
        text = data[at + len(_USAGE_KEY): at + len(_USAGE_KEY) + _USAGE_WINDOW].decode(
            "utf-8", "replace").lstrip()
        if not text.startswith(":"):
            return None, None
        text = text[1:].lstrip()
        if not text.startswith("{"):
            return None, None  # "usage": null (vLLM's chunks before the last one)
        usage, _ = _decoder.raw_decode(text)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(usage, dict):  # pragma: no cover (raw_decode of "{" gives a dict)
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if type(prompt) is int and prompt >= 0 else None,
        completion if type(completion) is int and completion >= 0 else None,
    )


class _Series:
    """The children of one (model, backend, key_name), resolved once: ``labels()`` is slow-ish."""

    __slots__ = ("completion", "e2e", "key_name", "no_usage", "prompt", "requests", "ttft")

    def __init__(self, metrics: GatewayMetrics, model: str, backend: str, key_name: str) -> None:
        self.key_name = key_name
        self.requests: dict[int, Any] = {}
        self.ttft = metrics.time_to_first_token.labels(model, backend)
        self.e2e = metrics.request_duration.labels(model, backend)
        self.prompt = metrics.prompt_tokens.labels(model, backend, key_name)
        self.completion = metrics.completion_tokens.labels(model, backend, key_name)
        self.no_usage = metrics.responses_without_usage.labels(model, backend)


class _PoolCollector(Collector):
    """Backend state read from the pools at scrape time (the hot path never touches a gauge)."""

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[Any]:
        state = GaugeMetricFamily(
            "homellm_gateway_backend_state",
            "Health state of a backend as the gateway routes by it, one-hot: 1 for the current "
            "state (starting, ready, down, ejected), 0 for the others",
            labels=["model", "backend", "state"],
        )
        drained = GaugeMetricFamily(
            "homellm_gateway_backend_drained",
            "1 while an operator has drained the backend (no new requests, health still "
            "checked), else 0",
            labels=["model", "backend"],
        )
        outstanding = GaugeMetricFamily(
            "homellm_gateway_backend_requests_in_flight",
            "Attempts in progress on a backend (what least-outstanding routing compares)",
            labels=["model", "backend"],
        )
        for model, pool in self._pools.items():
            for backend in pool.backends:
                name = backend.name
                for s in STATES:
                    state.add_metric([model, name, s], 1.0 if backend.state == s else 0.0)
                drained.add_metric([model, name], 1.0 if backend.drained else 0.0)
                outstanding.add_metric([model, name], float(backend.outstanding))
        yield state
        yield drained
        yield outstanding


class GatewayMetrics:
    """The gateway's metrics in their own registry; called by the proxy once per request."""

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ml, mbl = ["model"], ["model", "backend"]
        self.requests = Counter(
            "homellm_gateway_requests", "Proxied requests by the HTTP status the client got "
            "(499: the client went away first; a stream broken after its first event keeps its "
            "200, see midstream_failures); backend: the one that answered, or the last tried",
            ["model", "backend", "key_name", "status"], registry=r)
        self.time_to_first_token = Histogram(
            "homellm_gateway_time_to_first_token_seconds", "Streaming requests: from the "
            "gateway receiving the request to the first SSE event sent to the client",
            mbl, buckets=TTFT_BUCKETS, registry=r)
        self.request_duration = Histogram(
            "homellm_gateway_request_duration_seconds", "Requests a backend answered: from the "
            "gateway receiving the request to the last byte sent (or the client leaving)",
            mbl, buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter(
            "homellm_gateway_prompt_tokens", "Prompt tokens, from the backends' usage",
            ["model", "backend", "key_name"], registry=r)
        self.completion_tokens = Counter(
            "homellm_gateway_completion_tokens", "Completion tokens, from the backends' usage "
            "(streams: only when the backend sent usage, see responses_without_usage)",
            ["model", "backend", "key_name"], registry=r)
        self.responses_without_usage = Counter(
            "homellm_gateway_responses_without_usage", "Complete answers whose tokens are not "
            "counted: the backend sent no usage (vLLM/SGLang streams without "
            "stream_options.include_usage)", mbl, registry=r)
        self.in_flight = Gauge(
            "homellm_gateway_requests_in_flight",
            "Requests being proxied now (received, last byte not yet sent)", ml, registry=r)
        self.retries = Counter(
            "homellm_gateway_retries", "Attempts after a request's first one (each follows a "
            "failure before the first byte)", ml, registry=r)
        self.failovers = Counter(
            "homellm_gateway_failovers", "Requests answered by a backend other than the first "
            "one tried, or by a backup", ml, registry=r)
        self.attempt_failures = Counter(
            "homellm_gateway_attempt_failures", "Attempts that failed before the first byte "
            "reached the client (connect error, 5xx, timeout, closed stream), by error code",
            ["model", "backend", "code"], registry=r)
        self.midstream_failures = Counter(
            "homellm_gateway_midstream_failures", "Streams that broke after their first event "
            "(backend died or stalled): the client got an error event and [DONE]",
            mbl, registry=r)
        self.ejections = Counter(
            "homellm_gateway_ejections", "Backends taken out of rotation after fail_threshold "
            "consecutive failures (back after the cooldown and a passed health check)",
            mbl, registry=r)
        self.rate_limited = Counter(
            "homellm_gateway_rate_limited_requests", "Requests refused with 429 by the gateway's "
            "limits; limit: rpm, tpm, concurrent (the key's) or global (max_concurrent_requests)",
            ["model", "key_name", "limit"], registry=r)
        r.register(_PoolCollector(pools))

        self._series: dict[tuple[str, str], _Series] = {}
        self._in_flight: dict[str, Any] = {}
        # known label sets start at 0, so rate() and increase() see the first event
        for model, pool in pools.items():
            self._in_flight[model] = self.in_flight.labels(model)
            self.retries.labels(model)
            self.failovers.labels(model)
            for backend in pool.backends:
                self._series[(model, backend.name, "")] = _Series(self, model, backend.name, "")
                self.ejections.labels(model, backend.name)
                self.midstream_failures.labels(model, backend.name)

    # -- called by the proxy ---------------------------------------------------------------

    def request_started(self, model: str) -> None:
        child = self._in_flight.get(model)
        if child is None:
            child = self._in_flight[model] = self.in_flight.labels(model)
        child.inc()

    def request_finished(self, model: str) -> None:
        self._in_flight[model].dec()

    def request_done(
        self, model: str, backend: str, status: int, ttft_s: float | None, e2e_s: float | None,
        prompt_tokens: int | None, completion_tokens: int | None, attempts: int,
        failover: bool = False, usage_expected: bool = False, key_name: str = "",
    ) -> None:
        """One request is over. ``e2e_s`` None: no backend answered (no duration observed);
        ``usage_expected``: a complete answer, so missing token counts are worth counting."""
        series = self._series.get((model, backend, key_name))
        if series is None:
            series = self._series[(model, backend, key_name)] = _Series(self, model, backend,
                                                                        key_name)
        child = series.requests.get(status)
        if child is None:
            child = series.requests[status] = self.requests.labels(model, backend, key_name,
                                                                   str(status))
        child.inc()
        if e2e_s is not None:
            series.e2e.observe(e2e_s)
        if ttft_s is not None:
            series.ttft.observe(ttft_s)
        if prompt_tokens:
            series.prompt.inc(prompt_tokens)
        if completion_tokens:
            series.completion.inc(completion_tokens)
        if usage_expected and prompt_tokens is None and completion_tokens is None:
            series.no_usage.inc()
        if attempts > 1:
            self.retries.labels(model).inc(attempts - 1)
        if failover:
            self.failovers.labels(model).inc()

    def attempt_failed(self, model: str, backend: str, code: str) -> None:
        self.attempt_failures.labels(model, backend, code).inc()

    def midstream_failure(self, model: str, backend: str) -> None:
        self.midstream_failures.labels(model, backend).inc()

    def ejected(self, model: str, backend: str) -> None:
        self.ejections.labels(model, backend).inc()

    def rate_limited_request(self, model: str, key_name: str, limit: str) -> None:
        self.rate_limited.labels(model, key_name, limit).inc()

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (content type CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)
