"""GET /metrics of the gateway in front of FAKE backends (homellm.gateway.fakebackend): traffic
is driven through the gateway, the scrape is parsed with prometheus_client's own parser, and
counters, histogram counts and token totals are checked exactly (docs/metrics.md)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from homellm.config import GatewayConfig
from homellm.gateway.app import Gateway
from homellm.gateway.metrics import E2E_BUCKETS, TTFT_BUCKETS, parse_usage
from tests.gateway.conftest import MODEL, Harness, RunningGateway, info, wait_until

CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
P = "homellm_gateway_"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: RunningGateway) -> Samples:
    """Every sample of one scrape, once no request is in flight any more."""

    def parse() -> tuple[Samples, str]:
        with gw.http() as http:
            response = http.get("/metrics")
        assert response.status_code == 200
        ctype = response.headers["content-type"]
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples, ctype

    result: list[Samples] = []

    def settled() -> bool:
        samples, ctype = parse()
        assert ctype.startswith("text/plain; version=")
        result[:] = [samples]
        return sum(v for (n, _), v in samples.items() if n == P + "requests_in_flight") == 0

    wait_until(settled, 5, "no request in flight")
    return result[0]


KEYED = ("requests_total", "prompt_tokens_total", "completion_tokens_total")


def val(samples: Samples, name: str, **labels: str) -> float:
    if name in KEYED:
        labels.setdefault("key_name", "")  # these gateways run without API keys
    key = (P + name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {key}; have {sorted(k for k in samples if k[0] == key[0])}"
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == P + name and set(labels.items()) <= set(ls))


def test_metrics_stream_and_whole_requests_tokens_and_latency(harness: Harness) -> None:
    fake = harness.fake(name="fake-a", tokens=5)
    plain = harness.fake(name="fake-like-transformers-serve", tokens=4, send_done=False)
    gw = harness.gateway([info(fake, "tiny/0"), info(plain, "other/0", model="other")])
    with gw.http() as http:
        for _ in range(3):
            assert http.post("/v1/chat/completions", json=STREAM).status_code == 200
        for _ in range(2):
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "p",
                                                  "max_tokens": 2}).status_code == 200
        embed = http.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
        assert embed.status_code == 200
        assert http.post("/v1/chat/completions", json={**STREAM, "model": "other"}).status_code \
            == 200
        # the gateway's own 400 (no messages): no backend saw it, not in requests_total
        assert http.post("/v1/chat/completions", json={"model": MODEL}).status_code == 400
        fake.fail_status = 422
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 422
        fake.fail_status = None
    m = scrape(gw)
    one = {"model": MODEL, "backend": "tiny/0"}
    assert val(m, "requests_total", **one, status="200") == 7
    assert val(m, "requests_total", **one, status="422") == 1  # the fake's own 422, passed on
    assert total(m, "requests_total", status="400") == 0
    assert val(m, "time_to_first_token_seconds_count", **one) == 3  # streams only
    assert val(m, "request_duration_seconds_count", **one) == 8
    assert val(m, "request_duration_seconds_sum", **one) > 0
    # usage: prompt 3 per completion (fake), 1 per embedding input; completion = tokens sent
    assert val(m, "prompt_tokens_total", **one) == 3 * 6 + 2
    assert val(m, "completion_tokens_total", **one) == 5 * 3 + 5 * 2 + 2
    assert val(m, "responses_without_usage_total", **one) == 0
    # a transformers-serve-like stream (usage in the last chunk, no [DONE]) is counted too
    other = {"model": "other", "backend": "other/0"}
    assert val(m, "prompt_tokens_total", **other) == 3
    assert val(m, "completion_tokens_total", **other) == 4
    assert val(m, "time_to_first_token_seconds_count", **other) == 1
    assert val(m, "requests_in_flight", model=MODEL) == 0
    assert val(m, "retries_total", model=MODEL) == 0
    assert val(m, "failovers_total", model=MODEL) == 0
    assert val(m, "ejections_total", **one) == 0
    assert val(m, "midstream_failures_total", **one) == 0
    assert total(m, "attempt_failures_total") == 0
    for state in ("starting", "ready", "down", "ejected"):
        assert val(m, "backend_state", **one, state=state) == (state == "ready")
    assert val(m, "backend_drained", **one) == 0
    # buckets as documented, +Inf last, cumulative
    buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in m.items()
                     if n == P + "time_to_first_token_seconds_bucket" and dict(ls)["backend"]
                     == "tiny/0")
    assert [b for b, _ in buckets] == [*TTFT_BUCKETS, float("inf")]
    assert buckets[-1][1] == 3
    e2e = {float(dict(ls)["le"]) for (n, ls) in m if n == P + "request_duration_seconds_bucket"}
    assert e2e == {*E2E_BUCKETS, float("inf")}


def test_metrics_usage_in_its_own_read_before_done_and_missing_usage(harness: Harness) -> None:
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                                 "total_tokens": 9}}).encode()
    parts = [b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
             b'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\n\n',
             b"data: " + usage + b"\n\n", b"data: [DONE]\n\n"]
    with_usage = harness.scripted(parts, gap_s=0.03)  # separate reads: usage, then [DONE]
    without = harness.scripted([parts[0], parts[1], parts[3]], gap_s=0.01)
    gw = harness.gateway([info(with_usage, "tiny/0"), info(without, "vllm/0", model="vllm")])
    with gw.http() as http:
        assert "[DONE]" in http.post("/v1/chat/completions", json=STREAM).text
        assert "[DONE]" in http.post("/v1/chat/completions", json={**STREAM, "model": "vllm"}).text
    m = scrape(gw)
    assert val(m, "prompt_tokens_total", model=MODEL, backend="tiny/0") == 7
    assert val(m, "completion_tokens_total", model=MODEL, backend="tiny/0") == 2
    assert val(m, "responses_without_usage_total", model="vllm", backend="vllm/0") == 1
    assert val(m, "completion_tokens_total", model="vllm", backend="vllm/0") == 0


def test_metrics_500_retry_failover_ejection(harness: Harness) -> None:
    bad = harness.fake(name="fake-500", fail_status=500)
    good = harness.fake(name="fake-good", tokens=3)
    gw = harness.gateway([info(bad, "tiny/0"), info(good, "tiny/1", "backup")],
                         fail_threshold=2, cooldown_s=30)
    with gw.http() as http:
        first = http.post("/v1/chat/completions", json=STREAM)
        assert first.headers["x-homellm-attempts"] == "2"
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-homellm-attempts"] == "2"
        gw.wait_state("tiny/0", "ejected")
        # the primary is out: the backup answers at the first try, still a failover
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-homellm-attempts"] == "1"
    m = scrape(gw)
    assert val(m, "requests_total", model=MODEL, backend="tiny/1", status="200") == 3
    assert total(m, "requests_total") == 3
    assert val(m, "retries_total", model=MODEL) == 2
    assert val(m, "failovers_total", model=MODEL) == 3
    assert val(m, "attempt_failures_total", model=MODEL, backend="tiny/0",
               code="upstream_error") == 2
    assert total(m, "attempt_failures_total") == 2
    assert val(m, "ejections_total", model=MODEL, backend="tiny/0") == 1
    assert val(m, "ejections_total", model=MODEL, backend="tiny/1") == 0
    assert val(m, "backend_state", model=MODEL, backend="tiny/0", state="ejected") == 1
    assert val(m, "backend_state", model=MODEL, backend="tiny/0", state="ready") == 0
    assert val(m, "time_to_first_token_seconds_count", model=MODEL, backend="tiny/1") == 1
    assert val(m, "request_duration_seconds_count", model=MODEL, backend="tiny/1") == 3
    assert val(m, "completion_tokens_total", model=MODEL, backend="tiny/1") == 9
    assert val(m, "prompt_tokens_total", model=MODEL, backend="tiny/0") == 0


def test_metrics_all_attempts_failed_then_no_backend(harness: Harness) -> None:
    bad = harness.fake(name="fake-dropping", die_after=0)
    gw = harness.gateway([info(bad, "tiny/0")], fail_threshold=2, cooldown_s=30)
    with gw.http() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 502
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 502
        gw.wait_state("tiny/0", "ejected")
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 503
    m = scrape(gw)
    assert val(m, "requests_total", model=MODEL, backend="tiny/0", status="502") == 2
    assert val(m, "requests_total", model=MODEL, backend="none", status="503") == 1
    assert val(m, "retries_total", model=MODEL) == 0  # one backend: nothing to retry on
    assert val(m, "failovers_total", model=MODEL) == 0
    assert val(m, "ejections_total", model=MODEL, backend="tiny/0") == 1
    # no backend answered: no latency observed for these
    assert val(m, "request_duration_seconds_count", model=MODEL, backend="tiny/0") == 0


def test_metrics_midstream_death_and_client_disconnect(harness: Harness) -> None:
    dying = harness.fake(name="fake-dying", tokens=10, die_after=3)
    endless = harness.fake(name="fake-endless", tokens=10_000, delay_ms=20)
    gw = harness.gateway([info(dying, "tiny/0"), info(endless, "long/0", model="long")],
                         fail_threshold=5)
    with gw.http() as http:
        text = http.post("/v1/chat/completions", json=STREAM).text
        assert "failed mid-stream" in text
        with http.stream("POST", "/v1/chat/completions",
                         json={**STREAM, "model": "long"}) as response:
            chunks = response.iter_raw()
            next(chunks)
            m = scrape_now(gw)
            assert val(m, "requests_in_flight", model="long") == 1
            assert val(m, "backend_requests_in_flight", model="long", backend="long/0") == 1
    wait_until(lambda: endless.disconnects == 1, what="the fake saw the disconnect")
    m = scrape(gw)
    one = {"model": MODEL, "backend": "tiny/0"}
    assert val(m, "midstream_failures_total", **one) == 1
    assert val(m, "requests_total", **one, status="200") == 1  # the client got a 200 head
    assert val(m, "time_to_first_token_seconds_count", **one) == 1
    assert val(m, "request_duration_seconds_count", **one) == 1
    assert val(m, "completion_tokens_total", **one) == 0  # no usage in a broken stream
    assert val(m, "responses_without_usage_total", **one) == 0  # not a complete answer
    assert total(m, "attempt_failures_total") == 0
    long = {"model": "long", "backend": "long/0"}
    assert val(m, "requests_total", **long, status="499") == 1
    assert val(m, "request_duration_seconds_count", **long) == 1
    assert val(m, "midstream_failures_total", **long) == 0
    assert val(m, "requests_in_flight", model="long") == 0


def scrape_now(gw: RunningGateway) -> Samples:
    with gw.http() as http:
        text = http.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_rate_limit_counter_is_exposed_and_registries_are_separate() -> None:
    backends = [info(1, "tiny/0")]
    a, b = Gateway(backends, GatewayConfig()), Gateway(backends, GatewayConfig())
    assert a.metrics.registry is not b.metrics.registry
    a.metrics.rate_limited_request(MODEL, "alice", "rpm")
    text_a, text_b = a.metrics.render().decode(), b.metrics.render().decode()
    labels = 'key_name="alice",limit="rpm",model="tiny"'
    assert f"{P}rate_limited_requests_total{{{labels}}} 1.0" in text_a
    assert f"# TYPE {P}rate_limited_requests_total counter" in text_b
    assert "alice" not in text_b
    families = {f.name for f in text_string_to_metric_families(text_b)}
    assert {P + n for n in ("requests", "time_to_first_token_seconds",
                            "request_duration_seconds", "prompt_tokens", "completion_tokens",
                            "requests_in_flight", "backend_state", "retries", "failovers",
                            "ejections", "rate_limited_requests", "midstream_failures",
                            "attempt_failures")} <= families


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,'
     b'"total_tokens":12,"completion_tokens_details":{"reasoning_tokens":1}}}', (5, 7)),
    (b'{"object":"list","data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}', (4, None)),
    (b'data: {"choices":[],"usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
     b"data: [DONE]\n\n", (1, 2)),
    (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
     b'data: {"choices":[],"usage":null}\n\n', (None, None)),  # the last usage wins
    (b'{"choices":[{"message":{"content":"say \\"usage\\": {}"}}]}', (None, None)),
    (b'{"usage":{"prompt_tokens":"3","completion_tokens":-1}}', (None, None)),
    (b'data: {"usage":{"prompt_tokens":3,"compl', (None, None)),  # cut short
    (b"", (None, None)),
])
def test_parse_usage(data: bytes, expected: tuple[int | None, int | None]) -> None:
    assert parse_usage(data) == expected


def test_metrics_client_gone_before_the_first_byte(harness: Harness) -> None:
    fake = harness.fake(name="fake-hanging", hang_s=30)
    gw = harness.gateway([info(fake, "tiny/0")])
    with gw.http(timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=CHAT)
    wait_until(lambda: fake.disconnects == 1, what="the fake saw the disconnect")
    m = scrape(gw)
    assert val(m, "requests_total", model=MODEL, backend="tiny/0", status="499") == 1
    assert val(m, "request_duration_seconds_count", model=MODEL, backend="tiny/0") == 0
    assert total(m, "attempt_failures_total") == 0
