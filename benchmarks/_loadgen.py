"""The streaming load generator of the serving benchmarks, and one streamed request's record.

Run as a script, this file *is* the load-generator process of ``gateway_overhead.py``: a closed
loop of ``--concurrency`` streaming chat completions (aiohttp, OpenAI SSE) for ``--warmup`` +
``--duration`` seconds, printing one JSON object of figures measured after the warm-up::

    python benchmarks/_loadgen.py --url http://127.0.0.1:8080/v1/chat/completions --model m \\
        --concurrency 64 --warmup 3 --duration 12 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

_CONTENT = re.compile(rb'"content": ?"(?!")')  # a delta with non-empty text: one token
_FINISH = re.compile(rb'"finish_reason": ?"')  # a non-null finish_reason: the stream is complete
OK, BEFORE_FIRST_BYTE, MID_STREAM = "ok", "failed_before_first_byte", "cut_mid_stream"


# -- one streamed request ------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One request; times are ``time.perf_counter()`` values (``None`` when it never happened)."""

    start: float
    first_byte: float | None = None  # first body byte
    first_token: float | None = None  # first SSE event with non-empty content
    end: float = 0.0
    status: int = 0
    tokens: int = 0
    outcome: str = OK
    error: str = ""
    backend: str = ""
    attempts: int = 1  # backends tried: x-homellm-attempts, or entries in nginx's $upstream_addr


async def stream_chat(session: aiohttp.ClientSession, url: str, body: bytes,
                      headers: dict[str, str], counter: list[int] | None = None,
                      backend_header: str = "x-homellm-backend") -> Record:
    """POST one streaming chat completion and read it to the end; never raises (but cancels)."""
    rec = Record(start=time.perf_counter())
    finished = errored = False
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            rec.status = resp.status
            rec.backend = resp.headers.get(backend_header, "")
            tries = resp.headers.get("x-homellm-attempts")
            rec.attempts = int(tries) if tries and tries.isdigit() else rec.backend.count(",") + 1
            if resp.status != 200:
                text = await resp.read()
                rec.outcome, rec.error = BEFORE_FIRST_BYTE, f"HTTP {resp.status} {text[:120]!r}"
                return rec
            tail = b""
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                if rec.first_byte is None:
                    rec.first_byte = now
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail += data
                    continue
                block = tail + data[: cut + 1] if tail else data[: cut + 1]
                tail = data[cut + 1:]
                n = len(_CONTENT.findall(block))
                if n:
                    if rec.first_token is None:
                        rec.first_token = now
                    rec.tokens += n
                    if counter is not None:
                        counter[0] += n
                if not finished and _FINISH.search(block):
                    finished = True
                if b'"error"' in block:
                    errored = True
                    rec.error = block[block.find(b'"error"'):][:160].decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        rec.outcome = MID_STREAM if rec.first_byte is not None else BEFORE_FIRST_BYTE
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
        return rec
    finally:
        rec.end = time.perf_counter()
    if errored or not finished:
        rec.outcome = MID_STREAM if rec.first_byte is not None else BEFORE_FIRST_BYTE
        rec.error = rec.error or "stream ended without a finish_reason"
    return rec


def chat_body(model: str, max_tokens: int) -> bytes:
    return json.dumps({"model": model, "stream": True, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "Say something."}]}).encode()


# -- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; ``values`` sorted, q in [0, 100]."""
    if not values:
        return float("nan")
    pos = (len(values) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    data = sorted(values)
    out = {f"p{q}": round(percentile(data, q), 4) for q in (50, 90, 99)}
    out["mean"] = round(sum(data) / len(data), 4) if data else float("nan")
    out["max"] = round(data[-1], 4) if data else float("nan")
    out["n"] = len(data)
    return out


# -- the closed-loop load generator ---------------------------------------------------------


async def closed_loop(url: str, model: str, concurrency: int, warmup: float, duration: float,
                      max_tokens: int, headers: dict[str, str], raw: bool = False
                      ) -> dict[str, Any]:
    """``concurrency`` workers, each sending its next request when the last one ends."""
    counter = [0]
    records: list[Record] = []
    body = chat_body(model, max_tokens)
    hdrs = {"Content-Type": "application/json", **headers}
    begin = time.perf_counter()
    stop_at = begin + warmup + duration
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                records.append(await stream_chat(session, url, body, hdrs, counter))

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        t0, c0, cpu0 = time.perf_counter(), counter[0], time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        t1, c1, cpu1 = time.perf_counter(), counter[0], time.process_time()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    window = t1 - t0
    inside = [r for r in records if r.start >= t0 and r.end <= t1]
    good = [r for r in inside if r.outcome == OK and r.first_token is not None]
    bad = [r for r in inside if r.outcome != OK]
    ttft = [(r.first_token - r.start) * 1000 for r in good]  # type: ignore[operator]
    e2e = [(r.end - r.start) * 1000 for r in good]
    short = sum(1 for r in good if r.tokens != max_tokens)
    result: dict[str, Any] = {
        "concurrency": concurrency, "max_tokens": max_tokens, "window_s": round(window, 3),
        "chunks": c1 - c0, "chunks_per_s": round((c1 - c0) / window, 1),
        "chunks_total": counter[0], "requests_ok": len(good),
        "req_per_s": round(len(good) / window, 2), "failed": len(bad), "short_streams": short,
        "errors": dict(Counter(r.error[:100] for r in bad).most_common(5)),
        "backends": dict(Counter(r.backend for r in good)),
        "ttft_ms": summary(ttft), "e2e_ms": summary(e2e),
        "loadgen_cpu_s": round(cpu1 - cpu0, 3),
    }
    if raw:
        result["raw_ttft_ms"] = [round(v, 4) for v in ttft]
        result["raw_e2e_ms"] = [round(v, 4) for v in e2e]
    return result


def run_loop(coro: Any) -> Any:
    """uvloop when installed (as the gateway uses), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="closed-loop streaming load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("--raw", action="store_true", help="also print per-request latencies")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    result = run_loop(closed_loop(args.url, args.model, args.concurrency, args.warmup,
                                  args.duration, args.max_tokens, headers, args.raw))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
