"""Streaming pass-through of the gateway against FAKE backends (homellm.gateway.fakebackend):
chunks are passed on as they come, a backend dying or stalling mid-stream ends the client's stream
with an OpenAI error event and [DONE], and a client that goes away cancels the upstream."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import MODEL, Harness, info, wait_until

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def events(text: str) -> list[str]:
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


def test_fake_stream_passes_through_with_usage_and_done(harness: Harness) -> None:
    fake = harness.fake(name="fake-a", tokens=5)
    gw = harness.gateway([info(fake, "tiny/0")])
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    got = events(response.text)
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    assert json.loads(got[-2])["usage"]["completion_tokens"] == 5
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in got[:5]] == [
        f"t{i} " for i in range(5)
    ]


def test_fake_stream_without_done_gets_done_added(harness: Harness) -> None:
    fake = harness.fake(name="fake-like-transformers-serve", tokens=3, send_done=False)
    gw = harness.gateway([info(fake, "tiny/0")])
    with gw.http() as http:
        got = events(http.post("/v1/chat/completions", json=CHAT).text)
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    assert "usage" in json.loads(got[-2])


def test_fake_stream_chunks_arrive_unbuffered(harness: Harness) -> None:
    fake = harness.fake(name="fake-slow", tokens=6, delay_ms=150)
    gw = harness.gateway([info(fake, "tiny/0")])
    arrivals = []
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        started = time.monotonic()
        for _ in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    # the first token is not held back until the stream ends (6 x 150 ms)
    assert arrivals[0] < 0.1 and arrivals[-1] > 0.6
    assert len(arrivals) >= 5


def test_fake_dies_mid_stream_error_event_then_done(harness: Harness) -> None:
    dying = harness.fake(name="fake-dying", tokens=10, die_after=3)
    spare = harness.fake(name="fake-spare")
    gw = harness.gateway([info(dying, "tiny/0"), info(spare, "tiny/1", "backup")], fail_threshold=5)
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    got = events(response.text)
    assert len(got) == 5
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in got[:3]] == [
        "t0 ",
        "t1 ",
        "t2 ",
    ]
    error = json.loads(got[3])["error"]
    assert error["code"] == "upstream_disconnected" and error["type"] == "server_error"
    assert error["message"].startswith("backend tiny/0 failed mid-stream: ")
    assert got[4] == "[DONE]"
    assert spare.requests == 0  # no failover after the first byte

    stream = gw.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["t0 ", "t1 ", "t2 "]
    gw.wait_idle()
    snap = gw.state("tiny/0")
    assert snap["failures"] == 2 and snap["successes"] == 0
    assert gw.gw.served_by["tiny/0"] == 0


def test_fake_stalls_mid_stream_timeout_event(harness: Harness) -> None:
    stalling = harness.fake(name="fake-stalling", tokens=10, stall_after=2)
    gw = harness.gateway([info(stalling, "tiny/0")], between_tokens_s=0.3, first_token_s=5)
    started = time.monotonic()
    with gw.http() as http:
        got = events(http.post("/v1/chat/completions", json=CHAT).text)
    assert 0.25 < time.monotonic() - started < 3
    assert len(got) == 4 and got[-1] == "[DONE]"
    error = json.loads(got[2])["error"]
    assert error["code"] == "upstream_timeout"
    assert "no next token within 0.3 s" in error["message"]
    wait_until(lambda: stalling.disconnects == 1, what="fake saw the gateway hang up")
    assert gw.state("tiny/0")["failures"] == 1


def test_fake_slow_first_token_is_not_a_stall(harness: Harness) -> None:
    fake = harness.fake(name="fake-long-prefill", tokens=3, ttft_ms=500, delay_ms=10)
    gw = harness.gateway([info(fake, "tiny/0")], between_tokens_s=0.2, first_token_s=2)
    with gw.http() as http:
        got = events(http.post("/v1/chat/completions", json=CHAT).text)
    assert got[-1] == "[DONE]" and not any('"error"' in e for e in got)
    assert gw.gw.served_by["tiny/0"] == 1


def test_fake_sees_client_disconnect_mid_stream(harness: Harness) -> None:
    fake = harness.fake(name="fake-endless", tokens=10_000, delay_ms=20)
    gw = harness.gateway([info(fake, "tiny/0")])
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        chunks = response.iter_raw()
        next(chunks)
        next(chunks)
        assert gw.state("tiny/0")["outstanding"] == 1
    wait_until(lambda: fake.disconnects == 1, what="fake saw the disconnect")
    gw.wait_idle()
    snap = gw.state("tiny/0")
    assert snap["failures"] == 0 and snap["successes"] == 0 and snap["state"] == "ready"
    assert fake.completed == 0


def test_fake_sees_client_disconnect_while_waiting_non_stream(harness: Harness) -> None:
    fake = harness.fake(name="fake-hanging", hang_s=30)
    gw = harness.gateway([info(fake, "tiny/0")])
    with gw.http(timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={**CHAT, "stream": False})
    wait_until(lambda: fake.disconnects == 1, what="fake saw the disconnect")
    gw.wait_idle()
    assert gw.state("tiny/0")["failures"] == 0


def test_fake_async_openai_stream_mid_stream_error(harness: Harness) -> None:
    import asyncio

    fake = harness.fake(name="fake-dying", tokens=10, die_after=2)
    gw = harness.gateway([info(fake, "tiny/0")], fail_threshold=5)

    async def main() -> list[str | None]:
        seen: list[str | None] = []
        async with gw.async_openai() as client:
            stream = await client.completions.create(model=MODEL, prompt="p", stream=True)
            with pytest.raises(openai.APIError, match=r"upstream|mid-stream"):
                async for chunk in stream:
                    seen.append(chunk.choices[0].text)
        return seen

    assert asyncio.run(main()) == ["t0 ", "t1 "]


def test_scripted_fake_event_split_across_writes_is_sent_whole(harness: Harness) -> None:
    script = [b'data: {"a":', b" 1}\n", b"\n", b'data: {"b": 2}\r\n\r\n', b"data: [DONE]\n\n"]
    fake = harness.scripted(script, gap_s=0.1)
    gw = harness.gateway([info(fake, "tiny/0")])
    pieces = []
    with gw.http() as http, http.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        pieces = [p for p in response.iter_raw() if p]
    assert b"".join(pieces) == b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n'
    assert pieces[0] == b'data: {"a": 1}\n\n'  # never half an event
    assert gw.gw.served_by["tiny/0"] == 1


def test_scripted_fake_dies_mid_event_error_event_stays_well_formed(harness: Harness) -> None:
    fake = harness.scripted([b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"half', b'": 3'],
                            end="abort")
    gw = harness.gateway([info(fake, "tiny/0")], fail_threshold=10)
    with gw.http() as http:
        text = http.post("/v1/chat/completions", json=CHAT).text
    got = events(text)
    assert got[:2] == ['{"n": 1}', '{"n": 2}']
    assert json.loads(got[2])["error"]["code"] == "upstream_disconnected"
    assert got[3:] == ["[DONE]"]


def test_scripted_fake_dies_before_first_event_is_retried(harness: Harness) -> None:
    dying = harness.scripted([b'data: {"partial'], end="abort")
    good = harness.fake(name="fake-good", tokens=2)
    gw = harness.gateway([info(dying, "tiny/0"), info(good, "tiny/1", "backup")])
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-homellm-backend"] == "tiny/1"
    assert response.headers["x-homellm-attempts"] == "2"
    assert events(response.text)[-1] == "[DONE]"


def test_fake_upstream_connections_are_kept_alive(harness: Harness) -> None:
    fake = harness.fake(name="fake-a", tokens=4)
    gw = harness.gateway([info(fake, "tiny/0")], interval_s=30)
    with gw.http() as http:
        for i in range(20):
            response = http.post("/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0})
            assert response.status_code == 200
    assert fake.connections == 1  # the health check's connection, reused by all 20 requests
