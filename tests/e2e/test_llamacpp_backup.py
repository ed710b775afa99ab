"""Two real engines in one pool: `transformers serve` primary, llama.cpp (GGUF) backup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import pid_on_port, start_up, stop_up, wait_ready

pytestmark = pytest.mark.slow

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama-cpp-python is not installed "
                    "(bash .ci/install-llamacpp.sh installs it)")
def test_failover_between_transformers_and_llamacpp(demo_model: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "demo.gguf"
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "gguf", str(demo_model),
                           str(gguf)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and gguf.exists(), done.stdout + done.stderr
    gateway, primary, backup = free_port(), free_port(), free_port()
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"""\
models:
  tiny:
    source: {demo_model}
    engine: transformers
    device: cpu
    max_context: 1024
    replicas:
      - {{role: primary, port: {primary}}}
      - {{role: backup, port: {backup}, engine: llamacpp, source: {gguf}}}
gateway:
  listen: 127.0.0.1:{gateway}
  health: {{interval_s: 0.5, timeout_s: 2.0, fail_threshold: 1, cooldown_s: 2.0}}
supervisor: {{ready_timeout_s: 120, backoff_initial_s: 0.3, stop_grace_s: 3}}
""")
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    url = f"http://127.0.0.1:{gateway}"
    body = {"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "Привет"}]}
    try:
        wait_ready(url, process, log)
        with httpx.Client(timeout=30) as http:
            def ask(stream: bool = False) -> tuple[int, str]:
                response = http.post(f"{url}/v1/chat/completions", json={**body,
                                                                         "stream": stream})
                return response.status_code, response.headers.get("x-homellm-backend", "")

            assert ask() == (200, "tiny/0")
            os.killpg(pid_on_port(run_dir, primary), signal.SIGKILL)
            served = [ask(stream=i % 2 == 1) for i in range(4)]
            assert all(status == 200 for status, _ in served), served
            assert ("tiny/1" in {backend for _, backend in served}), served
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # the restarted primary takes traffic back
                if ask() == (200, "tiny/0"):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"primary never came back:\n{log.read_text()}")
    finally:
        assert stop_up(process) == 0, log.read_text()
