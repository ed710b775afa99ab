"""The failover drill: traffic through the gateway while the primary engine is SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from homellm.up import Running


@dataclass
class DrillRequest:
    started: float  # seconds since the drill began
    backend: str = ""
    ok: bool = False
    first_byte: bool = False  # the client received at least one byte
    error: str = ""
    seconds: float = 0.0


@dataclass
class DrillReport:
    model: str
    primary: str
    killed_pid: int
    requests: list[DrillRequest] = field(default_factory=list)
    kill_at: float = 0.0
    first_backup_success_s: float | None = None  # after the kill
    primary_ready_s: float | None = None  # after the kill: the restarted engine is ready
    primary_serving_s: float | None = None  # after the kill: a request succeeded on it again
    restarts: int = 0

    @property
    def failed_before_first_byte(self) -> int:
        return sum(1 for r in self.requests if not r.ok and not r.first_byte)

    @property
    def cut_mid_stream(self) -> int:
        return sum(1 for r in self.requests if not r.ok and r.first_byte)

    @property
    def served_by(self) -> Counter[str]:
        return Counter(r.backend for r in self.requests if r.ok)

    @property
    def passed(self) -> bool:
        return (self.failed_before_first_byte == 0 and self.primary_serving_s is not None
                and self.first_backup_success_s is not None)

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model, "primary": self.primary, "killed_pid": self.killed_pid,
            "requests": len(self.requests), "succeeded": sum(r.ok for r in self.requests),
            "failed_before_first_byte": self.failed_before_first_byte,
            "cut_mid_stream": self.cut_mid_stream, "served_by": dict(self.served_by),
            "first_backup_success_s": self.first_backup_success_s,
            "primary_ready_s": self.primary_ready_s,
            "primary_serving_s": self.primary_serving_s, "restarts": self.restarts,
            "passed": self.passed,
            "errors": [f"{r.started:.2f}s {r.backend or '-'}: {r.error}" for r in self.requests
                       if not r.ok],
        }


async def _one_request(client: httpx.AsyncClient, url: str, model: str, t0: float,
                       prompt: str) -> DrillRequest:
    record = DrillRequest(started=time.monotonic() - t0)
    body = {"model": model, "stream": True, "max_tokens": 12,
            "messages": [{"role": "user", "content": prompt}]}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            record.backend = response.headers.get("x-homellm-backend", "")
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}"
                return record
            async for line in response.aiter_lines():
                record.first_byte = True
                if line.startswith("data: {") and '"error"' in line:
                    record.error = json.loads(line[6:])["error"].get("message", "stream error")
                    return record
            record.ok = True
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.seconds = time.monotonic() - t0 - record.started
    return record


async def run_drill(running: Running, model: str, *, warmup_requests: int = 4,
                    concurrency: int = 2, timeout_s: float = 90.0,
                    on_progress: Callable[[str], None] | None = None) -> DrillReport:
    """Send a steady stream of requests, SIGKILL the primary, and watch the failover."""
    say = on_progress or (lambda text: None)
    primary = next(s for s in running.specs if s.model == model and s.role == "primary"
                   and not s.remote)
    status = {s.replica: s for s in running.supervisor.status()}
    pid = status[primary.replica].pid
    if pid is None:
        raise RuntimeError(f"{primary.replica} is not running")
    report = DrillReport(model=model, primary=primary.replica, killed_pid=pid)
    t0 = time.monotonic()
    stop = asyncio.Event()
    prompts = ["Привет! Как дела?", "Hello, who are you?", "Расскажи о погоде.", "Count to ten."]

    async def worker(index: int) -> None:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
            n = index
            while not stop.is_set():
                record = await _one_request(client, running.url, model, t0,
                                            prompts[n % len(prompts)])
                n += concurrency
                report.requests.append(record)
                after_kill = report.kill_at and record.started >= report.kill_at
                if record.ok and after_kill:
                    elapsed = record.started + record.seconds - report.kill_at
                    if record.backend != primary.replica and report.first_backup_success_s is None:
                        report.first_backup_success_s = elapsed
                    if record.backend == primary.replica and report.primary_serving_s is None:
                        report.primary_serving_s = elapsed
                        say(f"primary {primary.replica} is serving again "
                            f"{elapsed:.1f} s after the kill")
                        stop.set()
                await asyncio.sleep(0.05)

    say(f"sending requests through {running.url} ({concurrency} at a time)")
    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        while sum(r.ok for r in report.requests) < warmup_requests:
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError("the gateway answered no request before the drill's kill")
            await asyncio.sleep(0.05)
        report.kill_at = time.monotonic() - t0
        say(f"SIGKILL to the primary engine {primary.replica} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        restarts_before = status[primary.replica].restarts
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            current = {s.replica: s for s in running.supervisor.status()}[primary.replica]
            if report.primary_ready_s is None and current.state == "ready" and \
                    current.restarts > restarts_before:
                report.primary_ready_s = time.monotonic() - t0 - report.kill_at
                report.restarts = current.restarts - restarts_before
                say(f"supervisor restarted {primary.replica}; ready "
                    f"{report.primary_ready_s:.1f} s after the kill")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    return report
