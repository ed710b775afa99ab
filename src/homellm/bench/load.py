"""Load patterns and the benchmark run: closed loop (N concurrent streams), open loop (gamma
arrivals at R req/s, optionally capped), warm-up, request/duration bounds, several worker
processes, client self-measurement, Ctrl-C that keeps what was measured.

Entry points: ``await run_load(options)`` → ``LoadRun``; ``run_bench(options)`` does the same
from sync code and turns SIGINT/SIGTERM into a clean stop.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from homellm.bench.client import (
    Endpoint,
    EndpointError,
    ServerFacts,
    Target,
    Timeouts,
    finalize_tokens,
    make_session,
    normalize_base_url,
    probe_endpoint,
    send_request,
)
from homellm.bench.mockserver import MockTiming, mock_server_process
from homellm.bench.records import RequestRecord
from homellm.bench.runner import Runner
from homellm.bench.selfcheck import ClientOverhead, measure_overhead
from homellm.bench.workers import (
    SHARED_CLOCK,
    Stats,
    WorkerPlan,
)
from homellm.bench.workload import (
    TextTokenizer,
    Workload,
    WorkloadSpec,
    build_workload,
    load_tokenizer,
)
from homellm.errors import ConfigError

T = TypeVar("T")
#: a first request failing for one of these means the run cannot work: stop before it starts
_FATAL_AT_START = ("connect", "http_401", "http_4xx", "malformed")


@dataclass
class BenchOptions:
    url: str
    model: str | None = None           # None: the first model /v1/models lists
    endpoint: Endpoint = "chat"
    api_key: str | None = None
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    tokenizer: str | None = None       # tokenizer.json or a model folder: exact token lengths
    concurrency: int | None = None     # closed loop; with ``rate``: a cap on requests in flight
    rate: float | None = None          # open loop, requests/s (math.inf: all at once)
    burstiness: float = 1.0            # gamma shape: 1 = Poisson, <1 burstier, inf = constant
    num_requests: int | None = None    # None with no duration: one pass over the workload
    duration_s: float | None = None    # stop sending then; requests in flight are cancelled
    warmup: int = 0                    # requests before the measured run, not recorded
    timeouts: Timeouts = field(default_factory=Timeouts)
    workers: int = 1                   # client processes (1: the caller's own event loop)
    seed: int = 0
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    keep_text: bool = False            # keep each request's generated text in its record

    def check(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError("--rate must be > 0 requests/s")
        if not self.burstiness > 0:
            raise ConfigError("--burstiness must be > 0")
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError("--num-requests must be at least 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("--duration must be > 0 seconds")
        if self.workers < 1 or self.warmup < 0:
            raise ConfigError("--workers must be >= 1 and --warmup >= 0")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["api_key"] = "***" if self.api_key else None
        out["workload"]["path"] = str(self.workload.path) if self.workload.path else None
        return out


@dataclass
class Progress:
    """What the live display shows; ``total`` is None for a duration-bound run."""

    sent: int
    done: int
    failed: int
    output_tokens: int
    elapsed_s: float
    total: int | None
    duration_s: float | None

    @property
    def in_flight(self) -> int:
        return self.sent - self.done

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.duration_s is not None:
            left = max(0.0, self.duration_s - self.elapsed_s)
            if self.total is None or self.done == 0:
                return left
        if self.total is None or self.done == 0:
            return None
        by_count = self.elapsed_s / self.done * (self.total - self.done)
        return by_count if self.duration_s is None else min(by_count, left)


@dataclass
class LoadRun:
    options: BenchOptions
    records: list[RequestRecord]
    started_at: float                  # perf_counter of the scheduled start
    ended_at: float                    # every request done (or cancelled)
    overhead: ClientOverhead
    facts: ServerFacts
    model: str
    workload_notes: list[str]
    workload_digest: str
    warmup_done: int = 0
    warmup_failed: int = 0
    interrupted: bool = False          # Ctrl-C: the records are what was measured until then
    calibration: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def valid(self) -> bool:
        return self.overhead.valid and (self.calibration or {}).get("valid", True)


def arrival_offsets(rate: float, burstiness: float, rng: np.random.Generator,
                    count: int | None, horizon_s: float | None) -> list[float]:
    """Send times from the start: gaps ~ Gamma(shape=burstiness, scale=1/(rate·burstiness)),
    mean 1/rate (vLLM's rule; unlike vLLM the sum is not rescaled to count/rate, so the gaps
    stay a true renewal process and a duration-bound run needs no count)."""
    if math.isinf(rate):
        return [0.0] * (count or 1)
    out: list[float] = []
    t = 0.0
    while count is None or len(out) < count:
        n = 1024 if count is None else min(1024, count - len(out))
        gaps = (np.full(n, 1.0 / rate) if math.isinf(burstiness)
                else rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n))
        for gap in gaps:
            t += float(gap)
            if horizon_s is not None and t >= horizon_s:
                return out
            out.append(t)
    return out


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _plans(o: BenchOptions, target: Target, bodies: list[tuple[bytes, int | None]],
           limit: int | None) -> list[WorkerPlan]:
    if o.rate is None:  # closed loop
        conc = o.concurrency or 1
        n = min(o.workers, conc)
        return [WorkerPlan(w, target, o.timeouts, bodies, concurrency=c, warmup=wu)
                for w, (c, wu) in enumerate(zip(_split(conc, n), _split(o.warmup, n),
                                                strict=True))]
    n = min(o.workers, o.concurrency or o.workers)
    arrivals = arrival_offsets(o.rate, o.burstiness, np.random.default_rng(o.seed), limit,
                               o.duration_s)
    caps = _split(o.concurrency, n) if o.concurrency else [None] * n
    return [WorkerPlan(w, target, o.timeouts, bodies, cap=caps[w], warmup=wu,
                       arrivals=[(i, t) for i, t in enumerate(arrivals) if i % n == w])
            for w, wu in enumerate(_split(o.warmup, n))]


async def run_load(options: BenchOptions, *, stop: asyncio.Event | None = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   workload: Workload | None = None,
                   tokenizer: TextTokenizer | None = None) -> LoadRun:
    """Run one load point. Raises ``EndpointError``/``ConfigError`` (one line) before sending
    load when the endpoint or the options cannot work; never for failures of single requests."""
    options.check()
    stop = stop or asyncio.Event()
    base = normalize_base_url(options.url)
    facts = await probe_endpoint(base, options.api_key, options.timeouts.connect_s)
    model = options.model or (facts.models[0] if facts.models else None)
    if model is None:
        raise ConfigError(f"{base} lists no model: give --model")
    if tokenizer is None and options.tokenizer:
        tokenizer = load_tokenizer(options.tokenizer)
    if workload is None:
        workload = build_workload(options.workload, tokenizer)
    target = Target(base, model, options.endpoint, options.api_key, options.ignore_eos,
                    dict(options.extra_body))
    exact = workload.counted_in == "tokens"
    bodies = [(target.body(p.text, p.max_tokens), p.prompt_tokens if exact else None)
              for p in workload.prompts]
    await _first_request(target, workload, options.timeouts)
    limit = options.num_requests
    if limit is None and options.duration_s is None:
        limit = len(workload)
    plans = _plans(options, target, bodies, limit)
    stats = [Stats() for _ in plans]
    run = Runner(plans, limit, options.duration_s, stop, stats)
    reporter = asyncio.create_task(_report(run, stats, limit, options.duration_s, on_progress))
    try:
        results = await (run.in_process() if len(plans) == 1 else run.in_processes())
    finally:
        reporter.cancel()
    ended = time.perf_counter()
    records = sorted((r for res in results for r in res.records), key=lambda r: r.index)
    count = tokenizer.count if tokenizer else None
    for r in records:
        finalize_tokens(r, count, options.keep_text)
    lags = [x for res in results for x in res.lag_samples]
    busy = [res.cpu_s / res.wall_s for res in results if res.wall_s > 0]
    clock = ("perf_counter = CLOCK_MONOTONIC, shared by all processes" if SHARED_CLOCK
             else f"per-process clock, offsets measured: {run.offsets}")
    overhead = measure_overhead(records, lags, sum(res.cpu_s for res in results), busy,
                                len(plans), sum(res.cap_waits for res in results), clock)
    if run.dead:
        overhead.reasons.append(f"worker process(es) {run.dead} died: their records are lost")
        overhead.valid = False
    return LoadRun(options, records, run.started_at or ended, ended, overhead, facts, model,
                   workload.notes, workload.digest(),
                   sum(r.warmup_done for r in results), sum(r.warmup_failed for r in results),
                   interrupted=stop.is_set())


async def _first_request(target: Target, workload: Workload, timeouts: Timeouts) -> None:
    """One short request before anything else, as vLLM's initial test run."""
    async with make_session(1, timeouts) as session:
        rec = RequestRecord(-1, time.perf_counter(), 0.0)
        await send_request(session, target, target.body(workload[0].text, 4), rec, timeouts)
    if rec.error_kind in _FATAL_AT_START:
        raise EndpointError(f"{target.url}: the first request failed: {rec.error}")


