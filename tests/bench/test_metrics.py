"""Metrics from hand-made records; every expectation below was worked out by hand (comments)."""

from __future__ import annotations

import pytest

from homellm.bench import metrics as m
from homellm.bench.records import RequestRecord
from homellm.errors import ConfigError


def rec(index: int, sent: float, first: float | None = None, chunks: list[float] | None = None,
        *, sched: float | None = None, done: float | None = None, out: int | None = None,
        source: str | None = "usage", usage: int | None = None, prompt: int | None = None,
        kind: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, scheduled_at=sent if sched is None else sched, sent_at=sent,
                         first_at=first, chunk_times=list(chunks or []), done_at=done,
                         prompt_tokens=prompt, output_tokens=out,
                         token_source=source if out is not None else None,  # type: ignore[arg-type]
                         usage_output_tokens=usage, error_kind=kind)


def sample_run() -> list[RequestRecord]:
    return [
        # A: TTFT 100 ms, E2EL 170 ms, TPOT 70/3 = 23.333 ms, ITL 20, 40, 10 ms, send lag 10 ms
        rec(0, 0.010, 0.110, [0.110, 0.130, 0.170, 0.180], sched=0.0, done=0.185, out=4,
            usage=4, prompt=10),
        # B: 6 tokens in 2 messages: TTFT 200, E2EL 300, TPOT 100/5 = 20, ITL 100, per token 20
        rec(1, 1.000, 1.200, [1.200, 1.300], out=6, usage=6, prompt=20),
        # C: one token: TTFT 50, E2EL 50, no TPOT, no ITL; counted by the tokenizer
        rec(2, 2.000, 2.050, [2.050], out=1, source="tokenizer", prompt=5),
        # failures: send lag of D is 100 ms
        rec(3, 3.000, sched=2.900, kind="http_5xx"),
        rec(4, 3.500, kind="timeout"),
        rec(5, 3.600, kind="cancelled"),
    ]


def test_per_request_values() -> None:
    a, b, c, d, *_ = sample_run()
    assert a.ttft == pytest.approx(0.100)
    assert m.e2el(a) == pytest.approx(0.170)
    assert m.tpot(a) == pytest.approx(0.070 / 3)
    assert a.itls == pytest.approx([0.020, 0.040, 0.010])
    assert m.itl_per_token(a) == pytest.approx([0.020, 0.040, 0.010])  # one token per message
    assert m.tpot(b) == pytest.approx(0.020)
    assert m.itl_per_token(b) == pytest.approx([0.020])  # 100 ms gap carried 5 decode tokens
    assert m.tpot(c) is None and c.itls == [] and m.itl_per_token(c) == []
    assert m.e2el(d) is None and not m.is_success(d)


def test_aggregates() -> None:
    res = m.compute_metrics(sample_run(), duration=4.0)
    assert (res["completed"], res["failed"]) == (3, 3)
    assert res["errors_by_kind"] == {"cancelled": 1, "http_5xx": 1, "timeout": 1}
    # tokens: in 10 + 20 + 5 = 35, out 4 + 6 + 1 = 11 (failures count nothing)
    assert (res["total_input_tokens"], res["total_output_tokens"]) == (35, 11)
    assert res["request_throughput"] == pytest.approx(0.75)     # 3 / 4 s
    assert res["output_throughput"] == pytest.approx(2.75)      # 11 / 4 s
    assert res["total_token_throughput"] == pytest.approx(11.5)  # 46 / 4 s
    # TTFT [100, 200, 50]: mean 116.667, median 100, population std sqrt(11666.67/3) = 62.361
    assert res["mean_ttft_ms"] == pytest.approx(116.6667, abs=1e-3)
    assert res["median_ttft_ms"] == pytest.approx(100.0)
    assert res["std_ttft_ms"] == pytest.approx(62.361, abs=1e-3)
    assert (res["min_ttft_ms"], res["max_ttft_ms"]) == pytest.approx((50.0, 200.0))
    # linear interpolation on [50, 100, 200]: p90 at rank 1.8 → 180, p99 at rank 1.98 → 198
    assert res["p90_ttft_ms"] == pytest.approx(180.0)
    assert res["p99_ttft_ms"] == pytest.approx(198.0)
    # TPOT [23.333, 20] (the one-token request is left out): mean 21.667
    assert res["mean_tpot_ms"] == pytest.approx(21.6667, abs=1e-3)
    # ITL per message, pooled [20, 40, 10, 100]: mean 42.5, median 30
    assert res["mean_itl_ms"] == pytest.approx(42.5)
    assert res["median_itl_ms"] == pytest.approx(30.0)
    # ITL per token [20, 40, 10, 20]: mean 22.5
    assert res["mean_itl_per_token_ms"] == pytest.approx(22.5)
    # E2EL [170, 300, 50]: mean 173.333
    assert res["mean_e2el_ms"] == pytest.approx(173.3333, abs=1e-3)
    # send lag over all six sent requests [10, 0, 0, 100, 0, 0]: mean 18.333, max 100
    assert res["mean_send_lag_ms"] == pytest.approx(18.3333, abs=1e-3)
    assert res["max_send_lag_ms"] == pytest.approx(100.0)
    # vLLM's peak: messages per 1-s bucket from the first send (0.01): A's 4 in bucket 0
    assert res["max_output_tokens_per_s"] == 4.0
    assert res["max_concurrent_requests"] == 1  # the three successes never overlap
    assert res["request_goodput"] is None and res["good_requests"] is None


