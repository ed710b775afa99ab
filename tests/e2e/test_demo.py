"""`homellm demo`: the README's first command, end to end (real engines)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import engine_pids

pytestmark = pytest.mark.slow


def test_demo_runs_the_failover_drill_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """The README's `homellm demo` (with --json to read the drill): the drill passes, it serves
    until Ctrl-C, and Ctrl-C exits 130 as `up` does, leaving no engine behind."""
    env = {**os.environ, "HOMELLM_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "homellm.cli", "demo", "--json", "--port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()  # the demo prints as it goes; it serves once it says "until Ctrl-C"
    try:
        deadline = time.monotonic() + 300
        while not any("until Ctrl-C" in line for line in list(lines)):
            assert demo.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert demo.returncode == 130, output
    report = json.loads(next(line for line in output.splitlines()
                             if line.startswith('{"model"')))
    assert report["passed"] is True
    assert report["failed_before_first_byte"] == 0
    assert report["served_by"].get("demo/1", 0) >= 1  # the backup took over
    assert report["primary_serving_s"] is not None  # and the restarted primary came back
    assert "gibberish" in output and "curl -s http://127.0.0.1:" in output
    assert "from openai import OpenAI" in output
    model_dir = tmp_path / "home" / "demo" / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "chat_template.jinja"
                                                            ).exists()
    assert engine_pids(tmp_path / "home" / "demo" / "run") == {}
