"""The benchmark scripts still run (smoke runs only: no speed threshold belongs in a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gateway_overhead_quick(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gateway_overhead.py"),
                           "--quick", "--no-litellm", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "homellm" in json.dumps(results)
    assert (tmp_path / "overhead.png").stat().st_size > 0


def test_bench_client_quick(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_client.py"),
                           "--quick", "--no-guidellm", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["concurrency"] for r in results["rows"]] == [16, 64]
    assert all(r["tool"] == "homellm" and r["messages_per_s"] > 0 for r in results["rows"])
    assert results["skipped"] == {"guidellm": "--no-guidellm"}
    assert (tmp_path / "bench_client.png").stat().st_size > 0


def test_plan_accuracy_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_accuracy.py"),
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["serve"] and len(results["train"]) == 4
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_train_cpu_quick(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_cpu.py"),
                           "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [path] = tmp_path.glob("train_cpu-*.json")
    results = json.loads(path.read_text())
    [row] = results["presets"]["tiny"]["rounds"]
    assert row["figures"]["plain"]["tokens_per_s"] > 0
    assert row["figures"]["homellm"]["tokens_per_s"] > 0
    assert row["ratio_vs_plain"]["homellm"] > 0


def test_train_gpu_script_runs_on_cpu_quick(tmp_path: Path) -> None:
    """The GPU benchmark's own logic (runs, medians, the context search), on CPU with the tiny
    preset; the GPU figures come from running it on a GPU machine."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_gpu.py"),
                           "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [path] = tmp_path.glob("train_gpu-cpu-quick-*.json")
    results = json.loads(path.read_text())
    assert [(r["preset"], r["seq_len"]) for r in results["throughput"]] == [("tiny", 64),
                                                                          ("tiny", 128)]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in results["throughput"])
    longest = results["longest_context"]["tiny"]
    assert longest["longest"] == 256 and all(t["trained"] for t in longest["tried"])
