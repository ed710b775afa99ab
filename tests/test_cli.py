"""The CLI as users call it: check's resolved processes, one-line refusals before any engine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def _refusal(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# what `up` refuses before it starts anything: `check` refuses each the same way (exit 2, the
# same one line naming FILE:LINE), so a file that passes check is one up starts
REFUSED_BEFORE_START = {
    "beyond loopback without keys": (
        "models:\n  a:\n    source: {model}\n    replicas: [{{}}]\n"
        "gateway:\n  listen: 0.0.0.0:{port}\n",
        "homellm.yaml:6: gateway.listen: 0.0.0.0:{port} is not loopback, and no API keys are "
        "configured"),
    "duplicate key": (
        "models:\n  a:\n    source: {model}\n    engine: transformers\n    replicas: [{{}}]\n"
        "    engine: vllm\ngateway:\n  listen: 127.0.0.1:{port}\n",
        "homellm.yaml:6: models.a.engine: duplicate key (first at line 4)"),
    "keys file missing": (
        "models:\n  a:\n    source: {model}\n    replicas: [{{}}]\n"
        "gateway:\n  listen: 0.0.0.0:{port}\n  api_keys_file: keys.json\n",
        "{folder}/keys.json: keys file not found"),
    "false with no negative form": (
        "models:\n  a:\n    source: {model}\n    engine: sglang\n"
        "    engine_args:\n      enable_torch_compile: false\n    replicas: [{{gpus: [0]}}]\n"
        "gateway:\n  listen: 127.0.0.1:{port}\n",
        "homellm.yaml:6: models.a.engine_args.enable_torch_compile: false, but sglang has no "
        "--no-enable-torch-compile; remove it or set true"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BEFORE_START))
def test_check_refuses_what_up_refuses(tmp_path: Path, case: str) -> None:
    text, expected = REFUSED_BEFORE_START[case]
    port = free_port()
    stack = tmp_path / "homellm.yaml"
    stack.write_text(text.format(model=tmp_path, port=port))
    expected = expected.format(port=port, folder=tmp_path)
    checked = _homellm("check", "-c", str(stack))
    started = _homellm("up", "-c", str(stack), "--run-dir", str(tmp_path / "run"))
    for done in (checked, started):
        assert done.returncode == 2, done.stderr
        line = _refusal(done)
        assert expected in line, line
        assert line.removeprefix("error: ").startswith(str(stack) if "keys" not in case
                                                       else str(tmp_path)), line
    assert not (tmp_path / "run" / "logs").exists()  # no engine was started


def test_check_preflight_refuses_an_unknown_engine_args_flag_at_its_line(tmp_path: Path) -> None:
    """`up` always asks the installed engine; `check --preflight` does the same, and a flag the
    stack file asked for is the file's error (exit 2, its line), like a misspelt field."""
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n"
                     "    engine_args:\n      compile: false\n      speculative_decoding: true\n"
                     f"    replicas: [{{}}]\ngateway:\n  listen: 127.0.0.1:{free_port()}\n")
    assert _homellm("check", "-c", str(stack)).returncode == 0  # statically nothing is known
    for done in (_homellm("check", "-c", str(stack), "--preflight"),
                 _homellm("up", "-c", str(stack), "--run-dir", str(tmp_path / "run"))):
        assert done.returncode == 2, done.stderr
        assert _refusal(done).startswith(
            f"error: {stack}:6: models.a.engine_args.speculative_decoding: the installed "
            "transformers does not accept --speculative-decoding"), done.stderr
    assert not (tmp_path / "run" / "logs").exists()


def test_transformers_max_context_is_a_warning_not_an_error(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    engine: transformers\n"
                     "    max_context: 4096\n    replicas: [{}, {role: backup}]\n")
    expected = (f"{stack}:5: models.a.max_context: transformers serve has no context-length "
                "limit, so 4096 is not enforced")
    human = _homellm("check", "-c", str(stack))
    assert human.returncode == 0, human.stderr
    assert _refusal(human).startswith(f"warning: {expected}")  # once, for two replicas
    machine = _homellm("check", "-c", str(stack), "--json")
    assert machine.returncode == 0
    (warning,) = json.loads(machine.stdout)["warnings"]
    assert (warning["file"], warning["line"], warning["field"]) == (str(stack), 5,
                                                                    "models.a.max_context")
    assert warning["message"].startswith("transformers serve has no context-length limit")
    # a window the context fits in: no long-context warning either
    (tmp_path / "config.json").write_text('{"model_type": "llama", '
                                          '"max_position_embeddings": 8192}')
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    engine: vllm\n"
                     "    max_context: 4096\n    replicas: [{gpus: [0]}]\n")
    quiet = _homellm("check", "-c", str(stack), "--json")
    assert quiet.returncode == 0 and json.loads(quiet.stdout)["warnings"] == []
    assert quiet.stderr == ""


def test_check_and_up_refuse_a_run_folder_that_cannot_be_made(tmp_path: Path) -> None:
    """`up` used to die with a traceback making its logs folder; now both say so in one line."""
    (tmp_path / "a-file").write_text("")
    stack = tmp_path / "homellm.yaml"
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    replicas: [{{}}]\n"
                     f"gateway:\n  listen: 127.0.0.1:{free_port()}\n"
                     f"run_dir: {tmp_path / 'a-file' / 'run'}\n")
    expected = (f"{stack}:7: run_dir: cannot use {tmp_path / 'a-file' / 'run'} as the run "
                "folder: Not a directory")
    for done in (_homellm("check", "-c", str(stack)), _homellm("up", "-c", str(stack))):
        assert done.returncode == 2, done.stderr
        assert _refusal(done) == f"error: {expected}"
    given = _homellm("up", "-c", str(stack), "--run-dir", str(tmp_path / "a-file" / "x"))
    assert given.returncode == 2
    assert _refusal(given).startswith(f"error: --run-dir: cannot use {tmp_path / 'a-file'}")
    fresh = tmp_path / "not" / "yet"  # check probes a folder it may make, and leaves no trace
    stack.write_text(stack.read_text().replace(str(tmp_path / "a-file" / "run"), str(fresh)))
    assert _homellm("check", "-c", str(stack)).returncode == 0
    assert not (tmp_path / "not").exists()


def test_up_prints_warnings_before_it_starts(tmp_path: Path) -> None:
    """The warning `check` prints, `up` prints at its start (here just before it finds the
    gateway's port taken, so nothing starts)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack = tmp_path / "homellm.yaml"
        stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    max_context: 4096\n"
                         f"    replicas: [{{}}]\ngateway:\n  listen: 127.0.0.1:{port}\n")
        done = _homellm("up", "-c", str(stack), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert (f"warning: {stack}:4: models.a.max_context: transformers serve has no "
            "context-length limit") in " ".join(done.stdout.split())
    assert "cannot listen on" in done.stderr
