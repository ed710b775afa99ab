"""Shared fixtures: free ports, the demo model (built once per session), the --run-slow switch."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the slow end-to-end tests (real engine processes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Nothing a test does lands in the user's ~/.cache/homellm."""
    if "HOMELLM_HOME" not in os.environ or os.environ.get("HOMELLM_TEST_HOME"):
        home = tmp_path_factory.getbasetemp() / "homellm-home"
        monkeypatch.setenv("HOMELLM_HOME", str(home))
        monkeypatch.setenv("HOMELLM_TEST_HOME", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo model (tokenizer + tiny Qwen3 in HF format), built once for the session."""
    from homellm.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


def wait_for_200(url: str, proc: subprocess.Popen, timeout_s: float,
                 why: Callable[[], str]) -> None:
    """Poll ``url`` until it answers 200, while ``proc`` lives, for at most ``timeout_s``;
    ``why()`` is the failure message (a log, say)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, why()
        time.sleep(0.1)


@contextlib.contextmanager
def fake_backend_process(*args: str) -> Iterator[str]:
    """A FAKE streaming backend (homellm.gateway.fakebackend) in its own process; yields its
    base URL once /health answers, terminates it afterwards."""

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "homellm.gateway.fakebackend", "--port",
                             str(port), *args])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_200(url + "/health", proc, 20, lambda: "fake backend never up")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
