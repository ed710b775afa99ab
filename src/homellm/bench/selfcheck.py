"""The client's own overhead in a run, and the rule that marks a run invalid because the client,
not the server, limited it.

A run is **invalid** when any of these holds (over the measured phase, all workers pooled):

- event-loop lag p99 > 10 ms: a 10 ms timer fired more than 10 ms late for 1% of the time, so
  TTFT and ITL samples can carry that much client delay;
- send lag median > 5 ms or p99 > 50 ms: requests left later than the load pattern said (open
  loop: the arrival time; closed loop: the moment a slot freed);
- a worker was busy > 90% of one core: it had no headroom, queueing in the client is likely.

The thresholds are relative to LLM latencies (TTFT ≥ tens of ms, ITL ≥ a few ms); the figures are
kept in the result so a stricter reader can apply their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from homellm.bench.records import RequestRecord

LOOP_LAG_P99_LIMIT_MS = 10.0
SEND_LAG_P50_LIMIT_MS = 5.0
SEND_LAG_P99_LIMIT_MS = 50.0
CPU_BUSY_LIMIT = 0.90


@dataclass
class ClientOverhead:
    workers: int
    loop_lag_p50_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    send_lag_p50_ms: float | None = None
    send_lag_p99_ms: float | None = None
    cpu_s: float = 0.0                 # CPU seconds of all workers in the measured phase
    cpu_busy_max: float | None = None  # the busiest worker's CPU time / wall time
    cap_waits: int = 0                 # open loop: requests that waited for the concurrency cap
    clock: str = ""
    valid: bool = True
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pct_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000.0) if values else None


def measure_overhead(records: list[RequestRecord], lag_samples: list[float], cpu_s: float,
                     busy: list[float], workers: int, cap_waits: int,
                     clock: str) -> ClientOverhead:
    send = [r.send_lag for r in records]
    o = ClientOverhead(
        workers=workers,
        loop_lag_p50_ms=_pct_ms(lag_samples, 50), loop_lag_p99_ms=_pct_ms(lag_samples, 99),
        loop_lag_max_ms=max(lag_samples) * 1000.0 if lag_samples else None,
        send_lag_p50_ms=_pct_ms(send, 50), send_lag_p99_ms=_pct_ms(send, 99),
        cpu_s=cpu_s, cpu_busy_max=max(busy) if busy else None, cap_waits=cap_waits, clock=clock,
    )
    judge(o)
    return o


def judge(o: ClientOverhead) -> None:
    """Fill ``valid`` and ``reasons`` from the thresholds above."""
    checks = [
        (o.loop_lag_p99_ms, LOOP_LAG_P99_LIMIT_MS, "event-loop lag p99"),
        (o.send_lag_p50_ms, SEND_LAG_P50_LIMIT_MS, "send lag median"),
        (o.send_lag_p99_ms, SEND_LAG_P99_LIMIT_MS, "send lag p99"),
    ]
    for value, limit, name in checks:
        if value is not None and value > limit:
            o.reasons.append(f"{name} {value:.1f} ms > {limit:g} ms")
    if o.cpu_busy_max is not None and o.cpu_busy_max > CPU_BUSY_LIMIT:
        o.reasons.append(f"a client worker was {o.cpu_busy_max:.0%} busy (> "
                         f"{CPU_BUSY_LIMIT:.0%}): use more --workers")
    o.valid = not o.reasons
