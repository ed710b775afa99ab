"""Sweep rules (pure), a short sweep and the ``bench`` command end to end, against the FAKE
backend (homellm.gateway.fakebackend, not an engine) on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from homellm.bench.cli_bench import bench_command
from homellm.bench.client import Timeouts
from homellm.bench.load import BenchOptions
from homellm.bench.sweep import default_loads, knee, run_sweep, saturated
from homellm.bench.workload import WorkloadSpec
from homellm.gateway.fakebackend import FakeBackend
from tests.conftest import free_port


def point(tok_s: float, e2el_ms: float) -> dict[str, Any]:
    return {"output_throughput": tok_s, "median_e2el_ms": e2el_ms}


def test_saturation_and_knee() -> None:
    rising = [point(100, 100), point(190, 105)]
    assert not saturated(rising)
    flat = [*rising, point(195, 200)]  # +3% throughput, +90% latency
    assert saturated(flat)
    assert not saturated([*rising, point(260, 200)])  # latency grew, but so did throughput
    assert knee([1, 2, 4], flat) == 2  # highest throughput / latency
    assert default_loads("concurrency", 16) == [1, 2, 4, 8, 16]
    with pytest.raises(Exception, match="needs its rates"):
        default_loads("rate")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBackend]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    backend = FakeBackend(name="tiny", tokens=6, delay_ms=5)
    asyncio.run_coroutine_threadsafe(backend.start(), loop).result(5)
    yield backend
    asyncio.run_coroutine_threadsafe(backend.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_short_sweep(fake: FakeBackend) -> None:
    options = BenchOptions(url=fake.base_url, num_requests=8,
                           workload=WorkloadSpec(input_len=4, output_len=6, num_prompts=8),
                           timeouts=Timeouts(2, 10, 10))
    seen: list[float] = []
    res = asyncio.run(asyncio.wait_for(run_sweep(
        options, "concurrency", [1, 2], slos={"ttft": 5.0},
        on_point=lambda load, _: seen.append(load)), 20))
    assert seen == res.loads == [1, 2] and res.stopped == "all loads done"
    assert [p["max_concurrency"] for p in res.points] == [1, 2]
    assert all(p["completed"] == 8 and "valid" in p for p in res.points)
    assert res.best_goodput is not None and res.knee in (1, 2)


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("bench")(bench_command)
    a.command("other")(lambda: None)  # two commands: typer keeps "bench" as a subcommand
    return a


def test_bench_command_writes_files_and_json(fake: FakeBackend, tmp_path: Path) -> None:
    out = tmp_path / "res"
    result = CliRunner().invoke(app(), [
        "bench", "--url", fake.base_url, "--input-len", "4", "--output-len", "6",
        "--num-prompts", "10", "--concurrency", "2", "--warmup", "2", "--no-progress",
        "--slo", "ttft=5s", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout[result.stdout.index("{"):])
    assert data["completed"] == 10 and data["max_concurrency"] == 2
    assert data["bench_card"]["model"] == "tiny"
    assert data["bench_card"]["extra"]["calibration"]["requests"] == 10
    assert {p.suffix for p in out.iterdir()} >= {".json", ".jsonl", ".csv", ".html", ".png"}


def test_bench_command_unreachable_is_one_line() -> None:
    result = CliRunner().invoke(app(), ["bench", "--url", f"http://127.0.0.1:{free_port()}",
                                        "--no-progress"])
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "Traceback" not in result.output
