"""Load patterns over real loopback HTTP against the FAKE backend (homellm.gateway.fakebackend,
not an engine): arrivals, concurrency limits, bounds, warm-up, failures by cause, Ctrl-C,
worker processes, calibration. No speed thresholds: only counts, orderings and statistics."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from homellm.bench.client import EndpointError, Timeouts
from homellm.bench.load import BenchOptions, LoadRun, arrival_offsets, calibrate, run_load
from homellm.bench.metrics import compute_metrics
from homellm.bench.records import RequestRecord
from homellm.bench.workload import WorkloadSpec
from homellm.gateway.fakebackend import FakeBackend
from tests.conftest import free_port

SMALL = WorkloadSpec(input_len=8, output_len=6, num_prompts=16)


class CountingFake(FakeBackend):
    """The fake backend, also remembering the most completions it served at once."""

    max_active = 0

    async def _answer(self, *args: Any) -> bool:
        self.max_active = max(self.max_active, self.active)
        return await super()._answer(*args)


def on_fake(test: Callable[[CountingFake], Awaitable[Any]], timeout: float = 20,
            **knobs: Any) -> Any:
    async def go() -> Any:
        fake = CountingFake(name="tiny", **knobs)
        await fake.start()
        try:
            return await asyncio.wait_for(test(fake), timeout)
        finally:
            await fake.stop()
    return asyncio.run(go())


def opts(fake: FakeBackend, **kw: Any) -> BenchOptions:
    return BenchOptions(url=fake.base_url, workload=kw.pop("workload", SMALL),
                        timeouts=Timeouts(connect_s=2, first_s=10, between_s=10), **kw)


def peak_in_flight(records: list[RequestRecord]) -> int:
    events = sorted([(r.sent_at, 1) for r in records] + [(r.done_at or r.sent_at, -1)
                                                          for r in records])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def test_gamma_arrivals_have_the_asked_mean_and_shape() -> None:
    rate = 20.0
    for burstiness in (1.0, 0.5, 4.0):
        t = arrival_offsets(rate, burstiness, np.random.default_rng(1), 20_000, None)
        gaps = np.diff([0.0, *t])
        assert len(t) == 20_000 and np.all(gaps >= 0)
        assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
        # Gamma(k, θ): squared coefficient of variation = 1/k (1 for Poisson)
        assert (gaps.var() / gaps.mean() ** 2) == pytest.approx(1 / burstiness, rel=0.15)
    even = arrival_offsets(4.0, math.inf, np.random.default_rng(0), 5, None)
    assert even == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25])
    same = [arrival_offsets(3.0, 1.0, np.random.default_rng(9), 50, None) for _ in range(2)]
    assert same[0] == same[1]
    horizon = arrival_offsets(100.0, 1.0, np.random.default_rng(2), None, 2.0)
    assert max(horizon) < 2.0 and 120 < len(horizon) < 280
    assert arrival_offsets(math.inf, 1.0, np.random.default_rng(0), 3, None) == [0.0] * 3


@pytest.mark.parametrize("workers", [1, 2])
def test_closed_loop_never_exceeds_concurrency(workers: int) -> None:
    async def go(fake: CountingFake) -> tuple[LoadRun, int, int]:
        run = await run_load(opts(fake, concurrency=3, num_requests=24, warmup=3,
                                  workers=workers))
        return run, fake.max_active, fake.requests

    run, max_active, served = on_fake(go, tokens=6, delay_ms=10)
    assert max_active == 3  # counted at the server
    assert peak_in_flight(run.records) <= 3
    assert [r.index for r in run.records] == list(range(24))
    assert all(r.ok for r in run.records)
    assert served == 1 + 3 + 24  # the first check request + warm-up + the run
    assert run.warmup_done == 3 and run.overhead.workers == workers
    assert {r.worker for r in run.records} == set(range(workers))
    assert all(r.token_source == "usage" and r.output_tokens == 6 for r in run.records)


def test_open_loop_rate_with_a_cap() -> None:
    async def go(fake: CountingFake) -> tuple[LoadRun, int]:
        run = await run_load(opts(fake, rate=200.0, concurrency=2, num_requests=20, seed=4))
        return run, fake.max_active

    run, max_active = on_fake(go, tokens=6, delay_ms=10)
    assert len(run.records) == 20 and all(r.ok for r in run.records)
    assert max_active <= 2 and peak_in_flight(run.records) <= 2
    assert run.overhead.cap_waits > 0  # the cap held requests back
    assert all(r.sent_at >= r.scheduled_at - 0.002 for r in run.records)


def test_duration_bound_cancels_what_is_in_flight() -> None:
    async def go(fake: CountingFake) -> LoadRun:
        return await run_load(opts(fake, concurrency=2, duration_s=0.5,
                                   workload=WorkloadSpec(input_len=4, output_len=400,
                                                         num_prompts=4)))

    started = time.perf_counter()
    run = on_fake(go, tokens=400, delay_ms=20)
    assert time.perf_counter() - started < 15
    assert len(run.records) == 2
    assert {r.error_kind for r in run.records} == {"cancelled"}
    assert all(r.chunk_times for r in run.records)  # it kept what streamed before the end


def test_stop_returns_partial_records() -> None:
    async def go(fake: CountingFake) -> LoadRun:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.6, stop.set)
        return await run_load(opts(fake, concurrency=2, num_requests=500), stop=stop)

    run = on_fake(go, tokens=6, delay_ms=30)
    kinds = [r.error_kind for r in run.records]
    assert run.interrupted and 0 < len(run.records) < 500
    assert kinds.count(None) >= 1 and 1 <= kinds.count("cancelled") <= 2
    assert run.ended_at >= max(r.done_at or 0 for r in run.records)


def test_failures_are_counted_by_cause_and_the_run_goes_on() -> None:
    async def go(fake: CountingFake) -> LoadRun:
        loop = asyncio.get_running_loop()
        loop.call_later(0.4, setattr, fake, "fail_status", 503)
        loop.call_later(0.8, setattr, fake, "fail_status", None)
        return await run_load(opts(fake, concurrency=2, duration_s=1.3))

    run = on_fake(go, tokens=4, delay_ms=25)
    summary = compute_metrics(run.records, duration=run.duration_s)
    assert summary["completed"] > 0
    assert summary["errors_by_kind"].get("http_5xx", 0) > 0
    assert set(summary["errors_by_kind"]) <= {"http_5xx", "cancelled"}
    late = [r for r in run.records if r.sent_at > run.started_at + 0.9]
    assert any(r.ok for r in late)  # it recovered and kept going


def test_endpoint_that_cannot_work_is_a_one_line_error_before_the_run() -> None:
    options = BenchOptions(url=f"http://127.0.0.1:{free_port()}", model="m", workload=SMALL)
    with pytest.raises(EndpointError, match="cannot reach"):
        asyncio.run(run_load(options))

    async def unauthorized(fake: CountingFake) -> None:
        fake.fail_status = 401
        await run_load(opts(fake, concurrency=1, num_requests=3))

    with pytest.raises(EndpointError, match="first request failed: HTTP 401"):
        on_fake(unauthorized)


def test_worker_processes_share_the_parent_clock() -> None:
    async def go(fake: CountingFake) -> tuple[LoadRun, float, float]:
        before = time.perf_counter()
        run = await run_load(opts(fake, rate=100.0, num_requests=30, workers=2, seed=1))
        return run, before, time.perf_counter()

    run, before, after = on_fake(go, tokens=5, delay_ms=5)
    assert {r.worker for r in run.records} == {0, 1}
    assert [r.index for r in run.records] == list(range(30))
    for r in run.records:
        assert r.ok
        # uvloop's timers have 1 ms granularity and may fire up to 1 ms early
        assert before < run.started_at <= r.scheduled_at < r.sent_at + 0.002
        assert r.sent_at < r.first_at  # type: ignore[operator]
        assert r.first_at <= r.chunk_times[-1] <= r.done_at <= run.ended_at < after  # type: ignore[operator]
        # the open-loop schedule is one list split across workers: even and odd indices
        assert r.worker == r.index % 2
    sends = [r.scheduled_at for r in run.records]
    assert sends == sorted(sends)


def test_calibration_replays_the_load_on_a_loopback_server() -> None:
    async def go(fake: CountingFake) -> dict[str, Any]:
        run = await run_load(opts(fake, concurrency=2, num_requests=10))
        return await calibrate(run, max_requests=10)

    cal = on_fake(go, tokens=6, delay_ms=5)
    assert cal["requests"] == 10 and cal["failed"] == 0
    assert cal["mock_timing_ms"]["messages"] == 7
    assert isinstance(cal["valid"], bool) and cal["overhead"]["workers"] == 1
    assert cal["client_added_ttft_ms_median"] is not None


SCRIPT = """
import asyncio, json, sys, threading
from homellm.bench.load import BenchOptions, run_bench
from homellm.bench.workload import WorkloadSpec
from homellm.gateway.fakebackend import FakeBackend

if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = FakeBackend(name="tiny", tokens=50, delay_ms=10)
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(5)
    seen = []
    def progress(p):
        if not seen:
            seen.append(1)
            print("RUNNING", flush=True)
    run = run_bench(BenchOptions(url=fake.base_url, concurrency=4, num_requests=1000,
                                 workers=2, workload=WorkloadSpec(input_len=4, output_len=50,
                                 num_prompts=8)), on_progress=progress)
    kinds = [r.error_kind for r in run.records]
    print(json.dumps({"interrupted": run.interrupted, "n": len(run.records),
                      "ok": kinds.count(None), "cancelled": kinds.count("cancelled")}))
"""


def test_ctrl_c_stops_and_returns_what_it_has(tmp_path: Any) -> None:
    script = tmp_path / "bench_sigint.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "RUNNING"
        time.sleep(0.8)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and 0 < summary["n"] < 1000
    assert 1 <= summary["cancelled"] <= 4 and summary["ok"] >= 1
    assert summary["ok"] + summary["cancelled"] == summary["n"]
