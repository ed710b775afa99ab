"""`homellm bench` and `homellm bench compare` as a user runs them (the real CLI, its own process)
against a FAKE streaming backend process (homellm.gateway.fakebackend): Ctrl-C in the middle of
a run writes what was measured, and compare reads two results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fake_backend_process

HOMELLM = [sys.executable, "-m", "homellm.cli"]


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with fake_backend_process("--tokens", "32", "--delay-ms", "20") as url:
        yield url


def bench(url: str, out: Path, *extra: str) -> list[str]:
    return [*HOMELLM, "bench", "--url", url, "--input-len", "8", "--output-len", "32",
            "--no-progress", "--no-calibrate", "--out", str(out), *extra]


def test_ctrl_c_writes_the_partial_result_and_exits_130(fake_url: str, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    proc = subprocess.Popen(bench(fake_url, out, "--concurrency", "4", "--num-requests", "5000"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    time.sleep(4)  # start-up, the initial request, then about 2 s of load (32 tokens x 20 ms)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    result = json.loads((out / "bench.json").read_text())
    assert result["complete"] is False
    assert 0 < result["completed"] < 5000
    records = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert {r["error_kind"] for r in records} <= {None, "cancelled"}
    assert sum(r["error_kind"] is None for r in records) == result["completed"]
    assert "Traceback" not in output


def test_compare_two_runs(fake_url: str, tmp_path: Path) -> None:
    for name, conc in (("one", "1"), ("four", "4")):
        done = subprocess.run(bench(fake_url, tmp_path / name, "--concurrency", conc,
                                    "--num-requests", "12"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([*HOMELLM, "bench", "compare", str(tmp_path / "one" / "bench.json"),
                           str(tmp_path / "four" / "bench.json"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {row["key"]: row for row in json.loads(done.stdout)["rows"]}
    ttft = next(row for key, row in rows.items() if "ttft" in key)
    assert ttft["p_value"] is not None and 0.0 <= ttft["p_value"] <= 1.0
    throughput = rows["output_throughput"]
    assert throughput["b"] > throughput["a"]  # four streams deliver more than one
    assert throughput["change_pct"] == pytest.approx(
        (throughput["b"] / throughput["a"] - 1) * 100, rel=1e-6)
    missing = subprocess.run([*HOMELLM, "bench", "compare", str(tmp_path / "nope.json"),
                              str(tmp_path / "one" / "bench.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope.json" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr
