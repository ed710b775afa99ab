"""`homellm reload` and SIGHUP against a real `homellm up` process whose one replica is a remote
URL served by a FAKE backend process (homellm.gateway.fakebackend), so no engine starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from homellm.config import parse_stack
from homellm.errors import ConfigError
from homellm.gateway.app import Gateway
from homellm.reload import reload_stack
from homellm.up import backends_of
from tests.conftest import fake_backend_process, free_port

HOMELLM = [sys.executable, "-m", "homellm.cli"]


def stack_text(fake_url: str, port: int, limits: str = "") -> str:
    text = (f"models:\n  m:\n    source: x/y\n    engine: vllm\n"
            f"    replicas: [{{url: '{fake_url}'}}]\n"
            f"gateway:\n  listen: 127.0.0.1:{port}\n  health: {{interval_s: 0.5}}\n")
    return text + (f"  limits: {limits}\n" if limits else "")


def test_reload_applies_limits_and_refuses_what_needs_a_restart(tmp_path: Path) -> None:
    stack_file = tmp_path / "homellm.yaml"
    stack_file.write_text(stack_text("http://127.0.0.1:9", 8080))
    running = parse_stack(stack_file.read_text())
    from homellm.engines.registry import resolve_stack

    gateway = Gateway(backends_of(resolve_stack(running)), running.gateway)
    stack_file.write_text(stack_text("http://127.0.0.1:9", 8080, "{max_body_bytes: 4096}"))
    new, result = reload_stack(gateway, running, stack_file, loopback=True)
    assert result["changed"] == ["limits"] and gateway.limits.max_body_bytes == 4096
    for broken, why in [
        (stack_text("http://127.0.0.1:9", 8080, "{max_body_bytes: ten}"),
         ":9: gateway.limits.max_body_bytes"),
        (stack_text("http://127.0.0.1:9", 8081), "gateway.listen changed"),
        (stack_text("http://127.0.0.1:10", 8080), "models (m) changed"),
        ("models: [", "YAML syntax error"),
    ]:
        stack_file.write_text(broken)
        with pytest.raises(ConfigError, match="stays in force") as caught:
            reload_stack(gateway, new, stack_file, loopback=True)
        assert why in str(caught.value)
        assert gateway.limits.max_body_bytes == 4096  # the old one stays in force
    stack_file.write_text(stack_text("http://127.0.0.1:9", 8080) + "  api_keys_file: k.json\n")
    with pytest.raises(ConfigError, match="keys file not found"):
        reload_stack(gateway, new, stack_file, loopback=True)
    assert gateway.keys is None


@pytest.fixture
def fake_backend() -> Iterator[str]:
    with fake_backend_process("--tokens", "4") as url:
        yield url


def test_up_reloads_on_homellm_reload_and_sighup(tmp_path: Path, fake_backend: str) -> None:
    port = free_port()
    stack_file = tmp_path / "homellm.yaml"
    stack_file.write_text(stack_text(fake_backend, port))
    run_dir = tmp_path / "run"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*HOMELLM, "up", "-c", str(stack_file), "--run-dir", str(run_dir)],
                          stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1/completions"
    big = {"model": "m", "prompt": "x" * 5000, "max_tokens": 2}

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HOMELLM, "reload", "-c", str(stack_file), "--run-dir",
                               str(run_dir)], capture_output=True, text=True, env=env,
                              timeout=60)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert up.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "up.log").read_text())
            time.sleep(0.2)
        assert httpx.post(url, json=big, timeout=10).status_code == 200

        stack_file.write_text(stack_text(fake_backend, port, "{max_body_bytes: many}"))
        refused = reload()
        assert refused.returncode == 2, refused.stderr
        assert "max_body_bytes" in refused.stderr and "nothing was reloaded" in refused.stderr
        assert httpx.post(url, json=big, timeout=10).status_code == 200  # old config in force

        stack_file.write_text(stack_text(fake_backend, port, "{max_body_bytes: 4096}"))
        done = reload()
        assert done.returncode == 0, done.stderr
        assert "limits" in done.stdout
        assert httpx.post(url, json=big, timeout=10).status_code == 413

        stack_file.write_text(stack_text(f"{fake_backend}/other", port,
                                         "{max_body_bytes: 100000}"))
        refused = reload()  # a valid file, but it changes a replica: refused by the gateway
        assert refused.returncode == 1 and "needs a restart" in refused.stderr
        assert httpx.post(url, json=big, timeout=10).status_code == 413

        stack_file.write_text(stack_text(fake_backend, port))
        up.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while httpx.post(url, json=big, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "reload refused" in output and "reloaded" in output
