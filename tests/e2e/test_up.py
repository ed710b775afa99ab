"""`homellm up` end to end: real `transformers serve` engines, real gateway, the openai client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import (
    UpProcess,
    engine_pids,
    pid_on_port,
    start_up,
    wait_ready,
    write_stack,
)

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Привет! Как дела?"}]


def _client(stack: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_sync_and_async(two_replica_stack: UpProcess) -> None:
    client = _client(two_replica_stack)
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                                 stream=True))
    assert any(c.choices and c.choices[0].delta.content is not None for c in chunks)
    text = client.completions.create(model="tiny", prompt="Привет", max_tokens=5)
    assert text.choices and text.usage.completion_tokens >= 1
    assert [m.id for m in client.models.list()] == ["tiny"]

    async def run_async() -> None:
        aclient = openai.AsyncOpenAI(base_url=f"{two_replica_stack.url}/v1", api_key="unused",
                                     max_retries=0)
        replies = await asyncio.gather(*(aclient.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=6) for _ in range(3)))
        assert all(r.choices for r in replies)
        stream = await aclient.chat.completions.create(model="tiny", messages=MESSAGES,
                                                       max_tokens=6, stream=True)
        assert [c async for c in stream]
        await aclient.close()

    asyncio.run(run_async())


def test_traffic_goes_to_the_primary(two_replica_stack: UpProcess) -> None:
    with httpx.Client(timeout=30) as http:
        backends = {http.post(f"{two_replica_stack.url}/v1/chat/completions",
                              json={"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
                              ).headers["x-homellm-backend"] for _ in range(4)}
    assert backends == {"tiny/0"}


def _homellm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homellm.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_status_drain_undrain_from_the_cli(two_replica_stack: UpProcess) -> None:
    where = ["-c", str(two_replica_stack.stack), "--run-dir", str(two_replica_stack.run_dir)]
    done = _homellm("status", *where, "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["replicas"]}
    assert rows["tiny/0"]["display_state"] == "ready" and rows["tiny/0"]["pid"]
    assert rows["tiny/1"]["role"] == "backup" and rows["tiny/1"]["process_state"] == "ready"
    assert "tiny/0" in _homellm("status", *where).stdout
    assert json.loads(_homellm("drain", "tiny", "0", *where).stdout)["complete"] is True
    with httpx.Client(timeout=30) as http:
        body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
        served = {http.post(f"{two_replica_stack.url}/v1/chat/completions", json=body)
                  .headers["x-homellm-backend"] for _ in range(3)}
        assert served == {"tiny/1"}
        assert json.loads(_homellm("undrain", "tiny", "0", *where).stdout)["drained"] is False
        assert http.post(f"{two_replica_stack.url}/v1/chat/completions", json=body
                         ).headers["x-homellm-backend"] == "tiny/0"
    wrong = _homellm("drain", "tiny", "9", *where)
    assert wrong.returncode == 1 and "no replica 'tiny/9'" in wrong.stderr
    key_file = two_replica_stack.run_dir / "admin.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().strip() not in two_replica_stack.output()


def test_bad_requests_get_openai_errors(two_replica_stack: UpProcess) -> None:
    client = _client(two_replica_stack)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    response = httpx.post(f"{two_replica_stack.url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_failover_under_load_when_the_primary_is_sigkilled(two_replica_stack: UpProcess) -> None:
    """Bounded load (4 streams, ≤ 60 s); SIGKILL the primary engine mid-run."""
    stack = two_replica_stack
    primary_pid = pid_on_port(stack.run_dir, stack.ports["tiny/0"])
    assert primary_pid is not None
    results: list[dict[str, object]] = []
    stop = threading.Event()
    kill_time: list[float] = []

    def worker() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                record: dict[str, object] = {"first_byte": False, "ok": False,
                                             "start": time.monotonic()}
                try:
                    with http.stream("POST", f"{stack.url}/v1/chat/completions", json={
                            "model": "tiny", "messages": MESSAGES, "max_tokens": 16,
                            "stream": True}) as response:
                        record["backend"] = response.headers.get("x-homellm-backend")
                        record["status"] = response.status_code
                        for line in response.iter_lines():
                            record["first_byte"] = True
                            if line.startswith("data: {") and '"error"' in line:
                                record["error"] = json.loads(line[6:])["error"]
                        record["ok"] = response.status_code == 200 and "error" not in record
                except httpx.HTTPError as exc:
                    record["exception"] = repr(exc)
                results.append(record)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        kill_time.append(time.monotonic())
        os.killpg(primary_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = [r for r in results if r["start"] > kill_time[0] + 1 and r["ok"]]
            if any(r.get("backend") == "tiny/0" for r in after):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(40)
    after_kill = [r for r in results if r["start"] >= kill_time[0]]
    never_started = [r for r in results if not r["ok"] and not r["first_byte"]]
    cut = [r for r in results if not r["ok"] and r["first_byte"]]
    assert not never_started, never_started  # nothing lost before its first byte
    for record in cut:  # cut mid-stream: a clean OpenAI-style error event, not a hang
        assert record["error"]["code"] == "upstream_disconnected"
    assert any(r["ok"] and r["backend"] == "tiny/1" for r in after_kill), "backup never served"
    new_pid = pid_on_port(stack.run_dir, stack.ports["tiny/0"])
    assert new_pid is not None and new_pid != primary_pid, "primary was not restarted"
    assert any(r["ok"] and r["backend"] == "tiny/0" for r in after_kill), \
        "traffic did not return to the restarted primary"


def test_engine_that_never_gets_ready_fails_up_with_its_log(tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{broken json")
    stack = write_stack(tmp_path / "homellm.yaml", not_a_model, free_port(), [free_port()])
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    code = process.wait(120)
    output = log.read_text()
    assert code == 1, output
    assert "error: tiny/0 (transformers) did not become ready" in output
    assert "--- last log lines ---" in output
    assert "Traceback (most recent call last)" not in output.split("--- last log lines ---")[0]
    assert engine_pids(run_dir) == {}


def test_ctrl_c_the_moment_the_gateway_answers_stops_a_serving_stack(demo_model: Path,
                                                                     tmp_path: Path) -> None:
    """The first /ready answer and Ctrl-C back to back: the gateway was serving, so this stops a
    serving stack (not a start cut short). CI once caught the gap between the two."""
    gateway = free_port()
    stack = write_stack(tmp_path / "homellm.yaml", demo_model, gateway, [free_port()])
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    url = f"http://127.0.0.1:{gateway}/ready"
    deadline = time.monotonic() + 150
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.get(url).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 130, log.read_text()
    assert "SIGINT: stopping engines" in log.read_text()
    assert "while starting" not in log.read_text()


# the one rule (README, docs/architecture.md): SIGTERM, as service managers stop a service, is
# a clean stop (0); Ctrl-C is 130, as shells report an interrupted command; the phase changes
# only the message
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


@pytest.mark.parametrize("phase", ["starting", "serving"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_one_exit_code_per_signal_while_starting_and_serving(demo_model: Path, tmp_path: Path,
                                                             sig: signal.Signals,
                                                             phase: str) -> None:
    gateway = free_port()
    stack = write_stack(tmp_path / "homellm.yaml", demo_model, gateway, [free_port()])
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    if phase == "serving":
        wait_ready(f"http://127.0.0.1:{gateway}", process, log)
        assert len(engine_pids(run_dir)) == 1
    else:
        deadline = time.monotonic() + 60
        while "started pid=" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" not in log.read_text().split("started pid=")[-1]  # still starting
    process.send_signal(sig)
    assert process.wait(30) == EXIT_CODES[sig], log.read_text()
    output = log.read_text()
    assert (f"{sig.name} while starting: engines stopped" if phase == "starting"
            else f"{sig.name}: stopping engines") in output
    assert "Traceback" not in output
    deadline = time.monotonic() + 10
    while engine_pids(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_pids(run_dir) == {}, f"engine outlived `up` after {sig.name}"


def test_sigterm_before_anything_starts_exits_0(tmp_path: Path) -> None:
    """SIGTERM while `up` is still reading the stack file (before its event loop): 0 as well.
    A source that is a FIFO holds load_stack's read until the signal has landed."""
    fifo = tmp_path / "homellm.yaml"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open, never written: up's read waits
    try:
        log = tmp_path / "up.log"
        process = start_up(fifo, tmp_path / "run", log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _reads(process.pid, fifo):
            time.sleep(0.05)
        assert _reads(process.pid, fifo), "up never opened the stack file"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        os.close(writer)
    assert "Traceback" not in log.read_text()


def _reads(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        return any(os.readlink(fd) == os.path.realpath(path)
                   for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_sigkill_leaves_no_engine(demo_model: Path, tmp_path: Path) -> None:
    gateway = free_port()
    stack = write_stack(tmp_path / "homellm.yaml", demo_model, gateway, [free_port()])
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    process = start_up(stack, run_dir, log)
    wait_ready(f"http://127.0.0.1:{gateway}", process, log)
    assert len(engine_pids(run_dir)) == 1
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while engine_pids(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_pids(run_dir) == {}, "engine outlived `up` after SIGKILL"
