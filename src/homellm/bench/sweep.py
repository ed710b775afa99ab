"""A run → its result JSON (through ``result.build_result``), and the sweep: load points from one
stream up, stopping once latency grows without throughput, with the knee and the best goodput.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from homellm.bench.load import BenchOptions, LoadRun, run_load
from homellm.bench.metrics import DEFAULT_PERCENTILES
from homellm.bench.result import BenchCard, RunInfo, build_result
from homellm.bench.workload import build_workload, load_tokenizer
from homellm.errors import ConfigError

SweepKind = Literal["concurrency", "rate"]
#: saturation: the newest point's throughput is < 5% above the best so far while its median
#: E2E latency is > 20% above that best point's
MIN_GAIN = 0.05
LATENCY_GROWTH = 0.20


def result_of(run: LoadRun, *, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
              slos: dict[str, float] | None = None, label: str | None = None) -> dict[str, Any]:
    """The result JSON of one run, with the bench card and the client's verdict on itself
    (``valid``, ``invalid_reasons``) at the top level so nobody misses it."""
    o, facts = run.options, run.facts
    wl = o.workload
    card = BenchCard(
        endpoint=facts.base_url, api=o.endpoint, model=run.model,
        server_version=json.dumps(facts.version) if facts.version else None,
        dataset=f"{wl.source}{f' {wl.path}' if wl.path else ''} sha256:{run.workload_digest}",
        seed=o.seed,
        client_host={"hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
                     "python": platform.python_version(), "platform": platform.platform()},
        client_overhead=run.overhead.to_json(),
        extra={"options": o.to_json(), "models_listed": facts.models,
               "server_header": facts.server_header, "workload_notes": run.workload_notes,
               "warmup": {"done": run.warmup_done, "failed": run.warmup_failed},
               "calibration": run.calibration},
    )
    closed = o.rate is None
    info = RunInfo(started_at=run.started_at, ended_at=run.ended_at,
                   max_concurrency=(o.concurrency or 1) if closed else o.concurrency,
                   request_rate=None if closed else o.rate,
                   burstiness=None if closed else o.burstiness,
                   num_prompts=o.num_requests or len(run.records), label=label,
                   complete=not run.interrupted)
    result = build_result(run.records, info, card, percentiles=percentiles, slos=slos)
    reasons = list(run.overhead.reasons) + list((run.calibration or {}).get("reasons", []))
    result["valid"] = run.valid
    result["invalid_reasons"] = reasons
    return result


def default_loads(kind: SweepKind, top: float = 256) -> list[float]:
    """Concurrency 1, 2, 4, ... up to ``top``; rates need the user's list."""
    if kind == "rate":
        raise ConfigError("a rate sweep needs its rates, e.g. --sweep-loads 1,2,4,8")
    out, c = [], 1
    while c <= top:
        out.append(float(c))
        c *= 2
    return out


def _throughput(r: dict[str, Any]) -> float:
    return float(r.get("output_throughput") or r.get("request_throughput") or 0.0)


def _latency(r: dict[str, Any]) -> float | None:
    return r.get("median_e2el_ms")


def saturated(points: Sequence[dict[str, Any]], min_gain: float = MIN_GAIN,
              growth: float = LATENCY_GROWTH) -> bool:
    if len(points) < 2:
        return False
    best = max(points[:-1], key=_throughput)
    new = points[-1]
    lat_best, lat_new = _latency(best), _latency(new)
    if lat_best is None or lat_new is None or _throughput(best) <= 0:
        return False
    return (_throughput(new) < _throughput(best) * (1 + min_gain)
            and lat_new > lat_best * (1 + growth))


def knee(loads: Sequence[float], points: Sequence[dict[str, Any]]) -> float | None:
    """Kleinrock's optimal operating point: the load with the highest power = throughput /
    latency (past it, latency grows faster than throughput)."""
    power = [(_throughput(p) / lat, load) for load, p in zip(loads, points, strict=True)
             if (lat := _latency(p))]
    return max(power)[1] if power else None


@dataclass
class SweepResult:
    kind: SweepKind
    loads: list[float] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)  # one result JSON per load
    runs: list[LoadRun] = field(default_factory=list)
    stopped: str = "all loads done"
    knee: float | None = None
    best_goodput: dict[str, Any] | None = None  # {"load", "request_goodput"} under the SLOs

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "loads": self.loads, "stopped": self.stopped,
                "knee": self.knee, "best_goodput": self.best_goodput,
                "valid": all(p.get("valid", True) for p in self.points)}


async def run_sweep(options: BenchOptions, kind: SweepKind, loads: Sequence[float] | None = None,
                    *, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                    slos: dict[str, float] | None = None, stop: asyncio.Event | None = None,
                    on_point: Callable[[float, dict[str, Any]], None] | None = None,
                    on_start: Callable[[float], Callable[..., None] | None] | None = None
                    ) -> SweepResult:
    """One ``run_load`` per load (same prompts), until saturation, the end of ``loads`` or
    ``stop``. ``on_start(load)`` may return the progress callback for that point."""
    stop = stop or asyncio.Event()
    tok = load_tokenizer(options.tokenizer) if options.tokenizer else None
    workload = build_workload(options.workload, tok)
    out = SweepResult(kind)
    for load in loads or default_loads(kind):
        point_opts = (replace(options, concurrency=int(load), rate=None) if kind == "concurrency"
                      else replace(options, rate=float(load)))
        progress = on_start(load) if on_start else None
        run = await run_load(point_opts, stop=stop, on_progress=progress, workload=workload,
                             tokenizer=tok)
        result = result_of(run, percentiles=percentiles, slos=slos, label=f"{kind}={load:g}")
        out.loads.append(load)
        out.points.append(result)
        out.runs.append(run)
        if on_point:
            on_point(load, result)
        if stop.is_set():
            out.stopped = "interrupted"
            break
        if not result["valid"]:
            out.stopped = (f"client-limited at {kind} {load:g}: more load would measure the "
                           "client, not the server (use more --workers)")
            break
        if saturated(out.points):
            out.stopped = f"saturated at {kind} {load:g}: latency grew without throughput"
            break
    out.knee = knee(out.loads, out.points)
    goodputs = [(p["request_goodput"], load) for load, p in zip(out.loads, out.points,
                                                                strict=True)
                if p.get("request_goodput") is not None]
    if goodputs:
        best, at = max(goodputs)
        out.best_goodput = {"load": at, "request_goodput": best}
    return out
