"""The supervisor with real processes: restart, backoff, crash loops, clean stops, no orphans.

The supervised process here is a stand-in for an engine (Python's own http.server, or a short
script), since the supervisor only needs a process and a health URL; real engines are exercised
in tests/e2e.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from homellm.config import SupervisorConfig
from homellm.engines.base import LaunchSpec
from homellm.errors import SupervisorError
from homellm.supervisor import Supervisor, reap_leftovers
from tests.conftest import free_port

FAST = SupervisorConfig(ready_timeout_s=20, backoff_initial_s=0.2, backoff_max_s=1.0,
                        crash_loop_restarts=3, crash_loop_window_s=30, stop_grace_s=3)

# serves /health (a file named "health"), optionally spawning a long-lived child and/or exiting
ENGINE_STANDIN = textwrap.dedent("""
    import http.server, os, subprocess, sys, threading, time, functools
    port, folder, child, exit_after = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    if child == "child":
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(os.path.join(folder, "child.pid"), "w").write(str(kid.pid))
    print("stand-in engine listening", port, flush=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if exit_after > 0:
        time.sleep(exit_after); print("stand-in engine exits now", flush=True); os._exit(7)
    while True:
        time.sleep(1)
""")


def _spec(tmp_path: Path, name: str = "m/0", child: str = "none", exit_after: float = 0,
          argv: list[str] | None = None) -> LaunchSpec:
    folder = tmp_path / name.replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "health").write_text("ok")
    port = free_port()
    return LaunchSpec(
        model="m", replica=name, role="primary", engine="stand-in",
        argv=argv or [sys.executable, "-c", ENGINE_STANDIN, str(port), str(folder), child,
                      str(exit_after)],
        env={}, base_url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/health", upstream_model="m",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


async def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_restart_after_sigkill_and_clean_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        events: list[tuple[str, str]] = []
        spec = _spec(tmp_path, child="child")
        sup = Supervisor([spec], FAST, tmp_path / "run", lambda r, e, d: events.append((r, e)))
        await sup.start_all()
        status = sup.status()[0]
        assert status.state == "ready"
        first_pid = status.pid
        os.killpg(first_pid, signal.SIGKILL)
        await _wait_for(lambda: sup.status()[0].restarts == 1 and sup.status()[0].state == "ready")
        assert sup.status()[0].pid != first_pid
        child_pid = int((tmp_path / "m-0" / "child.pid").read_text())
        engine_pid = sup.status()[0].pid
        await sup.stop_all()
        assert not _alive(engine_pid) and not _alive(child_pid)
        assert ("m/0", "exited") in events and events.count(("m/0", "ready")) == 2
        log = Path(sup.status()[0].log_file).read_text()
        assert log.count("homellm starts") == 2 and "stand-in engine listening" in log

    asyncio.run(scenario())


def test_crash_loop_ends_in_failed_state(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = Supervisor([_spec(tmp_path, exit_after=0.4)], FAST, tmp_path / "run")
        await sup.start_all()
        await _wait_for(lambda: sup.status()[0].state == "failed", timeout=30)
        status = sup.status()[0]
        assert status.restarts == FAST.crash_loop_restarts - 1
        assert "exited with code 7" in status.last_error
        await sup.stop_all()

    asyncio.run(scenario())


def test_engine_that_exits_at_start_fails_with_its_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('CUDA out of memory (pretend)'); raise SystemExit(3)"]

    async def scenario() -> None:
        sup = Supervisor([_spec(tmp_path, argv=argv)], FAST, tmp_path / "run")
        with pytest.raises(SupervisorError) as info:
            await sup.start_all()
        first, _, rest = str(info.value).partition("\n")
        assert first.startswith("m/0 (stand-in) did not become ready: exited with code 3")
        assert "CUDA out of memory (pretend)" in rest

    asyncio.run(scenario())


def test_engine_that_never_gets_ready_is_killed(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('loading forever', flush=True); "
            "time.sleep(60)"]
    config = FAST.model_copy(update={"ready_timeout_s": 1.5})

    async def scenario() -> None:
        sup = Supervisor([_spec(tmp_path, argv=argv)], config, tmp_path / "run")
        started = time.monotonic()
        with pytest.raises(SupervisorError, match="not ready after 2 s"):
            await sup.start_all()
        assert time.monotonic() - started < 10
        assert sup.status()[0].pid is None

    asyncio.run(scenario())


def test_log_rotation(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time\nfor i in range(3000): print('x' * 60, i)\n"
            "time.sleep(60)"]
    config = FAST.model_copy(update={"log_max_bytes": 20_000, "log_backups": 2,
                                     "ready_timeout_s": 2})

    async def scenario() -> None:
        sup = Supervisor([_spec(tmp_path, argv=argv)], config, tmp_path / "run")
        with pytest.raises(SupervisorError):
            await sup.start_all()
        logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
        assert logs == ["m-0.log", "m-0.log.1", "m-0.log.2"]
        assert all(p.stat().st_size <= 21_000 for p in (tmp_path / "run" / "logs").iterdir())

    asyncio.run(scenario())


SUPERVISOR_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from homellm.config import SupervisorConfig
    from homellm.engines.base import LaunchSpec
    from homellm.supervisor import Supervisor
    spec = LaunchSpec(**json.loads(sys.argv[1]))
    async def main():
        sup = Supervisor([spec], SupervisorConfig(ready_timeout_s=20), Path(sys.argv[2]))
        await sup.start_all()
        print(sup.status()[0].pid, flush=True)
        await asyncio.sleep(120)
    asyncio.run(main())
""")


def test_sigkill_of_the_supervisor_leaves_no_engine(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG kills the engine; the next start reaps what the engine spawned."""
    import dataclasses
    import json

    spec = _spec(tmp_path, child="child")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR_SCRIPT,
                             json.dumps(dataclasses.asdict(spec)), str(run)],
                            stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(proc.stdout.readline())
        child_pid = int((tmp_path / "m-0" / "child.pid").read_text())
        assert _alive(engine_pid) and _alive(child_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(engine_pid), "engine outlived its SIGKILLed supervisor"
        assert child_pid in reap_leftovers(run)
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid)
    finally:
        proc.kill()
