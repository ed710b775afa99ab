"""Limits: the token-bucket arithmetic by hand (a clock we move), then 429/413/504 through a real
gateway in front of FAKE backends (homellm.gateway.fakebackend), with raw HTTP and the openai
client (its typed exceptions), and the rate-limit counter in /metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest

from homellm.config import GatewayConfig, KeyLimits, LimitsConfig
from homellm.gateway import limits as limits_module
from homellm.gateway.limits import Limits, Refusal, Ticket, held_tokens, merge
from homellm.keys import KeyFile, KeyVerifier
from tests.gateway.conftest import MODEL, Harness, RunningGateway, info, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(limits_module.time, "monotonic", clock)
    return clock


def config(**per_key: int) -> LimitsConfig:
    return LimitsConfig(per_key=KeyLimits(**per_key))


def test_rpm_is_a_bucket_of_rpm_refilled_over_a_minute(clock: Clock) -> None:
    limits = Limits(config(rpm=3))
    tickets = [limits.admit("alice", None, 0) for _ in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    refused = limits.admit("alice", None, 0)
    # 3 per minute refill one request every 20 s
    assert isinstance(refused, Refusal) and refused.limit == "rpm"
    assert refused.retry_after_s == 20
    assert isinstance(limits.admit("bob", None, 0), Ticket)  # each key has its own bucket
    clock.now += 19.5
    assert isinstance(limits.admit("alice", None, 0), Refusal)
    clock.now += 0.5
    assert isinstance(limits.admit("alice", None, 0), Ticket)


def test_tpm_holds_max_tokens_then_charges_the_usage(clock: Clock) -> None:
    limits = Limits(config(tpm=600))  # 10 tokens a second
    first = limits.admit("alice", None, 500)
    assert isinstance(first, Ticket)
    refused = limits.admit("alice", None, 200)  # 100 left, 200 asked: 10 s short
    assert isinstance(refused, Refusal) and refused.limit == "tpm"
    assert refused.retry_after_s == 10
    limits.release(first, 120)  # used 120 of the 500 held: 380 come back, 480 left
    assert isinstance(limits.admit("alice", None, 480), Ticket)
    assert isinstance(limits.admit("alice", None, 1), Refusal)


def test_tpm_without_usage_keeps_the_hold_and_overuse_is_a_debt(clock: Clock) -> None:
    limits = Limits(config(tpm=60))  # 1 token a second
    ticket = limits.admit("alice", None, 30)
    assert isinstance(ticket, Ticket)
    limits.release(ticket, None)  # 30 stay charged
    ticket = limits.admit("alice", None, 0)
    assert isinstance(ticket, Ticket)
    limits.release(ticket, 90)  # used 90 with nothing held: 30 - 90 = -60 tokens
    refused = limits.admit("alice", None, 0)
    assert isinstance(refused, Refusal) and refused.retry_after_s == 60


def test_a_hold_larger_than_the_bucket_passes_once_the_bucket_is_full(clock: Clock) -> None:
    limits = Limits(config(tpm=100))
    ticket = limits.admit("alice", None, 4000)
    assert isinstance(ticket, Ticket)  # full bucket: admitted, not locked out for good
    limits.release(ticket, 4000)
    refused = limits.admit("alice", None, 4000)
    assert isinstance(refused, Refusal)
    # level 100 - 4000 = -3900; back to 100 takes 4000 tokens at 100/60 a second: 2400 s
    assert refused.retry_after_s == 2400


def test_concurrency_per_key_and_global(clock: Clock) -> None:
    limits = Limits(LimitsConfig(max_concurrent_requests=3, per_key=KeyLimits(concurrent=2)))
    a1, a2 = limits.admit("alice", None, 0), limits.admit("alice", None, 0)
    refused = limits.admit("alice", None, 0)
    assert isinstance(refused, Refusal) and refused.limit == "concurrent"
    b1 = limits.admit("bob", None, 0)
    assert isinstance(b1, Ticket)
    over = limits.admit(None, None, 0)  # no keys in use: only the global limit applies
    assert isinstance(over, Refusal) and over.limit == "global" and over.retry_after_s == 1
    assert isinstance(a1, Ticket) and isinstance(a2, Ticket)
    limits.release(a1, None)
    assert isinstance(limits.admit("alice", None, 0), Ticket)
    assert limits.in_flight == 3


def test_limits_come_from_the_stack_key_record_then_default(clock: Clock) -> None:
    stack = LimitsConfig(per_key=KeyLimits(rpm=100, concurrent=5),
                         keys={"alice": KeyLimits(rpm=1)})
    merged = merge(stack.keys.get("alice"), KeyLimits(rpm=7, tpm=50), stack.per_key)
    assert merged == KeyLimits(rpm=1, tpm=50, concurrent=5)
    limits = Limits(stack)
    assert isinstance(limits.admit("alice", KeyLimits(rpm=7), 0), Ticket)
    assert isinstance(limits.admit("alice", KeyLimits(rpm=7), 0), Refusal)  # the stack's 1 rpm
    limits.configure(LimitsConfig())  # reloaded without limits: alice passes again
    assert isinstance(limits.admit("alice", None, 0), Ticket)


def test_held_tokens_reads_the_completion_cap() -> None:
    assert held_tokens({"max_tokens": 64}) == 64
    assert held_tokens({"max_completion_tokens": 32, "max_tokens": 64}) == 32
    assert held_tokens({"max_tokens": "lots"}) == 0
    assert held_tokens({"max_tokens": True}) == 0
    assert held_tokens({}) == 0


# -- through a running gateway ---------------------------------------------------------------

def keyed_gateway(harness: Harness, tmp_path: Path, limits: LimitsConfig, **fake_knobs: object
                  ) -> tuple[RunningGateway, str]:
    fake = harness.fake(name="a", **fake_knobs)
    gw = harness.gateway([info(fake, "tiny/0")])
    key = KeyFile(tmp_path / "keys.json").add("alice")
    gw.gw.keys = KeyVerifier(tmp_path / "keys.json")
    gw.gw.configure(gw.gw.config.model_copy(update={"limits": limits}))
    return gw, key


def rate_limited(gw: RunningGateway, limit: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gw.url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "homellm_gateway_rate_limited_requests_total"
               and s.labels == {"model": MODEL, "key_name": "alice", "limit": limit})


def test_rpm_429_with_retry_after_raw_and_openai(harness: Harness, tmp_path: Path) -> None:
    gw, key = keyed_gateway(harness, tmp_path, LimitsConfig(per_key=KeyLimits(rpm=2)))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    for _ in range(2):
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    raw = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                     headers={"Authorization": f"Bearer {key}"})
    assert raw.status_code == 429
    assert raw.headers["retry-after"] == "30"  # 2 a minute: the next one in 30 s
    error = raw.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert caught.value.response.headers["retry-after"] == "30"
    assert rate_limited(gw, "rpm") == 2
    assert key not in httpx.get(f"{gw.url}/metrics").text


def test_tpm_counts_the_backends_usage(harness: Harness, tmp_path: Path) -> None:
    # the fake answers with usage 3 prompt + max_tokens completion tokens
    gw, key = keyed_gateway(harness, tmp_path, LimitsConfig(per_key=KeyLimits(tpm=30)))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)  # 13 used
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10,
                                            stream=True)
    assert list(stream)  # 13 more: 26 of 30 used
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert "tokens per minute" in caught.value.message
    assert rate_limited(gw, "tpm") == 1


def test_concurrency_limit_429_while_one_is_in_flight(harness: Harness, tmp_path: Path) -> None:
    gw, key = keyed_gateway(harness, tmp_path, LimitsConfig(per_key=KeyLimits(concurrent=1)),
                            hang_s=1.0)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    results: list[object] = []
    slow = threading.Thread(target=lambda: results.append(
        client.chat.completions.create(model=MODEL, messages=MESSAGES)))
    slow.start()
    gw.wait_state("tiny/0", "ready")

    wait_until(lambda: gw.gw.limits.in_flight == 1, 5, "the slow request in flight")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    slow.join(10)
    assert results and rate_limited(gw, "concurrent") == 1
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    assert gw.gw.limits.in_flight == 0


def test_global_concurrency_applies_without_keys(harness: Harness) -> None:
    fake = harness.fake(name="a", hang_s=1.0)
    gw = harness.gateway([info(fake, "tiny/0")])
    gw.gw.configure(gw.gw.config.model_copy(
        update={"limits": LimitsConfig(max_concurrent_requests=1)}))
    slow = threading.Thread(target=lambda: httpx.post(
        f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10))
    slow.start()

    wait_until(lambda: gw.gw.limits.in_flight == 1, 5, "the slow request in flight")
    raw = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert raw.status_code == 429 and raw.json()["error"]["code"] == "gateway_busy"
    assert raw.headers["retry-after"] == "1"
    slow.join(10)


def test_413_and_504_with_the_openai_client(harness: Harness) -> None:
    fake = harness.fake(name="a", hang_s=3.0)
    gw = harness.gateway([info(fake, "tiny/0")], first_token_s=0.3, max_attempts=1)
    gw.gw.configure(gw.gw.config.model_copy(
        update={"limits": LimitsConfig(max_body_bytes=2048)}))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model=MODEL, prompt="x" * 4000)
    assert caught.value.status_code == 413
    assert "max_body_bytes" in caught.value.message
    with pytest.raises(openai.InternalServerError) as timed_out:
        client.completions.create(model=MODEL, prompt="x")
    assert timed_out.value.status_code == 504
    assert "no first token within 0.3 s" in timed_out.value.message


def test_config_keeps_limits_in_the_stack_file() -> None:
    gateway = GatewayConfig.model_validate({"limits": {
        "max_concurrent_requests": 64, "per_key": {"rpm": 60},
        "keys": {"ci": {"tpm": 100000, "concurrent": 2}}}})
    assert gateway.limits.keys["ci"].tpm == 100000
    assert gateway.limits.max_body_bytes == 64 * 1024 * 1024
