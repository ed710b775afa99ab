"""The load loop of one worker (an asyncio loop with one aiohttp session), run in the caller's
process or in spawned worker processes that hand their records back to the parent.

Clocks: every time is ``time.perf_counter()``. On Linux that is ``clock_gettime(CLOCK_MONOTONIC)``
(``time.get_clock_info("perf_counter")``), one clock for every process on the machine, so a
worker's times need no conversion; on other systems the parent measures the offset with a
ping-pong over the pipe and shifts the worker's records by it (error ≤ half the round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from homellm.bench.client import Target, Timeouts, make_session, send_request
from homellm.bench.records import RequestRecord

LAG_TICK_S = 0.01  # the loop-lag probe: a 10 ms timer; its lateness is the loop's lag
SHARED_CLOCK = "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation


@dataclass
class WorkerPlan:
    worker: int
    target: Target
    timeouts: Timeouts
    bodies: list[tuple[bytes, int | None]]  # request body and prompt tokens, by index % len
    concurrency: int | None = None          # closed loop: this many slots
    cap: int | None = None                  # open loop: at most this many in flight
    arrivals: list[tuple[int, float]] | None = None  # open loop: (index, offset from start)
    warmup: int = 0


@dataclass
class WorkerResult:
    worker: int
    records: list[RequestRecord] = field(default_factory=list)
    warmup_done: int = 0
    warmup_failed: int = 0
    lag_samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    cap_waits: int = 0  # open loop: requests that waited for a slot under the cap


@dataclass
class Stats:
    """Live counters of one worker, for the progress display."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    output_tokens: int = 0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.sent, self.done, self.failed, self.output_tokens


