"""The CLI as users call it: check's resolved processes, one-line refusals before any engine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def _homellm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homellm.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_version() -> None:
    done = _homellm("--version")
    assert done.returncode == 0 and done.stdout.startswith("homellm ")


def test_check_json_lists_each_replica_process(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  qwen3-30b:\n    source: Qwen/Qwen3-30B-A3B\n    engine: vllm\n"
                     "    max_context: 131072\n    replicas:\n"
                     "      - {gpus: [0, 1], port: 9000}\n"
                     "      - {url: 'http://192.0.2.10:8000', role: backup}\n")
    done = _homellm("check", "-c", str(stack), "--json")
    assert done.returncode == 0, done.stderr
    replicas = json.loads(done.stdout)["replicas"]
    local, remote = replicas
    assert local["env"] == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert local["health_url"] == "http://127.0.0.1:9000/health"
    command = local["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--max-model-len") + 1] == "131072"
    assert remote["remote"] is True and remote["command"] == []
    human = _homellm("check", "-c", str(stack))
    assert "CUDA_VISIBLE_DEVICES=0,1" in human.stdout and "remote backend" in human.stdout


def test_check_preflight_refuses_a_flag_the_engine_lacks(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n"
                     "    engine_args: {speculative_decoding: true}\n    replicas: [{}]\n")
    done = _homellm("check", "-c", str(stack), "--preflight")
    assert done.returncode == 1
    assert "does not accept --speculative-decoding" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _stack(tmp_path: Path, listen: str) -> Path:
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    replicas: [{{}}]\n"
                     f"gateway:\n  listen: {listen}\n")
    return stack


def test_up_refuses_a_taken_gateway_port_before_starting_engines(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _homellm("up", "-c", str(_stack(tmp_path, f"127.0.0.1:{port}")),
                        "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert f"gateway.listen: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in done.stderr
    assert not (tmp_path / "run" / "logs").exists()  # no engine was started


def test_up_refuses_to_listen_beyond_loopback_without_keys(tmp_path: Path) -> None:
    done = _homellm("up", "-c", str(_stack(tmp_path, f"0.0.0.0:{free_port()}")))
    assert done.returncode == 2
    assert "is not loopback, and no API keys are configured" in done.stderr


def test_up_with_keys_needs_the_keys_file_and_may_listen_beyond_loopback(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    replicas: [{{}}]\n"
                     f"gateway:\n  listen: 0.0.0.0:{free_port()}\n  api_keys_file: keys.json\n")
    done = _homellm("up", "-c", str(stack), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert f"{tmp_path / 'keys.json'}: keys file not found" in done.stderr
    assert "not loopback" not in done.stderr
