"""vLLM ``bench serve`` metrics computed from per-request records (definitions: docs/bench.md).

Everything here is a pure function of ``RequestRecord``s and a few run facts, so any subset of
records (an interrupted run, zero successes) gives a result instead of an exception: a statistic
over an empty set is ``None``, never 0 and never a division by zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from homellm.bench.records import RequestRecord
from homellm.errors import ConfigError

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)
SLO_NAMES: tuple[str, ...] = ("ttft", "tpot", "e2el")
#: the latency families whose statistics are written as vLLM's ``{stat}_{name}_ms`` keys
LATENCY_FAMILIES: tuple[str, ...] = ("ttft", "tpot", "itl", "itl_per_token", "e2el", "send_lag")

_UNIT_S = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "": 1e-3}  # bare number: ms, as vLLM
_SLO_ITEM = re.compile(r"^\s*([a-z0-9_]+)\s*[=:]\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*([a-zµ]*)\s*$")


# --- parsing the user's choices -------------------------------------------------------------


def percentile_word(p: float) -> str:
    """vLLM's key spelling: 99 → "99", 99.9 → "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def parse_percentiles(text: str) -> list[float]:
    """``"50,90,99"`` → ``[50.0, 90.0, 99.0]`` (each in (0, 100], duplicates dropped)."""
    out: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            p = float(item)
        except ValueError:
            raise ConfigError(f"--percentiles: {item!r} is not a number") from None
        if not 0 < p <= 100 or math.isnan(p):
            raise ConfigError(f"--percentiles: {item} is outside (0, 100]")
        if p not in out:
            out.append(p)
    if not out:
        raise ConfigError("--percentiles: give at least one, e.g. 50,90,99")
    return out


def parse_slos(text: str) -> dict[str, float]:
    """``"ttft=500ms,tpot=50ms,e2el=2s"`` → seconds per metric (a bare number is ms, as vLLM)."""
    slos: dict[str, float] = {}
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        match = _SLO_ITEM.match(item.lower())
        if match is None:
            raise ConfigError(f"--slo: {item!r} is not NAME=VALUE[us|ms|s] (e.g. ttft=500ms)")
        name, value, unit = match.groups()
        if name not in SLO_NAMES:
            raise ConfigError(f"--slo: {name!r} is not one of {', '.join(SLO_NAMES)}")
        if unit not in _UNIT_S:
            raise ConfigError(f"--slo: unit {unit!r} in {item!r}; use us, ms or s")
        slos[name] = float(value) * _UNIT_S[unit]
    if not slos:
        raise ConfigError("--slo: give at least one, e.g. ttft=500ms")
    return slos


# --- one request ----------------------------------------------------------------------------


def is_success(r: RequestRecord) -> bool:
    """vLLM counts a request as successful only if a message with ``choices`` arrived."""
    return r.ok and r.first_at is not None


def error_kind(r: RequestRecord) -> str | None:
    if is_success(r):
        return None
    # the client said ok but no message carried choices: vLLM fails it ("never received a valid
    # chunk to calculate TTFT"); ERROR_KINDS calls that malformed
    return r.error_kind or "malformed"


def last_token_at(r: RequestRecord) -> float | None:
    if r.chunk_times:
        return r.chunk_times[-1]
    return r.first_at


def request_end(r: RequestRecord) -> float:
    """When the request stopped occupying a slot (done, else its last known moment)."""
    for t in (r.done_at, last_token_at(r)):
        if t is not None:
            return t
    return r.sent_at


def e2el(r: RequestRecord) -> float | None:
    end = last_token_at(r)
    return None if end is None else end - r.sent_at


def output_len(r: RequestRecord) -> int:
    """The request's output tokens as the client counted them; chunk count if it gave none."""
    if r.output_tokens is not None:
        return r.output_tokens
    return len(r.chunk_times)


def token_source(r: RequestRecord) -> str:
    return r.token_source if r.output_tokens is not None and r.token_source else "chunks"


def tpot(r: RequestRecord) -> float | None:
    """(E2EL − TTFT)/(n − 1), only for n > 1 output tokens."""
    n, lat, ttft = output_len(r), e2el(r), r.ttft
    if n <= 1 or lat is None or ttft is None:
        return None
    return (lat - ttft) / (n - 1)