class LocalCounter:
    """Hands out request indices up to ``limit`` (None: no limit) within one process."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.next = limit, 0

    def take(self) -> int | None:
        if self.limit is not None and self.next >= self.limit:
            return None
        self.next += 1
        return self.next - 1


class SharedCounter:
    """The same across processes (closed loop: whichever worker has a free slot takes the next)."""

    def __init__(self, value: Any, limit: int | None) -> None:
        self.value, self.limit = value, limit

    def take(self) -> int | None:
        with self.value.get_lock():
            i = self.value.value
            if self.limit is not None and i >= self.limit:
                return None
            self.value.value = i + 1
            return i


StartFn = Callable[[], Awaitable[tuple[float, float | None] | None]]


async def run_worker(plan: WorkerPlan, counter: LocalCounter | SharedCounter, start: StartFn,
                     stop: asyncio.Event, stats: Stats) -> WorkerResult:
    """Warm up, wait for ``start`` (→ start time and deadline, or None to quit), run the load
    until the counter, the arrivals or the deadline run out or ``stop`` is set; then cancel
    what is still in flight (recorded as ``cancelled``)."""
    result = WorkerResult(plan.worker)
    limit = (plan.concurrency or 0) if plan.arrivals is None else (plan.cap or 0)
    async with make_session(limit, plan.timeouts) as session:
        await _warmup(plan, session, result)
        begin = await start()
        if begin is None:
            return result
        start_at, deadline = begin
        lags: list[float] = []
        monitor = asyncio.create_task(_lag_monitor(lags))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        inflight: set[asyncio.Task[None]] = set()

        async def one(index: int, scheduled_at: float) -> None:
            body, prompt_tokens = plan.bodies[index % len(plan.bodies)]
            rec = RequestRecord(index, scheduled_at, 0.0, prompt_tokens=prompt_tokens,
                                worker=plan.worker)
            result.records.append(rec)
            stats.sent += 1
            try:
                await send_request(session, plan.target, body, rec, plan.timeouts)
            finally:
                stats.done += 1
                stats.failed += rec.error_kind is not None
                stats.output_tokens += rec.usage_output_tokens or len(rec.chunk_times)

        await _sleep_until(start_at, stop)
        if plan.arrivals is None:
            driver = _closed_loop(plan, counter, one, start_at, deadline, stop, inflight)
        else:
            driver = _open_loop(plan, one, start_at, deadline, stop, inflight, result)
        await _until_deadline(driver, deadline, stop)
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        monitor.cancel()
        result.cpu_s = time.process_time() - cpu0
        result.wall_s = time.perf_counter() - wall0
        result.lag_samples = lags
    result.records.sort(key=lambda r: r.index)
    return result


async def _until_deadline(driver: Awaitable[None], deadline: float | None,
                          stop: asyncio.Event) -> None:
    task = asyncio.ensure_future(driver)
    stopper = asyncio.create_task(stop.wait())
    timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
    await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, stopper):
        t.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)


async def _closed_loop(plan: WorkerPlan, counter: LocalCounter | SharedCounter,
                       one: Callable[[int, float], Awaitable[None]], start_at: float,
                       deadline: float | None, stop: asyncio.Event,
                       inflight: set[asyncio.Task[None]]) -> None:
    async def slot() -> None:
        free_at = start_at  # a slot's next request is due the moment its last one ended
        while not stop.is_set() and (deadline is None or time.perf_counter() < deadline):
            index = counter.take()
            if index is None:
                return
            task = asyncio.create_task(one(index, free_at))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            # shielded: a deadline cancels the slot, and the runner then cancels (and so
            # records) the request itself
            await asyncio.shield(task)
            free_at = time.perf_counter()

    await asyncio.gather(*(slot() for _ in range(plan.concurrency or 1)))


async def _open_loop(plan: WorkerPlan, one: Callable[[int, float], Awaitable[None]],
                     start_at: float, deadline: float | None, stop: asyncio.Event,
                     inflight: set[asyncio.Task[None]], result: WorkerResult) -> None:
    slots = asyncio.Semaphore(plan.cap) if plan.cap else None
    freed_at = [start_at]

    async def capped(index: int, due: float) -> None:
        assert slots is not None
        waited = slots.locked()
        async with slots:
            result.cap_waits += waited
            # under the cap the request is due when a slot frees, not at its arrival
            await one(index, max(due, freed_at[0]) if waited else due)
            freed_at[0] = time.perf_counter()

    for index, offset in plan.arrivals or []:
        due = start_at + offset
        if deadline is not None and due >= deadline:
            break
        await _sleep_until(due, stop)
        if stop.is_set():
            break
        task = asyncio.create_task(capped(index, due) if slots else one(index, due))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    while inflight:
        await asyncio.gather(*list(inflight), return_exceptions=True)


async def _warmup(plan: WorkerPlan, session: Any, result: WorkerResult) -> None:
    """A few requests before the measured run (connections, server caches); not recorded."""
    if plan.warmup <= 0:
        return
    slots = asyncio.Semaphore(max(1, min(plan.warmup, plan.concurrency or plan.cap or 8)))

    async def one(k: int) -> None:
        async with slots:
            body, _ = plan.bodies[-1 - k % len(plan.bodies)]
            rec = RequestRecord(-1 - k, time.perf_counter(), 0.0, worker=plan.worker)
            await send_request(session, plan.target, body, rec, plan.timeouts)
            result.warmup_done += 1
            result.warmup_failed += rec.error_kind is not None

    await asyncio.gather(*(one(k) for k in range(plan.warmup)))


async def _sleep_until(when: float, stop: asyncio.Event) -> None:
    """uvloop's timers have 1 ms granularity and may wake up to 1 ms early; the record keeps
    the true times (a send lag down to -1 ms), spinning to the exact moment would cost CPU."""
    delay = when - time.perf_counter()
    if delay > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _lag_monitor(samples: list[float]) -> None:
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        samples.append(max(0.0, time.perf_counter() - t0 - LAG_TICK_S))


# --- the worker process side ----------------------------------------------------------------


def process_main(conn: Connection, plan: WorkerPlan, value: Any, limit: int | None) -> None:
    """Entry point of a spawned worker. Ctrl-C reaches the whole process group: the worker
    ignores it and waits for the parent's ``stop``, so records are never lost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while conn.recv() == "ping":  # clock handshake, until "go"
        conn.send(time.perf_counter())
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_child(conn, plan, SharedCounter(value, limit)))
    else:
        uvloop.run(_child(conn, plan, SharedCounter(value, limit)))


async def _child(conn: Connection, plan: WorkerPlan, counter: SharedCounter) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started: asyncio.Future[tuple[float, float | None] | None] = loop.create_future()
    stats = Stats()

    def on_message() -> None:
        while conn.poll():
            msg = conn.recv()
            if msg[0] == "start" and not started.done():
                started.set_result((msg[1], msg[2]))
            elif msg[0] == "stop":
                stop.set()
                if not started.done():
                    started.set_result(None)

    loop.add_reader(conn.fileno(), on_message)

    async def start() -> tuple[float, float | None] | None:
        conn.send(("ready",))
        return await started

    async def report() -> None:
        while True:
            await asyncio.sleep(0.25)
            conn.send(("stats", stats.as_tuple()))

    reporter = asyncio.create_task(report())
    result = await run_worker(plan, counter, start, stop, stats)
    reporter.cancel()
    loop.remove_reader(conn.fileno())
    conn.send(("stats", stats.as_tuple()))
    conn.send(("done", result))
