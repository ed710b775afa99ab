"""`homellm check --preflight` against the real vLLM 0.33 (issue 13 §1): the 128K stack file that
`plan serve --write` makes passes the installed engine's own --help check, on a machine without a
GPU too. Slow, and only where scripts/engine_venvs.sh built the vLLM venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_BIN = ROOT / ".venv-engines" / "vllm" / "bin"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VLLM_BIN / "vllm").exists(),
                       reason="no vLLM venv (scripts/engine_venvs.sh vllm)"),
]


def homellm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOMELLM_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1",
           "PATH": f"{VLLM_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VLLM_TARGET_DEVICE", None)  # the adapter must supply what --help needs itself
    return subprocess.run([sys.executable, "-m", "homellm.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)


def test_the_written_128k_stack_passes_the_real_vllm_preflight(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
                   "131072", "--write", str(stack), home=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = homellm("check", "-c", str(stack), "--preflight", home=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert str(VLLM_BIN / "vllm") in checked.stdout and "--hf-overrides" in checked.stdout
    # and a flag this vLLM does not have is still refused at its line
    stack.write_text(stack.read_text().replace("gpu_memory_utilization: 0.9",
                                               "gpu_memory_utilization: 0.9, no_such_flag: 1"))
    refused = homellm("check", "-c", str(stack), "--preflight", home=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no_such_flag" in refused.stdout + refused.stderr
