"""Slow and idle clients (``gateway.clients``): header and body read deadlines and the cap on open
connections, against the gateway as ``homellm up`` builds it: a real ``homellm up`` process, or
up's own ``running_stack`` in this process. The backend is a FAKE one
(homellm.gateway.fakebackend, not an engine): what is under test is the gateway's side.
Every connection is on loopback and bounded in number."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from homellm.config import ClientsConfig, load_stack, parse_stack
from homellm.errors import ConfigError
from homellm.gateway.fakebackend import FakeBackend
from homellm.reload import reload_stack
from homellm.up import Running, running_stack
from tests.conftest import fake_backend_process, free_port, wait_for_200
from tests.gateway.conftest import LoopThread, wait_until

ROOT = Path(__file__).resolve().parents[2]
HOMELLM = [sys.executable, "-m", "homellm.cli"]
CHAT = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def stack_text(fake_url: str, port: int, clients: str, limits: str = "{}") -> str:
    return (f"models:\n  m:\n    source: x/y\n    engine: vllm\n"
            f"    replicas: [{{url: '{fake_url}'}}]\n"
            f"gateway:\n  listen: 127.0.0.1:{port}\n  health: {{interval_s: 0.5}}\n"
            f"  clients: {clients}\n  limits: {limits}\n")


@contextlib.contextmanager
def in_process_gateway(lt: LoopThread, tmp_path: Path, clients: str, limits: str = "{}",
                       stack_file: Path | None = None) -> Iterator[tuple[Running, FakeBackend]]:
    """up's running_stack (its uvicorn server, its protocol) on the loop thread, in front of an
    in-process fake backend; with ``stack_file``, the stack is loaded from that file."""
    started: concurrent.futures.Future[tuple[Running, FakeBackend]] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def hold() -> None:
        fake = FakeBackend(name="remote")
        await fake.start()
        try:
            text = stack_text(fake.base_url, free_port(), clients, limits)
            if stack_file is not None:
                stack_file.write_text(text)
            stack = load_stack(stack_file) if stack_file is not None else parse_stack(text)
            async with running_stack(stack, tmp_path / "run") as running:
                started.set_result((running, fake))
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            await fake.stop()

    held = asyncio.run_coroutine_threadsafe(hold(), lt.loop)
    try:
        yield started.result(30)
    finally:
        lt.loop.call_soon_threadsafe(stop.set)
        held.result(30)


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def read_until_closed(sock: socket.socket, timeout: float, reset_ok: bool = True) -> bytes:
    """Everything the gateway sends until it closes the connection (AssertionError if it does
    not within ``timeout``, or if it resets the connection and not ``reset_ok``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"still open after {timeout} s; got {data[:200]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            assert reset_ok, f"connection reset after {data[:200]!r}"
            return data
        if not chunk:
            return data
        data += chunk


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


# -- hundreds of half-open connections against a real `homellm up` -------------------------------

HALF_OPEN = 300
HEADER_TIMEOUT_S = 5.0
PARTIAL_HEADS = (b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                 b"GET /health HTTP/1.1\r\nHo")


@pytest.fixture
def fake_backend() -> Iterator[str]:
    with fake_backend_process("--tokens", "4") as url:
        yield url


@contextlib.contextmanager
def up_process(tmp_path: Path, stack: str, port: int) -> Iterator[str]:
    stack_file = tmp_path / "homellm.yaml"
    stack_file.write_text(stack)
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen([*HOMELLM, "up", "-c", str(stack_file), "--run-dir",
                               str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_200(url + "/ready", up, 60, log_path.read_text)
            yield url
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(30)


def test_hundreds_of_half_open_connections_are_closed_while_a_client_is_served(
        tmp_path: Path, fake_backend: str) -> None:
    port = free_port()
    clients = f"{{header_timeout_s: {HEADER_TIMEOUT_S}, max_connections: 1000}}"
    with up_process(tmp_path, stack_text(fake_backend, port, clients), port) as url:
        attackers: list[tuple[socket.socket, bytes, float]] = []
        try:
            for i in range(HALF_OPEN):
                sock = connect(port)
                head = PARTIAL_HEADS[i % len(PARTIAL_HEADS)]
                if head:
                    sock.sendall(head)
                attackers.append((sock, head, time.monotonic()))
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
                def open_now() -> float:
                    return metric(client.get("/metrics").text,
                                  "homellm_gateway_client_connections")

                wait_until(lambda: open_now() > HALF_OPEN, 10, "the attack's connections open")
                for _ in range(5):  # a normal client, served while every attacker is open
                    reply = client.post("/v1/chat/completions", json=CHAT)
                    assert reply.status_code == 200, reply.text
                with client.stream("POST", "/v1/chat/completions",
                                   json={**CHAT, "stream": True}) as stream:
                    assert stream.status_code == 200
                    assert b"[DONE]" in b"".join(stream.iter_bytes())
                assert open_now() > HALF_OPEN, "the attack ended before the client was served"

            got: dict[int, bytes] = {}
            closed_at: dict[int, float] = {}
            selector = selectors.DefaultSelector()
            for index, (sock, _, _) in enumerate(attackers):
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, index)
                got[index] = b""
            deadline = attackers[-1][2] + HEADER_TIMEOUT_S + 15
            while len(closed_at) < HALF_OPEN:
                assert time.monotonic() < deadline, (
                    f"{HALF_OPEN - len(closed_at)} of {HALF_OPEN} half-open connections still "
                    f"open {HEADER_TIMEOUT_S + 15} s after the last one opened")
                for key, _ in selector.select(timeout=0.5):
                    index = key.data
                    try:
                        chunk = attackers[index][0].recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    got[index] += chunk
                    if not chunk:
                        closed_at[index] = time.monotonic()
                        selector.unregister(key.fileobj)
            selector.close()
        finally:
            for sock, _, _ in attackers:
                sock.close()

        for index, (_, head, opened) in enumerate(attackers):
            assert closed_at[index] >= opened + HEADER_TIMEOUT_S - 0.1, "closed before its time"
            if head:  # part of a request: a clear 408 in OpenAI's error shape
                assert got[index].startswith(b"HTTP/1.1 408 "), got[index][:200]
                body = json.loads(got[index].split(b"\r\n\r\n", 1)[1])
                assert body["error"]["code"] == "request_timeout"
                assert "gateway.clients.header_timeout_s" in body["error"]["message"]
            else:  # nothing sent: nothing to answer
                assert got[index] == b""
        text = httpx.get(url + "/metrics", timeout=10).text
        assert metric(text, "homellm_gateway_client_timeouts_total", '{phase="idle"}') \
            == HALF_OPEN // 3
        assert metric(text, "homellm_gateway_client_timeouts_total", '{phase="header"}') \
            == HALF_OPEN - HALF_OPEN // 3
        assert metric(text, "homellm_gateway_client_connections") == 1  # this scrape's own


# -- body: between two reads ---------------------------------------------------------------------


def test_a_stalled_body_gets_408_and_never_reaches_the_backend(loop_thread: LoopThread,
                                                               tmp_path: Path) -> None:
    body_timeout = 1.5
    body = json.dumps(CHAT).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
    clients = f"{{header_timeout_s: 30, body_timeout_s: {body_timeout}}}"
    with in_process_gateway(loop_thread, tmp_path, clients) as (running, fake):
        port = running.stack.gateway.port
        for after_a_response in (False, True):  # a new connection's request, and a keep-alive one
            with connect(port) as sock:
                if after_a_response:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    first = b""
                    while b"}" not in first:
                        first += sock.recv(65536)
                sock.sendall(head + body[:20])
                sent = time.monotonic()
                answer = read_until_closed(sock, body_timeout + 15)
                waited = time.monotonic() - sent
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == "request_timeout"
            assert "gateway.clients.body_timeout_s" in error["message"]
            assert waited >= body_timeout - 0.1
        assert fake.requests == 0  # the backend never saw either

        # a body that keeps arriving, each piece within body_timeout_s of the last, is served
        # even though the whole takes longer than body_timeout_s
        with connect(port) as sock:
            sock.sendall(head)
            started = time.monotonic()
            for at in range(0, len(body), len(body) // 4 + 1):
                time.sleep(body_timeout / 3)
                sock.sendall(body[at:at + len(body) // 4 + 1])
            assert time.monotonic() - started > body_timeout
            sock.settimeout(10)
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert fake.requests == 1
        text = httpx.get(running.url + "/metrics", timeout=10).text
        assert metric(text, "homellm_gateway_client_timeouts_total", '{phase="body"}') == 2


def test_an_early_answer_before_the_body_ends_still_times_out_the_idle_connection(
        loop_thread: LoopThread, tmp_path: Path) -> None:
    """The gateway answers 413 before the body is over; the rest of the body arrives after the
    answer; then the client goes quiet: the idle timeout closes the connection."""
    clients = "{idle_timeout_s: 1, body_timeout_s: 60, header_timeout_s: 60}"
    with in_process_gateway(loop_thread, tmp_path, clients, "{max_body_bytes: 1024}") as (
            running, fake):
        body = b'{"model": "m", "prompt": "' + b"x" * 20_000 + b'"}'
        with connect(running.stack.gateway.port) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % len(body))
            sent = 0
            while not select.select([sock], [], [], 0.2)[0]:  # until the gateway answers
                assert sent < len(body) // 2, "no 413 while the body was arriving"
                sock.sendall(body[sent:sent + 1024])
                sent += 1024
            answer = b""
            while b"}}" not in answer:  # the whole 413, sent before the body is over
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            sock.sendall(body[sent:])
            assert read_until_closed(sock, 15) == b""
        assert fake.requests == 0


def test_bytes_after_a_response_that_begin_no_request_are_timed_out(loop_thread: LoopThread,
                                                                   tmp_path: Path) -> None:
    """After a keep-alive response, a bare CRLF cancels uvicorn's keep-alive timer without
    starting a request; the header deadline still closes the connection."""
    clients = "{header_timeout_s: 1, idle_timeout_s: 60}"
    with in_process_gateway(loop_thread, tmp_path, clients) as (running, _), \
            connect(running.stack.gateway.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"}" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        assert b"200" not in read_until_closed(sock, 15)


# -- the connection cap --------------------------------------------------------------------------


def test_over_the_cap_new_connections_get_503_and_open_ones_keep_being_served(
        loop_thread: LoopThread, tmp_path: Path) -> None:
    cap = 4
    clients = f"{{max_connections: {cap}, header_timeout_s: 60, idle_timeout_s: 60}}"
    with in_process_gateway(loop_thread, tmp_path, clients) as (running, fake):
        port = running.stack.gateway.port
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(cap)]
        try:
            for conn in held:  # keep-alive connections, open and idle
                conn.request("GET", "/health")
                assert conn.getresponse().read() and conn.sock is not None
            refused = httpx.post(running.url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "too_many_connections"
            body = json.dumps(CHAT).encode()
            request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(body), body))
            for _ in range(5):
                # the request sent once the gateway has refused the connection (its 503 is
                # there): a refusal that closed at once would meet the request with a reset,
                # and the client would see an error instead of the 503
                with connect(port) as sock:
                    select.select([sock], [], [], 10)
                    sock.sendall(request)
                    time.sleep(0.05)
                    answer = read_until_closed(sock, 10, reset_ok=False)
                assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert fake.requests == 0
            for conn in held:  # the open ones are still served, on the same connections
                conn.request("POST", "/v1/chat/completions", json.dumps(CHAT),
                             {"content-type": "application/json"})
                reply = conn.getresponse()
                assert reply.status == 200, reply.read()
                reply.read()
            assert fake.requests == cap

            held[0].request("GET", "/metrics")
            text = held[0].getresponse().read().decode()
            assert metric(text, "homellm_gateway_client_connections_refused_total") == 6
            assert metric(text, "homellm_gateway_client_connections") == cap

            held.pop().close()  # one slot frees up: a new client gets in

            def admitted() -> bool:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    conn.request("GET", "/health")
                    return conn.getresponse().status == 200
                finally:
                    conn.close()

            wait_until(admitted, 10, "a new connection admitted once one closed")
        finally:
            for conn in held:
                conn.close()


def test_an_upgrade_request_is_plain_http_and_leaves_no_connection_counted(
        loop_thread: LoopThread, tmp_path: Path) -> None:
    """The gateway has no WebSocket route: ``Upgrade: websocket`` is answered as plain HTTP on
    the same protocol, so its connection is counted closed when it closes (an upgraded one would
    be counted open forever, and enough of them would fill max_connections)."""
    with in_process_gateway(loop_thread, tmp_path, "{max_connections: 10, idle_timeout_s: 60}"
                            ) as (running, _):
        for _ in range(3):
            with connect(running.stack.gateway.port) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                             b"Sec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with httpx.Client(base_url=running.url, timeout=10, trust_env=False) as client:
            wait_until(lambda: metric(client.get("/metrics").text,
                                      "homellm_gateway_client_connections") == 1,
                       10, "only the scrape's own connection open")


# -- reload, the stack file, check, docs ---------------------------------------------------------


def test_reload_applies_new_client_timeouts_to_new_connections(loop_thread: LoopThread,
                                                               tmp_path: Path) -> None:
    stack_file = tmp_path / "homellm.yaml"
    with in_process_gateway(loop_thread, tmp_path, "{header_timeout_s: 60}",
                            stack_file=stack_file) as (running, _):
        port = running.stack.gateway.port
        with connect(port) as before:
            text = stack_file.read_text().replace("header_timeout_s: 60",
                                                  "header_timeout_s: 0.5")
            stack_file.write_text(text)

            async def reload() -> dict[str, object]:
                running.stack, result = reload_stack(running.gateway, running.stack, stack_file,
                                                     loopback=True)
                return result

            assert loop_thread.run(reload())["changed"] == ["clients"]
            with connect(port) as after:
                assert read_until_closed(after, 10) == b""  # the new deadline: closed
            before.settimeout(0.5)  # the one opened before keeps its 60 s deadline
            with pytest.raises(TimeoutError):
                before.recv(1)


@pytest.mark.parametrize(("clients", "where"), [
    ("{header_timeout_s: 0}", "gateway.clients.header_timeout_s: Input should be greater than 0"),
    ("{body_timeout_s: -1}", "gateway.clients.body_timeout_s: Input should be greater than 0"),
    ("{idle_timeout_s: soon}", "gateway.clients.idle_timeout_s: Input should be a valid number, "
     "unable to parse string as a number"),
    ("{max_connections: 0}",
     "gateway.clients.max_connections: Input should be greater than or equal to 1"),
    ("{max_conections: 10}", "gateway.clients.max_conections: unknown field"),
])
def test_bad_client_settings_are_one_line_with_file_and_line(clients: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stack(stack_text("http://127.0.0.1:9", 8080, clients), "stack.yaml")
    assert str(caught.value) == f"stack.yaml:9: {where}"


def test_check_shows_the_client_settings_and_refuses_bad_ones(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    stack.write_text(stack_text("http://127.0.0.1:9", 8080, "{header_timeout_s: 2.5}"))
    shown = subprocess.run([*HOMELLM, "check", "-c", str(stack)], capture_output=True,
                           text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert ("clients: headers within 2.5 s, body reads at most 30 s apart, idle keep-alive "
            "15 s, at most 1024 connections") in shown.stdout
    as_json = subprocess.run([*HOMELLM, "check", "-c", str(stack), "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(as_json.stdout)["clients"] == {
        "header_timeout_s": 2.5, "body_timeout_s": 30.0, "idle_timeout_s": 15.0,
        "max_connections": 1024}

    stack.write_text(stack_text("http://127.0.0.1:9", 8080, "{max_connections: -5}"))
    refused = subprocess.run([*HOMELLM, "check", "-c", str(stack)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{stack}:9: gateway.clients.max_connections" in lines[0], \
        refused.stderr


def test_readme_client_settings_are_the_defaults() -> None:
    """The README's gateway.clients snippet parses as written and shows the real defaults."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
                 if "clients:" in b)
    stack = parse_stack("models:\n  m:\n    source: x/y\n    replicas: [{gpus: []}]\n" + block)
    assert stack.gateway.clients == ClientsConfig()
    for field in ClientsConfig.model_fields:
        assert field in block


def test_metrics_doc_names_every_client_metric(loop_thread: LoopThread, tmp_path: Path) -> None:
    with in_process_gateway(loop_thread, tmp_path, "{}") as (running, _):
        text = httpx.get(running.url + "/metrics", timeout=10).text
    names = set(re.findall(r"^(homellm_gateway_client\w*?)(?:\{| )", text, re.MULTILINE))
    assert names == {"homellm_gateway_client_connections",
                     "homellm_gateway_client_connections_refused_total",
                     "homellm_gateway_client_timeouts_total"}
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in names:
        assert f"`{name}`" in doc, name


def test_up_raises_the_open_file_limit_to_fit_the_cap() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * 1024 + 256:
        pytest.skip(f"the hard open-file limit here ({hard}) is below what the test raises to")
    code = ("import resource\n"
            "from homellm.gateway.connections import ensure_fd_limit\n"
            "ensure_fd_limit(1024)\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    assert int(done.stdout) == 2 * 1024 + 256


def test_the_cost_benchmark_runs() -> None:
    """benchmarks/client_deadlines_cost.py (docs/architecture.md quotes it), in a short run."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "client_deadlines_cost.py"),
                           "--rounds", "2", "--requests", "50"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert re.search(r"^guarded - uvicorn: [+-]\d+\.\d µs", done.stdout, re.MULTILINE), done.stdout
