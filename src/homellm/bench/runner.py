"""The parent side of a run: start the workers (in this process, or spawned processes), give
them one start time, relay Ctrl-C as ``stop``, collect their records on the parent's clock."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from homellm.bench.workers import (
    SHARED_CLOCK,
    LocalCounter,
    Stats,
    WorkerPlan,
    WorkerResult,
    process_main,
    run_worker,
)
from homellm.errors import HomellmError


class Runner:
    LEAD_S = 0.05  # start a little later than now, so every worker sleeps until the same time

    def __init__(self, plans: list[WorkerPlan], limit: int | None, duration_s: float | None,
                 stop: asyncio.Event, stats: list[Stats]) -> None:
        self.plans, self.limit, self.duration_s = plans, limit, duration_s
        self.stop, self.stats = stop, stats
        self.started_at: float | None = None
        self.offsets: list[float] = [0.0] * len(plans)
        self.dead: list[int] = []  # workers whose process ended without handing back records

    def _deadline(self, start_at: float) -> float | None:
        return None if self.duration_s is None else start_at + self.duration_s

    async def in_process(self) -> list[WorkerResult]:
        async def start() -> tuple[float, float | None] | None:
            if self.stop.is_set():
                return None
            self.started_at = time.perf_counter() + self.LEAD_S
            return self.started_at, self._deadline(self.started_at)

        res = await run_worker(self.plans[0], LocalCounter(self.limit), start, self.stop,
                               self.stats[0])
        return [res]

    async def in_processes(self) -> list[WorkerResult]:
        ctx = multiprocessing.get_context("spawn")
        value = ctx.Value("q", 0)
        conns, procs = [], []
        for plan in self.plans:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=process_main, args=(child, plan, value, self.limit),
                               daemon=True, name=f"homellm-bench-{plan.worker}")
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
        try:
            return await self._drive(conns)
        finally:
            for proc in procs:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
            for conn in conns:
                conn.close()

    async def _drive(self, conns: list[Any]) -> list[WorkerResult]:
        loop = asyncio.get_running_loop()
        try:
            measured = await asyncio.to_thread(lambda: [_handshake(c) for c in conns])
        except (EOFError, OSError) as exc:
            raise HomellmError(f"a bench worker process died while starting ({exc!r}); "
                               "a script that runs the bench needs `if __name__ == "
                               "'__main__':` for --workers > 1") from None
        self.offsets = [0.0 if SHARED_CLOCK else off for off in measured]
        inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()
        for i, conn in enumerate(conns):
            conn.send("go")
            loop.add_reader(conn.fileno(), _reader(i, conn, inbox))
        results: dict[int, WorkerResult] = {}
        ready: set[int] = set()
        stopped = False
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            while len(results) < len(conns):
                get = asyncio.create_task(inbox.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if self.stop.is_set() and not stopped:
                    stopped = True
                    for conn in conns:
                        conn.send(("stop",))
                if not get.done():
                    get.cancel()
                    continue
                i, msg = get.result()
                if msg[0] == "stats":
                    self.stats[i].sent, self.stats[i].done, self.stats[i].failed, \
                        self.stats[i].output_tokens = msg[1]
                elif msg[0] == "done":
                    results[i] = _shift(msg[1], self.offsets[i])
                elif msg[0] == "dead" and i not in results:
                    self.dead.append(self.plans[i].worker)
                    results[i] = WorkerResult(self.plans[i].worker)
                    if self.started_at is None and not stopped:  # the others wait for it
                        stopped = True
                        for j, conn in enumerate(conns):
                            if j not in results:
                                conn.send(("stop",))
                elif msg[0] == "ready":
                    ready.add(i)
                    if len(ready) == len(conns) and not stopped:
                        self.started_at = time.perf_counter() + self.LEAD_S
                        deadline = self._deadline(self.started_at)
                        for j, conn in enumerate(conns):
                            off = self.offsets[j]
                            conn.send(("start", self.started_at - off,
                                       None if deadline is None else deadline - off))
        finally:
            stop_wait.cancel()
            for conn in conns:
                loop.remove_reader(conn.fileno())
        return [results[i] for i in sorted(results)]


def _reader(i: int, conn: Any, inbox: asyncio.Queue[tuple[int, tuple[Any, ...]]]
            ) -> Callable[[], None]:
    def on_readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait((i, conn.recv()))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            inbox.put_nowait((i, ("dead",)))
    return on_readable


def _handshake(conn: Any, rounds: int = 7) -> float:
    """Offset parent − worker clock from the ping with the shortest round trip."""
    best = (math.inf, 0.0)
    for _ in range(rounds):
        t0 = time.perf_counter()
        conn.send("ping")
        tw = conn.recv()
        t1 = time.perf_counter()
        best = min(best, (t1 - t0, (t0 + t1) / 2 - tw))
    return best[1]


def _shift(res: WorkerResult, offset: float) -> WorkerResult:
    if offset:
        for r in res.records:
            r.scheduled_at += offset
            r.sent_at += offset
            r.first_at = None if r.first_at is None else r.first_at + offset
            r.done_at = None if r.done_at is None else r.done_at + offset
            r.chunk_times = [t + offset for t in r.chunk_times]
    return res
