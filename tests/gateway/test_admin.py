"""The admin API against FAKE backends (homellm.gateway.fakebackend): key checks, replica list,
drain under load (nothing lost, nothing new sent after the drain returns), undrain, restart."""

from __future__ import annotations

import threading
import time

import httpx

from homellm.gateway.admin import ReplicaControl
from tests.gateway.conftest import MODEL, Harness, info, wait_until

KEY = "hla-test-admin-key"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
        "stream": True}


def admin(gw, method: str, path: str, key: str | None = KEY) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with gw.http() as http:
        return http.request(method, path, headers=headers, timeout=30)


def test_admin_api_needs_the_admin_key(harness: Harness) -> None:
    fake = harness.fake(name="a")
    gw = harness.gateway([info(fake, "tiny/0")])
    disabled = admin(gw, "GET", "/admin/replicas")
    assert disabled.status_code == 403 and disabled.json()["error"]["code"] == "admin_disabled"
    gw.gw.admin_key = KEY
    for key in (None, "wrong", KEY + "x"):
        response = admin(gw, "GET", "/admin/replicas", key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_admin_key"
    rows = admin(gw, "GET", "/admin/replicas").json()["replicas"]
    assert [(r["name"], r["display_state"], r["drained"]) for r in rows] == [
        ("tiny/0", "ready", False)]
    assert admin(gw, "POST", "/admin/replicas/tiny/7/drain").status_code == 404


def test_drain_under_load_loses_nothing_and_sends_nothing_new(harness: Harness) -> None:
    a, b = harness.fake(name="a", tokens=20, delay_ms=5), harness.fake(name="b", tokens=20,
                                                                        delay_ms=5)
    gw = harness.gateway([info(a, "tiny/0"), info(b, "tiny/1")])
    gw.gw.admin_key = KEY
    results: list[tuple[int, bool]] = []
    stop = threading.Event()

    def client() -> None:
        with gw.http() as http:
            while not stop.is_set():
                with http.stream("POST", "/v1/chat/completions", json=CHAT, timeout=30) as r:
                    body = r.read().decode()
                results.append((r.status_code, body.rstrip().endswith("[DONE]")
                                and '"error"' not in body))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: a.active > 0, what="work in flight on the replica to drain")
        drained = admin(gw, "POST", "/admin/replicas/tiny/0/drain").json()
        assert drained == {"replica": "tiny/0", "drained": True, "in_flight": 0,
                           "complete": True}
        seen = a.requests
        assert a.active == 0
        time.sleep(0.7)
        assert a.requests == seen, "a request reached the replica after its drain returned"
        row = admin(gw, "GET", "/admin/replicas").json()["replicas"][0]
        assert row["display_state"] == "draining"
        assert admin(gw, "POST", "/admin/replicas/tiny/0/undrain").json()["drained"] is False
        time.sleep(0.5)
        assert a.requests > seen  # traffic came back
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert results and all(status == 200 and ok for status, ok in results)


def test_restart_goes_through_the_replica_control(harness: Harness) -> None:
    fake = harness.fake(name="a")
    gw = harness.gateway([info(fake, "tiny/0")])
    gw.gw.admin_key = KEY
    assert admin(gw, "POST", "/admin/replicas/tiny/0/restart").status_code == 409
    restarted: list[str] = []

    async def restart(name: str) -> None:
        restarted.append(name)

    gw.gw.control = ReplicaControl(
        status=lambda: {"tiny/0": {"process_state": "failed", "restarts": 5}}, restart=restart)
    assert admin(gw, "POST", "/admin/replicas/tiny/0/restart").json()["restarted"] is True
    assert restarted == ["tiny/0"]
    row = admin(gw, "GET", "/admin/replicas").json()["replicas"][0]
    assert row["display_state"] == "failed" and row["restarts"] == 5
