"""The benchmark scripts still run (smoke runs only: no speed threshold belongs in a test)."""

from __future__ import annotations

import json
import os
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


def test_gpu_session_runs_every_step_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_session.sh --cpu: every GPU step's logic on CPU with tiny sizes. Each
    step leaves its figures in summary.json, or its failure is recorded (NVML has no driver
    here); every process it started is gone when it returns."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--cpu"],
                          capture_output=True, text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["setup", "model", "up", "client", "bench", "nvml", "calibrate",
                           "plan_serve", "train_gpu"]
    log = (out / "session.log").read_text()
    for name, step in steps.items():
        assert step["rc"] == 0 or step["note"] or f"===== {name}.log" in log, step
    figures = summary["figures"]
    for name in ("model", "client", "bench", "calibrate", "plan_serve", "train_gpu"):
        assert steps[name]["rc"] == 0 and steps[name]["figures"] == name, steps[name]
    assert figures["client"]["chat"]["chars"] > 0 and figures["client"]["stream"]["chunks"] > 0
    assert figures["bench"]["completed"] == 4 and figures["bench"]["failed"] == 0
    assert figures["calibrate"][0]["factor"] == "decode_bw_eff"
    assert figures["plan_serve"]["figures"] and figures["plan_serve"]["measured"]
    assert figures["train_gpu"]["throughput"]
    # no NVIDIA driver here: the failure is recorded with NVML's own reason
    assert steps["nvml"]["rc"] == 1 and "NVML" in steps["nvml"]["note"]
    assert summary["failed"] == ["nvml"] and not summary["ok"]
    assert (out / "bench.json").exists() and (out / "train_gpu.json").exists()
    assert len(list(out.iterdir())) <= 8                 # what the device machine returns
    assert not list(tmp_path.glob("homellm-gpu-session.*"))   # its work folder is removed
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True,
                              check=False)
    assert leftover.stdout.strip() == "", "a process the session started is still running"
