"""End-to-end helpers: run the real `homellm` CLI and find the engine processes it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


def engine_pids(run_dir: Path) -> dict[int, str]:
    """pid → command line of every live process carrying this run folder's engine marker."""
    marker = f"HOMELLM_ENGINE_OF={run_dir.resolve()}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text().split()
                if "Z" in stat[2]:
                    continue
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")\
                    .decode()
        except OSError:
            continue
    return found


def pid_on_port(run_dir: Path, port: int) -> int | None:
    for pid, cmdline in engine_pids(run_dir).items():
        if f"--port {port} " in cmdline + " ":
            return pid
    return None


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    url: str
    run_dir: Path
    ports: dict[str, int]
    log: Path
    stack: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def write_stack(path: Path, model_dir: Path, gateway_port: int, ports: list[int],
                extra: str = "") -> Path:
    replicas = "\n".join(
        f"      - {{role: {'primary' if i == 0 else 'backup'}, port: {p}}}"
        for i, p in enumerate(ports))
    path.write_text(f"""\
models:
  tiny:
    source: {model_dir}
    engine: transformers
    device: cpu
    replicas:
{replicas}
{extra}gateway:
  listen: 127.0.0.1:{gateway_port}
  health: {{interval_s: 0.5, timeout_s: 2.0, fail_threshold: 1, cooldown_s: 2.0}}
supervisor:
  ready_timeout_s: 120
  backoff_initial_s: 0.3
  stop_grace_s: 5
""")
    return path


def start_up(stack: Path, run_dir: Path, log: Path) -> subprocess.Popen[str]:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "homellm.cli", "up", "-c", str(stack),
                             "--run-dir", str(run_dir)], stdout=handle, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "200"})


def wait_ready(url: str, process: subprocess.Popen[str], log: Path, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"homellm up exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"gateway not ready in {timeout} s:\n{log.read_text()}")


def stop_up(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@pytest.fixture(scope="module")
def two_replica_stack(demo_model: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[UpProcess]:
    """`homellm up` (the real CLI) with two transformers replicas of the demo model."""
    folder = tmp_path_factory.mktemp("up")
    gateway, primary, backup = free_port(), free_port(), free_port()
    stack = write_stack(folder / "homellm.yaml", demo_model, gateway, [primary, backup])
    run_dir, log = folder / "run", folder / "up.log"
    process = start_up(stack, run_dir, log)
    url = f"http://127.0.0.1:{gateway}"
    try:
        wait_ready(url, process, log)
        yield UpProcess(process, url, run_dir, {"tiny/0": primary, "tiny/1": backup}, log,
                        stack)
    finally:
        stop_up(process)