def test_token_accounting() -> None:
    acct = m.compute_metrics(sample_run(), duration=4.0)["token_accounting"]
    assert acct["sources"] == {"usage": 2, "tokenizer": 1, "chunks": 0}
    # A: usage 4 = 4 messages; B: usage 6 ≠ 2 messages; C has no usage
    assert (acct["usage_vs_chunks_checked"], acct["usage_vs_chunks_disagree"]) == (2, 1)
    assert acct["usage_vs_chunks_disagree_fraction"] == pytest.approx(0.5)
    # tokens per message: A 1, B 3, C 1 → mean 5/3
    assert acct["mean_tokens_per_chunk"] == pytest.approx(5 / 3)


def test_missing_token_count_falls_back_to_messages() -> None:
    r = rec(0, 0.0, 0.1, [0.1, 0.2, 0.3])
    assert (m.output_len(r), m.token_source(r)) == (3, "chunks")


@pytest.mark.parametrize(("slo", "good"), [
    ("ttft=150ms", 2),            # A 100 ✓, B 200 ✗, C 50 ✓
    ("tpot=21ms", 2),             # A 23.3 ✗, B 20 ✓, C one token counts as 0 ✓
    ("e2el=100ms", 1),            # A 170 ✗, B 300 ✗, C 50 ✓
    ("ttft=250ms,tpot=21ms", 2),  # A ✗ (tpot), B ✓, C ✓
    ("ttft=150ms,tpot=25ms,e2el=0.2s", 2),  # A ✓, B ✗, C ✓
    ("ttft=0.1", 0),              # bare number is ms: 0.1 ms, nobody
])
def test_goodput(slo: str, good: int) -> None:
    res = m.compute_metrics(sample_run(), duration=4.0, slos=m.parse_slos(slo))
    assert res["good_requests"] == good
    assert res["request_goodput"] == pytest.approx(good / 4.0)


def test_slo_boundary_is_inclusive() -> None:
    # A's TTFT is exactly 100 ms: vLLM's test is value <= SLO
    a = rec(0, 0.0, 0.1, [0.1])
    assert m.meets_slos(a, {"ttft": 0.1})


def test_parse_slos() -> None:
    assert m.parse_slos("ttft=500ms,tpot=50ms,e2el=2s") == pytest.approx(
        {"ttft": 0.5, "tpot": 0.05, "e2el": 2.0})
    assert m.parse_slos("ttft:300 tpot=250us") == pytest.approx({"ttft": 0.3, "tpot": 0.00025})
    for bad in ("", "itl=5ms", "ttft=fast", "ttft=5min", "ttft"):
        with pytest.raises(ConfigError):
            m.parse_slos(bad)