def itl_per_token(r: RequestRecord) -> list[float]:
    """Chunk gaps scaled to one token each: the client does not see how many tokens each chunk
    carried, so a request's n − 1 decode tokens are spread evenly over its m − 1 chunk gaps."""
    gaps = r.itls
    n = output_len(r)
    if not gaps or n <= 1:
        return []
    scale = len(gaps) / (n - 1)
    return [g * scale for g in gaps]


def meets_slos(r: RequestRecord, slos: dict[str, float]) -> bool:
    """vLLM's goodput test: every SLO given holds (``<=``); TPOT of a ≤1-token output is 0."""
    values = {"ttft": r.ttft, "tpot": tpot(r) or 0.0, "e2el": e2el(r)}
    return all(values[k] is not None and values[k] <= limit for k, limit in slos.items())


# --- statistics -----------------------------------------------------------------------------


def summarize(values: Sequence[float], percentiles: Sequence[float]) -> dict[str, float | None]:
    """mean, median, std (population, as numpy/vLLM), min, max and ``p{word}`` (linear
    interpolation, numpy's default, as vLLM); all ``None`` for an empty sample."""
    keys = ["mean", "median", "std", "min", "max"] + [f"p{percentile_word(p)}" for p in percentiles]
    if len(values) == 0:
        return dict.fromkeys(keys, None)
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {
        "mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()),
        "min": float(arr.min()), "max": float(arr.max()),
    }
    for p, value in zip(percentiles, np.percentile(arr, list(percentiles)), strict=True):
        out[f"p{percentile_word(p)}"] = float(value)
    return out


def flat_ms(name: str, stats: dict[str, float | None]) -> dict[str, float | None]:
    """``{"mean": 0.1}`` → ``{"mean_ttft_ms": 100.0}`` (vLLM's key layout)."""
    return {f"{k}_{name}_ms": None if v is None else v * 1000.0 for k, v in stats.items()}


# --- the run --------------------------------------------------------------------------------


def steady_window(
    records: Iterable[RequestRecord], max_concurrency: int | None
) -> tuple[float, float] | None:
    """The interval during which the target load was in force (docs/bench.md, "Steady state").

    With a concurrency target C: from the moment C requests were first in flight to the first
    request end after the last send (from then on the client only drains). Without one
    (open loop): from the first send to the last send.
    """
    recs = list(records)
    if not recs:
        return None
    last_send = max(r.sent_at for r in recs)
    if max_concurrency is None:
        start, end = min(r.sent_at for r in recs), last_send
    else:
        events = sorted([(r.sent_at, 1) for r in recs] + [(request_end(r), -1) for r in recs])
        level, reached = 0, None
        for t, delta in events:  # at equal times, ends (-1) sort before sends (+1)
            level += delta
            if level >= max_concurrency:
                reached = t
                break
        # strictly after: in a closed loop the last send is triggered by an end at that instant
        ends_after = [request_end(r) for r in recs if request_end(r) > last_send]
        if reached is None or not ends_after:
            return None
        start, end = reached, min(ends_after)
    return (start, end) if end > start else None


def _peak_chunks_and_concurrency(ok: list[RequestRecord]) -> tuple[float, int]:
    """vLLM's ``max_output_tokens_per_s`` (token-carrying *messages* per 1-s bucket from the
    first send, so it counts chunks) and ``max_concurrent_requests`` (sweep over [send, end))."""
    if not ok:
        return 0.0, 0
    t0 = min(r.sent_at for r in ok)
    buckets: Counter[int] = Counter()
    for r in ok:
        for t in r.chunk_times or [r.first_at]:
            buckets[int(t - t0)] += 1
    events = sorted([(r.sent_at, 1) for r in ok] + [(r.sent_at + (e2el(r) or 0.0), -1) for r in ok])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return float(max(buckets.values())), peak


def token_times(r: RequestRecord) -> list[tuple[float, float]]:
    """(time, tokens) per token-carrying message, a request's tokens spread evenly over them."""
    times = r.chunk_times or ([r.first_at] if r.first_at is not None else [])
    if not times:
        return []
    share = output_len(r) / len(times)
    return [(t, share) for t in times]


