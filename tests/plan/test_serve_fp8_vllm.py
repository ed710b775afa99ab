"""vLLM 0.33's own parser and config code accept what plan serve writes for fp8 (issue 13 §3).

Slow, and only where scripts/engine_venvs.sh built the vLLM venv: the stack file that
``plan serve --dtype fp8 --kv-cache-dtype fp8 --write`` writes becomes the replica's command
(the vLLM adapter), which scripts/vllm_probe.py feeds to ``vllm serve``'s parser,
``create_model_config`` and ``create_engine_config`` on vLLM's CPU platform, with a
``config.json`` copy (no weights) for the model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from homellm.config import load_stack
from homellm.engines.registry import resolve_stack
from homellm.models_catalog import catalog_entry
from tests.plan.test_cli_plan import homellm

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-engines" / "vllm" / "bin" / "python"
PROBE = ROOT / "scripts" / "vllm_probe.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists() or not PROBE.exists(),
                       reason="no vLLM venv (scripts/engine_venvs.sh vllm)"),
]


def test_vllm_accepts_fp8_weights_and_fp8_kv_cache(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000", "--context",
                   "32768", "--dtype", "fp8", "--kv-cache-dtype", "fp8", "--write", str(stack),
                   home=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (spec, *_) = resolve_stack(load_stack(stack, check_sources=False))
    argv = spec.argv[spec.argv.index("serve") + 1:]
    folder = tmp_path / "Qwen3-30B-A3B"
    folder.mkdir()
    config = dict(catalog_entry("qwen3-30b-a3b").config)
    config.update(architectures=["Qwen3MoeForCausalLM"], torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(config))
    argv[0] = str(folder)
    assert "--quantization" in argv and "--kv-cache-dtype" in argv
    probe = subprocess.run([str(VLLM_PYTHON), str(PROBE)], capture_output=True, text=True,
                           input=json.dumps({"id": "fp8", "argv": argv}) + "\n", timeout=600,
                           check=False, cwd=tmp_path)
    results = [json.loads(line.removeprefix("PROBE ")) for line in probe.stdout.splitlines()
               if line.startswith("PROBE ")]
    assert results, probe.stdout[-2000:] + probe.stderr[-2000:]
    (result,) = results
    assert result["accepted"], result
    assert result["engine_config"] == "passed", result