def test_percentile_selection() -> None:
    assert m.parse_percentiles("25, 99.9,25") == [25.0, 99.9]
    for bad in ("0", "101", "x", ""):
        with pytest.raises(ConfigError):
            m.parse_percentiles(bad)
    res = m.compute_metrics(sample_run(), duration=4.0, percentiles=[25.0, 99.9])
    assert res["p25_ttft_ms"] == pytest.approx(75.0)  # rank 0.5 on [50, 100, 200]
    assert "p99.9_ttft_ms" in res and "p99_ttft_ms" not in res and "p90_ttft_ms" not in res


def test_zero_successes_and_zero_records() -> None:
    failed = [r for r in sample_run() if r.error_kind]
    res = m.compute_metrics(failed, duration=4.0, slos={"ttft": 1.0})
    assert (res["completed"], res["failed"]) == (0, 3)
    assert res["request_throughput"] == 0.0 and res["request_goodput"] == 0.0
    assert res["mean_ttft_ms"] is None and res["p99_e2el_ms"] is None
    assert res["mean_send_lag_ms"] is not None  # the client side still has figures
    assert res["token_accounting"]["usage_vs_chunks_disagree_fraction"] is None
    empty = m.compute_metrics([], duration=0.0)
    assert empty["completed"] == 0 and empty["request_throughput"] is None
    assert empty["steady_state"]["duration"] is None


def test_ok_without_choices_is_a_malformed_failure() -> None:
    res = m.compute_metrics([rec(0, 0.0, None, [], done=0.5)], duration=1.0)
    assert (res["completed"], res["errors_by_kind"]) == (0, {"malformed": 1})


def closed_loop() -> list[RequestRecord]:
    # target concurrency 2; each request sends when another ends (same instant)
    return [
        rec(0, 0.0, 0.5, [0.5, 1.0], out=2, prompt=10),
        rec(1, 0.5, 1.5, [1.5, 2.0], out=4, prompt=10),
        rec(2, 1.0, 2.0, [2.0, 3.0], out=2, prompt=10),
        rec(3, 2.0, 3.0, [3.0, 3.5], out=2, prompt=10),
    ]


def test_steady_window() -> None:
    # two in flight from 0.5; last send 2.0; first end after it is r2's at 3.0
    assert m.steady_window(closed_loop(), 2) == (0.5, 3.0)
    assert m.steady_window(closed_loop(), 3) is None  # never 3 in flight
    assert m.steady_window(closed_loop(), None) == (0.0, 2.0)  # open loop: first to last send
    assert m.steady_window([], 2) is None


def test_steady_state_throughput() -> None:
    st = m.compute_metrics(closed_loop(), duration=3.5, max_concurrency=2)["steady_state"]
    assert (st["window_start"], st["window_end"], st["duration"]) == (0.5, 3.0, 2.5)
    # ended in [0.5, 3.0): r0 (1.0), r1 (2.0) → 2 / 2.5 s
    assert st["request_throughput"] == pytest.approx(0.8)
    # tokens by message time: r0 1+1, r1 2+2, r2 1 (at 2.0; 3.0 is outside), r3 none → 7 / 2.5
    assert st["output_throughput"] == pytest.approx(2.8)
    # prompts whose first message is in the window: r0, r1, r2 → 30; (7 + 30) / 2.5
    assert st["total_token_throughput"] == pytest.approx(14.8)
    # the whole-run figure includes ramp-up and drain: 2 + 4 + 2 + 2 = 10 tokens / 3.5 s
    assert m.compute_metrics(closed_loop(), duration=3.5)["output_throughput"] == \
        pytest.approx(10 / 3.5)


def test_explicit_window_overrides() -> None:
    st = m.compute_metrics(closed_loop(), duration=3.5, window=(1.0, 2.0))["steady_state"]
    # ended in [1.0, 2.0): r0 → 1 / 1 s; tokens at 1.0 (r0: 1) and 1.5 (r1: 2) → 3
    assert (st["request_throughput"], st["output_throughput"]) == pytest.approx((1.0, 3.0))


def test_timeline() -> None:
    tl = m.timeline(closed_loop(), 0.0, 4.0)
    # tokens: b0 r0@0.5; b1 r0@1.0 + r1@1.5 (2); b2 r1@2.0 (2) + r2@2.0; b3 r2@3.0 + r3@3.0,3.5
    assert tl["output_tokens"] == pytest.approx([1.0, 3.0, 3.0, 3.0])
    assert tl["completed_requests"] == [0, 1, 1, 2]
