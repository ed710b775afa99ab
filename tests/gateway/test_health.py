"""Active and passive health of backends, with FAKE backends (homellm.gateway.fakebackend):
ejection after fail_threshold, return after cooldown + a passing check, refused → down → back."""

from __future__ import annotations

import time

from homellm.gateway.fakebackend import FakeBackend
from tests.gateway.conftest import MODEL, Harness, info, wait_until

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_fake_ejected_after_threshold_back_after_cooldown_and_check(harness: Harness) -> None:
    flaky, spare = harness.fake(name="fake-flaky", fail_status=500), harness.fake(name="spare")
    gw = harness.gateway(
        [info(flaky, "tiny/p"), info(spare, "tiny/b", "backup")],
        fail_threshold=2,
        cooldown_s=1.0,
        interval_s=0.05,
    )
    with gw.http() as http:
        for expected_attempts in ("2", "2", "1"):
            response = http.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200
            assert response.headers["x-homellm-backend"] == "tiny/b"
            assert response.headers["x-homellm-attempts"] == expected_attempts
        snap = gw.state("tiny/p")
        assert snap["state"] == "ejected" and snap["consecutive_failures"] == 2
        assert snap["ejected_until"] is not None and snap["ejected_until"] > time.monotonic()
        assert flaky.requests == 2  # not sent anything while ejected

        flaky.fail_status = None  # fixed, and /health passes all along, but the cooldown rules
        time.sleep(0.3)
        assert gw.state("tiny/p")["state"] == "ejected"
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-homellm-backend"] == "tiny/b"

        gw.wait_state("tiny/p", "ready", timeout=3)
        snap = gw.state("tiny/p")
        assert snap["consecutive_failures"] == 0 and snap["ejected_until"] is None
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-homellm-backend"] == "tiny/p"
    assert gw.gw.served_by == {"tiny/b": 4, "tiny/p": 1}


def test_fake_ejected_stays_out_while_health_fails(harness: Harness) -> None:
    flaky = harness.fake(name="fake-flaky", die_after=0)  # drops every connection: no answer
    gw = harness.gateway([info(flaky, "tiny/p")], fail_threshold=1, cooldown_s=0.5)
    with gw.http() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 502
    flaky.healthy = False
    assert gw.state("tiny/p")["state"] == "ejected"
    gw.wait_state("tiny/p", "down")  # cooldown over, but the check fails: still out
    flaky.die_after, flaky.healthy = None, True
    gw.wait_state("tiny/p", "ready")


def test_fake_success_resets_consecutive_failures(harness: Harness) -> None:
    flaky = harness.fake(name="fake-flaky", die_after=0)
    gw = harness.gateway([info(flaky, "tiny/p")], fail_threshold=2, max_attempts=1)
    with gw.http() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 502
        assert gw.state("tiny/p")["consecutive_failures"] == 1
        flaky.die_after = None
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        flaky.die_after = 0
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 502
    snap = gw.state("tiny/p")
    assert snap["state"] == "ready" and snap["consecutive_failures"] == 1
    assert snap["failures"] == 2 and snap["successes"] == 1 and snap["requests"] == 3
    assert snap["last_error"].startswith("ServerDisconnectedError")


def test_fake_5xx_answers_alone_never_eject(harness: Harness) -> None:
    """An engine that answers 5xx is alive: alone (or with every peer answering the same), the
    request is at fault and no backend is counted; the client gets the engine's message."""
    a = harness.fake(name="a", fail_status=500, fail_body=b"Internal Server Error")
    b = harness.fake(name="b", fail_status=500, fail_body=b"Internal Server Error")
    gw = harness.gateway([info(a, "tiny/a"), info(b, "tiny/b", "backup")], fail_threshold=1,
                         max_attempts=3)
    with gw.http() as http:
        for _ in range(4):
            response = http.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 500
            assert response.headers["x-homellm-attempts"] == "2"  # retried once, on the peer
            error = response.json()["error"]
            assert error["type"] == "server_error" and "Internal Server Error" in error["message"]
    for name in ("tiny/a", "tiny/b"):
        snap = gw.state(name)
        assert snap["state"] == "ready" and snap["failures"] == 0, snap
    assert a.requests == 4 and b.requests == 4


def test_fake_5xx_counted_when_a_peer_serves_the_same_request(harness: Harness) -> None:
    flaky = harness.fake(name="flaky", fail_status=500)
    spare = harness.fake(name="spare")
    gw = harness.gateway([info(flaky, "tiny/p"), info(spare, "tiny/b", "backup")],
                         fail_threshold=1, cooldown_s=30)
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200 and response.headers["x-homellm-attempts"] == "2"
    snap = gw.state("tiny/p")
    assert snap["state"] == "ejected" and snap["failures"] == 1
    assert "tiny/b served" in snap["last_error"]


def test_fake_refused_marks_down_then_back_when_restarted(harness: Harness) -> None:
    fake, spare = harness.fake(name="fake-crashing"), harness.fake(name="spare")
    gw = harness.gateway([info(fake, "tiny/p"), info(spare, "tiny/b", "backup")], interval_s=30)
    port = fake.port
    harness.stop_fake(fake)  # the engine was SIGKILLed: connection refused
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=CHAT)
        assert response.headers["x-homellm-attempts"] == "2"
        snap = gw.state("tiny/p")
        assert snap["state"] == "down" and "ClientConnectorError" in (snap["last_error"] or "")
        response = http.post("/v1/chat/completions", json=CHAT)
        assert response.headers["x-homellm-attempts"] == "1"  # no more tries on the dead port
        restarted = FakeBackend(name="fake-restarted", port=port)
        harness.lt.run(restarted.start())
        harness.fakes.append(restarted)
        assert gw.state("tiny/p")["state"] == "down"  # the next interval is 30 s away...
        assert harness.lt.run(gw.gw.check_health("tiny/p")) == {"tiny/p": True}  # ...or now
        assert gw.state("tiny/p")["state"] == "ready"
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-homellm-backend"] == "tiny/p"
    assert restarted.requests == 1


def test_fake_starting_until_first_healthy_check(harness: Harness) -> None:
    fake = harness.fake(name="fake-loading", healthy=False)
    gw = harness.gateway([info(fake, "tiny/p")], wait_ready=[])
    wait_until(lambda: fake.health_checks >= 2, what="health checks")
    assert gw.state("tiny/p")["state"] == "starting"
    assert "503" in (gw.state("tiny/p")["last_error"] or "")
    fake.healthy = True
    gw.wait_state("tiny/p", "ready")


def test_fake_first_check_is_immediate(harness: Harness) -> None:
    fake = harness.fake(name="fake-a")
    started = time.monotonic()
    gw = harness.gateway([info(fake, "tiny/p")], interval_s=30)  # waits for ready
    assert time.monotonic() - started < 2
    assert fake.health_checks == 1
    snap = gw.gw.snapshot()[0]
    assert set(snap) == {
        "name",
        "model",
        "role",
        "state",
        "drained",
        "outstanding",
        "consecutive_failures",
        "requests",
        "successes",
        "failures",
        "last_error",
        "ejected_until",
    }


def test_fake_health_check_timeout_marks_down(harness: Harness) -> None:
    fake = harness.fake(name="fake-a")
    gw = harness.gateway([info(fake, "tiny/p")], timeout_s=0.2)
    fake.health_delay_s = 30  # /health stops answering
    gw.wait_state("tiny/p", "down", timeout=3)
    assert "timed out after 0.2 s" in (gw.state("tiny/p")["last_error"] or "")
    fake.health_delay_s = 0
    gw.wait_state("tiny/p", "ready", timeout=3)
