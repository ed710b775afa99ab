"""`homellm demo --exit-after-drill`: the README's first command, end to end (real engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import engine_pids

pytestmark = pytest.mark.slow


def test_demo_runs_the_failover_drill(tmp_path: Path) -> None:
    env = {**os.environ, "HOMELLM_HOME": str(tmp_path / "home"), "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "homellm.cli", "demo", "--exit-after-drill", "--json",
         "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    report = json.loads(next(line for line in done.stdout.splitlines()
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