def timeline(
    records: Sequence[RequestRecord], started_at: float, ended_at: float
) -> dict[str, Any]:
    """1-s buckets from the run's start: output tokens and completed requests per second."""
    n = max(1, math.ceil(ended_at - started_at))
    tokens = [0.0] * n
    done = [0] * n
    for r in records:
        if not is_success(r):
            continue
        for t, share in token_times(r):
            tokens[min(n - 1, max(0, int(t - started_at)))] += share
        end = last_token_at(r)
        if end is not None:
            done[min(n - 1, max(0, int(end - started_at)))] += 1
    return {"bucket_s": 1.0, "output_tokens": tokens, "completed_requests": done}


def compute_metrics(
    records: Sequence[RequestRecord],
    *,
    duration: float,
    max_concurrency: int | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: dict[str, float] | None = None,
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The run's aggregate figures, keyed as vLLM's result JSON where the meaning is the same.

    ``duration`` is the run's wall time (vLLM: first dispatch to last request done, drain
    included). ``window`` overrides the steady-state window computed by ``steady_window``.
    """
    ok = [r for r in records if is_success(r)]
    lens = [output_len(r) for r in ok]
    total_in = sum(r.prompt_tokens or 0 for r in ok)
    total_out = sum(lens)

    def per_s(x: float) -> float | None:
        return x / duration if duration > 0 else None

    good = sum(meets_slos(r, slos) for r in ok) if slos else None
    peak_chunks, peak_conc = _peak_chunks_and_concurrency(ok)
    out: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors_by_kind": dict(sorted(Counter(error_kind(r) for r in records
                                              if not is_success(r)).items())),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(len(ok)),
        "request_goodput": None if good is None else per_s(good),
        "good_requests": good,
        "slos_ms": None if not slos else {k: v * 1000.0 for k, v in slos.items()},
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
        "max_output_tokens_per_s": peak_chunks,
        "max_concurrent_requests": peak_conc,
        "percentiles": list(percentiles),
    }
    samples: dict[str, list[float]] = {
        "ttft": [r.ttft for r in ok if r.ttft is not None],
        "tpot": [t for r in ok if (t := tpot(r)) is not None],
        "itl": [g for r in ok for g in r.itls],
        "itl_per_token": [g for r in ok for g in itl_per_token(r)],
        "e2el": [e for r in ok if (e := e2el(r)) is not None],
        # every request that was sent, failed or not: this is about the client, not the server
        "send_lag": [r.send_lag for r in records],
    }
    for name in LATENCY_FAMILIES:
        out.update(flat_ms(name, summarize(samples[name], percentiles)))
    out["steady_state"] = _steady(records, ok, max_concurrency, window)
    out["token_accounting"] = _token_accounting(ok)
    return out


def _steady(records: Sequence[RequestRecord], ok: list[RequestRecord],
            max_concurrency: int | None, window: tuple[float, float] | None) -> dict[str, Any]:
    win = window if window is not None else steady_window(records, max_concurrency)
    if win is None or win[1] <= win[0]:
        return {"window_start": None, "window_end": None, "duration": None,
                "request_throughput": None, "output_throughput": None,
                "total_token_throughput": None}
    start, end = win
    span = end - start
    done = sum(1 for r in ok if start <= (last_token_at(r) or -math.inf) < end)
    out_tokens = sum(share for r in ok for t, share in token_times(r) if start <= t < end)
    # a prompt's tokens count when its prefill finished: at the request's first message
    in_tokens = sum(r.prompt_tokens or 0 for r in ok if start <= (r.first_at or -math.inf) < end)
    return {"window_start": start, "window_end": end, "duration": span,
            "request_throughput": done / span, "output_throughput": out_tokens / span,
            "total_token_throughput": (out_tokens + in_tokens) / span}


def _token_accounting(ok: list[RequestRecord]) -> dict[str, Any]:
    sources = Counter(token_source(r) for r in ok)
    checked = [r for r in ok if r.usage_output_tokens is not None]
    disagree = [r for r in checked if r.usage_output_tokens != len(r.chunk_times)]
    per_chunk = [output_len(r) / len(r.chunk_times) for r in ok if r.chunk_times]
    return {
        "sources": {k: sources.get(k, 0) for k in ("usage", "tokenizer", "chunks")},
        "usage_vs_chunks_checked": len(checked),
        "usage_vs_chunks_disagree": len(disagree),
        "usage_vs_chunks_disagree_fraction": len(disagree) / len(checked) if checked else None,
        "mean_tokens_per_chunk": float(np.mean(per_chunk)) if per_chunk else None,
    }