async def _report(run: Runner, stats: list[Stats], total: int | None, duration: float | None,
                  on_progress: Callable[[Progress], None] | None) -> None:
    if on_progress is None:
        return
    while True:
        await asyncio.sleep(0.5)
        if run.started_at is None:
            continue
        sent, done, failed, tokens = (sum(x) for x in zip(*(s.as_tuple() for s in stats),
                                                          strict=True))
        on_progress(Progress(sent, done, failed, tokens, time.perf_counter() - run.started_at,
                             total, duration))


def run_bench(options: BenchOptions,
              on_progress: Callable[[Progress], None] | None = None) -> LoadRun:
    """Sync entry point: Ctrl-C or SIGTERM stops sending, cancels what is in flight and returns
    the partial run (``interrupted=True``) so the caller can still write it."""
    return run_until_signal(lambda stop: run_load(options, stop=stop, on_progress=on_progress))


def run_until_signal(job: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``job(stop)`` on a fresh event loop (uvloop when present) with SIGINT/SIGTERM
    setting ``stop`` instead of raising, so the job decides what to keep."""

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await job(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return _run_loop(main())


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


async def calibrate(run: LoadRun, *, max_requests: int = 300,
                    max_duration_s: float = 15.0) -> dict[str, Any]:
    """Replay the run's load pattern against a loopback server (its own process) that answers
    with the run's median TTFT, ITL and message count: the same concurrency and message rate,
    but a server that is never the bottleneck. If the client misses its own thresholds there,
    it limited the real run as well. Also reports what the client adds to TTFT and ITL."""
    ok = [r for r in run.records if r.ok and r.first_at is not None]
    if not ok:
        return {"valid": True, "skipped": "no successful request to copy the timing from"}
    timing = MockTiming(ttft_s=float(np.median([r.ttft for r in ok])),
                        itl_s=float(np.median([g for r in ok for g in r.itls] or [0.0])),
                        tokens=max(1, int(np.median([len(r.chunk_times) for r in ok]))))
    n = min(len(run.records), max_requests)
    opts = replace(run.options, model="mock", api_key=None, tokenizer=None, num_requests=n,
                   duration_s=min(run.options.duration_s or max_duration_s, max_duration_s),
                   warmup=min(run.options.warmup, 8))
    with mock_server_process(timing) as url:
        mock = await run_load(replace(opts, url=url))
    mock_ok = [r for r in mock.records if r.ok and r.first_at is not None]
    added_ttft = (float(np.median([r.ttft for r in mock_ok])) - timing.ttft_s) * 1000.0 \
        if mock_ok else None
    reasons = [f"against a loopback server with the same timing: {x}"
               for x in mock.overhead.reasons]
    return {
        "mock_timing_ms": {"ttft": timing.ttft_s * 1000.0, "itl": timing.itl_s * 1000.0,
                           "messages": timing.tokens},
        "requests": len(mock.records), "failed": len(mock.records) - len(mock_ok),
        "client_added_ttft_ms_median": added_ttft,
        "overhead": mock.overhead.to_json(),
        "valid": mock.overhead.valid, "reasons": reasons,
    }
