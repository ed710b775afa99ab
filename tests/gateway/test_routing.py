"""Routing and retries through the gateway to FAKE backends (homellm.gateway.fakebackend):
primaries first, least outstanding, backups only while no primary is ready, retry before the
first byte, 4xx passed through without retry."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.conftest import free_port
from tests.gateway.conftest import MODEL, Harness, info

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def served(gw_http, n: int = 1, body: dict | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    names = []
    for _ in range(n):
        response = gw_http.post("/v1/chat/completions", json=body or CHAT)
        assert response.status_code == 200, response.text
        names.append(response.headers["x-homellm-backend"])
    return names


def test_fake_primary_preferred_over_backup(harness: Harness) -> None:
    primary, backup = harness.fake(name="p"), harness.fake(name="b")
    gw = harness.gateway([info(backup, "tiny/b", "backup"), info(primary, "tiny/p")])
    with gw.http() as http:
        assert served(http, 6) == ["tiny/p"] * 6
    assert backup.requests == 0 and primary.requests == 6


def test_fake_primaries_round_robin_when_idle(harness: Harness) -> None:
    a, b = harness.fake(name="a"), harness.fake(name="b")
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b")])
    with gw.http() as http:
        names = served(http, 6)
    assert sorted(set(names)) == ["tiny/a", "tiny/b"]
    assert names.count("tiny/a") == 3  # ties broken round-robin


def test_fake_least_outstanding_among_primaries(harness: Harness) -> None:
    a = harness.fake(name="a", tokens=200, delay_ms=20)  # a long stream keeps one busy
    b = harness.fake(name="b", tokens=200, delay_ms=20)
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b")])
    with (
        gw.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 200, "stream": True}
        ) as long_stream,
    ):
        busy = long_stream.headers["x-homellm-backend"]
        chunks = long_stream.iter_raw()  # keep a reference: a dropped iterator closes the stream
        next(chunks)
        assert gw.state(busy)["outstanding"] == 1
        quick = {**CHAT, "max_tokens": 1}
        others = served(http, 5, quick)
        assert busy not in others and len(set(others)) == 1
    gw.wait_idle()


def test_fake_backup_used_only_while_primary_down_then_traffic_returns(harness: Harness) -> None:
    primary, backup = harness.fake(name="p"), harness.fake(name="b")
    gw = harness.gateway([info(primary, "tiny/p"), info(backup, "tiny/b", "backup")])
    with gw.http() as http:
        assert served(http, 2) == ["tiny/p"] * 2
        primary.healthy = False
        gw.wait_state("tiny/p", "down")
        assert served(http, 3) == ["tiny/b"] * 3
        primary.healthy = True
        gw.wait_state("tiny/p", "ready")
        assert served(http, 2) == ["tiny/p"] * 2
    assert gw.gw.served_by == {"tiny/p": 4, "tiny/b": 3}


@pytest.mark.parametrize("how", ["http_500", "refused", "hang"])
def test_fake_retry_before_first_byte(harness: Harness, how: str) -> None:
    bad = harness.fake(
        name="bad",
        fail_status=500 if how == "http_500" else None,
        hang_s=30 if how == "hang" else 0,
    )
    good = harness.fake(name="good")
    gw = harness.gateway(
        [info(bad, "tiny/bad"), info(good, "tiny/good", "backup")],
        interval_s=30 if how == "refused" else 0.05,
        first_token_s=0.3,
    )
    if how == "refused":
        harness.stop_fake(bad)  # was ready; now its port refuses connections
    for stream in (False, True):
        with gw.http() as http:
            started = time.monotonic()
            response = http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert response.status_code == 200, response.text
        assert response.headers["x-homellm-backend"] == "tiny/good"
        assert response.headers["x-homellm-attempts"] == "2"
        if stream:
            assert response.text.endswith("data: [DONE]\n\n")
        if how == "hang":
            assert 0.25 < time.monotonic() - started < 3
        if how == "refused":
            assert gw.state("tiny/bad")["state"] == "down"  # no more traffic to a dead port
            break
    snap = gw.state("tiny/bad")
    assert snap["failures"] >= 1 and snap["last_error"]
    if how == "hang":
        assert snap["last_error"] == "no first token within 0.3 s"
        # the gateway gave up on the hanging fake: it sees the connection closed
        from tests.gateway.conftest import wait_until

        wait_until(lambda: bad.disconnects == 2, what="fake saw both disconnects")
    gw.wait_idle()


def test_fake_all_attempts_fail_gives_last_status(harness: Harness) -> None:
    a, b = harness.fake(name="a", fail_status=503), harness.fake(name="b", fail_status=500)
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b")], fail_threshold=10)
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code in (500, 503)
    assert response.headers["x-homellm-attempts"] == "2"
    assert response.json()["error"]["message"].startswith("fake backend")  # passed through
    with pytest.raises(openai.InternalServerError):
        gw.openai().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ""}])
    assert a.requests == 2 and b.requests == 2


def test_fake_max_attempts_limits_tries(harness: Harness) -> None:
    fakes = [harness.fake(name=f"f{i}", fail_status=500) for i in range(3)]
    gw = harness.gateway(
        [info(f, f"tiny/{i}") for i, f in enumerate(fakes)], max_attempts=2, fail_threshold=10
    )
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert response.headers["x-homellm-attempts"] == "2"
    assert sum(f.requests for f in fakes) == 2


def test_fake_4xx_passed_through_not_retried_not_counted(harness: Harness) -> None:
    refusal = b'{"detail":"Unexpected fields in the request: {\'foo\'}"}'  # transformers serve
    a = harness.fake(name="a", fail_status=422, fail_body=refusal)
    b = harness.fake(name="b", fail_status=422, fail_body=refusal)
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b")], fail_threshold=1)
    with gw.http() as http:
        for _ in range(3):
            response = http.post("/v1/chat/completions", json={**CHAT, "foo": 1})
            assert response.status_code == 422
            assert response.headers["x-homellm-attempts"] == "1"
            assert response.json() == {"error": {
                "message": "Unexpected fields in the request: {'foo'}",
                "type": "invalid_request_error", "param": None, "code": "engine_rejected"}}
    with pytest.raises(openai.UnprocessableEntityError, match="Unexpected fields"):
        gw.openai().chat.completions.create(model=MODEL, messages=CHAT["messages"],
                                            extra_body={"foo": 1})
    assert a.requests + b.requests == 4
    for name in ("tiny/a", "tiny/b"):
        snap = gw.state(name)
        assert snap["state"] == "ready" and snap["failures"] == 0 and snap["successes"] == 0
    assert sum(gw.gw.served_by.values()) == 0


def test_fake_concurrent_requests_accounting(harness: Harness) -> None:
    a = harness.fake(name="a", tokens=20, delay_ms=2)
    b = harness.fake(name="b", tokens=20, delay_ms=2)
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b")])
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with gw.http() as http:
                for stream in (True, False, True):
                    r = http.post(
                        "/v1/chat/completions", json={**CHAT, "max_tokens": 20, "stream": stream}
                    )
                    assert r.status_code == 200
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    gw.wait_idle()
    assert sum(gw.gw.served_by.values()) == 24
    assert gw.gw.served_by["tiny/a"] > 0 and gw.gw.served_by["tiny/b"] > 0


def test_fake_dead_port_never_ready_gives_503(harness: Harness) -> None:
    gw = harness.gateway([info(free_port(), "tiny/dead")], wait_ready=[])
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_backend"
    assert gw.state("tiny/dead")["state"] == "starting"
