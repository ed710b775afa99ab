"""Pure logic of the gateway: pool selection, backend state transitions, SSE event splitting.
No network and no fake backend process here (only BackendInfo values naming fake URLs)."""

from __future__ import annotations

import pytest

from homellm.config import GatewayConfig
from homellm.errors import ConfigError
from homellm.gateway.app import Gateway
from homellm.gateway.backends import (
    DOWN,
    EJECTED,
    READY,
    STARTING,
    Backend,
    BackendInfo,
    Pool,
    build_pools,
)
from homellm.gateway.proxy import split_events


def backend(name: str, role: str = "primary", state: str = READY, model: str = "m") -> Backend:
    url = f"http://fake-{name}.invalid"
    b = Backend(BackendInfo(model, name, role, url, url + "/health", model))
    b.state = state
    return b


def test_pick_prefers_ready_primaries_then_backups() -> None:
    p1, p2, b1 = backend("p1"), backend("p2", state=DOWN), backend("b1", "backup")
    pool = Pool("m", [b1, p1, p2])
    assert {pool.pick().name for _ in range(4)} == {"p1"}  # type: ignore[union-attr]
    p1.state = EJECTED
    assert pool.pick() is b1
    b1.state = STARTING
    assert pool.pick() is None


def test_pick_least_outstanding_then_round_robin() -> None:
    a, b, c = backend("a"), backend("b"), backend("c")
    pool = Pool("m", [a, b, c])
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 1
    picks = [pool.pick().name for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(set(picks)) == ["b", "c"] and picks[0] != picks[1]
    b.outstanding = 0
    assert pool.pick() is b


def test_pick_excludes_tried_and_falls_back_to_backup_on_retry() -> None:
    p, bk = backend("p"), backend("bk", "backup")
    pool = Pool("m", [p, bk])
    assert pool.pick([p]) is bk
    assert pool.pick([p, bk]) is None


def test_transitions_active_checks() -> None:
    b = backend("x", state=STARTING)
    assert b.check_failed(0.0, "refused") is None and b.state == STARTING
    t = b.check_passed(0.0)
    assert t is not None and (t.old, t.new) == (STARTING, READY)
    t = b.check_failed(1.0, "HTTP 503")
    assert t is not None and t.new == DOWN and b.last_error == "HTTP 503"
    assert b.check_passed(2.0) is not None and b.state == READY


def test_transitions_ejection_and_cooldown() -> None:
    b = backend("x")
    assert b.request_failed(10.0, "HTTP 500", threshold=2, cooldown_s=5.0) is None
    t = b.request_failed(11.0, "HTTP 500", threshold=2, cooldown_s=5.0)
    assert t is not None and t.new == EJECTED and b.ejected_until == 16.0
    assert b.check_passed(15.9) is None and b.state == EJECTED  # cooldown not over
    assert b.check_failed(15.9, "x") is None and b.state == EJECTED
    assert b.check_passed(16.0) is not None and b.state == READY
    assert b.consecutive_failures == 0 and b.ejected_until is None
    assert b.failures == 2


def test_a_replaced_engine_process_is_not_held_to_the_dead_ones_cooldown() -> None:
    b = backend("x")
    b.request_failed(10.0, "drop", threshold=1, cooldown_s=30.0)
    assert b.state == EJECTED
    t = b.process_replaced()
    assert t is not None and t.new == DOWN and b.ejected_until is None
    assert b.check_passed(11.0) is not None and b.state == READY  # long before 40.0
    assert b.process_replaced() is None and b.state == READY  # a ready backend stays ready


def test_transitions_refused_marks_down_at_once_and_success_resets() -> None:
    b = backend("x")
    t = b.request_failed(0.0, "refused", threshold=5, cooldown_s=1.0, refused=True)
    assert t is not None and t.new == DOWN
    b.state = READY
    b.consecutive_failures = 1
    b.request_succeeded()
    assert b.consecutive_failures == 0 and b.successes == 1


def test_build_pools_and_gateway_validation() -> None:
    pools = build_pools(
        [backend("a", model="m1"), backend("b", model="m2"), backend("c", model="m1")]
    )
    assert {m: [b.name for b in p.backends] for m, p in pools.items()} == {
        "m1": ["a", "c"],
        "m2": ["b"],
    }
    info = BackendInfo("m", "same", "primary", "http://fake.invalid", "http://fake.invalid/h", "m")
    with pytest.raises(ConfigError, match="used twice"):
        Gateway([info, info], GatewayConfig())
    with pytest.raises(ConfigError, match="role"):
        Gateway(
            [BackendInfo("m", "r", "spare", "http://f.invalid", "http://f.invalid", "m")],
            GatewayConfig(),
        )
    gw = Gateway([info], GatewayConfig())
    assert gw.snapshot()[0]["state"] == STARTING and not gw.served_by


@pytest.mark.parametrize(
    ("data", "complete", "rest"),
    [
        (b"data: 1\n\n", b"data: 1\n\n", b""),
        (b"data: 1\n\ndata: 2", b"data: 1\n\n", b"data: 2"),
        (b"data: 1\r\n\r\ndata: 2\r\n", b"data: 1\r\n\r\n", b"data: 2\r\n"),
        (b"data: par", b"", b"data: par"),
        (b"data: 1\r\n\r\n", b"data: 1\r\n\r\n", b""),
    ],
)
def test_split_events(data: bytes, complete: bytes, rest: bytes) -> None:
    assert split_events(data) == (complete, rest)
