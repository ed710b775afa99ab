"""Shared plumbing for the serving benchmarks: child processes, nginx, machine facts, versions.

Every process is started in its own session (its own process group) and ended as a group, so a
benchmark leaves nothing running, Ctrl-C and SIGTERM included (see ``sigterm_as_interrupt``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# -- processes ------------------------------------------------------------------------------


class Procs:
    """Processes started in their own session; ``stop_all`` ends each whole group, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[tuple[str, subprocess.Popen[bytes], float]] = []

    def start(self, name: str, argv: list[str], cpus: str | None = None,
              env: dict[str, str] | None = None, grace: float = 10.0) -> subprocess.Popen[bytes]:
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self.items.append((name, proc, grace))
        return proc

    def stop(self, name: str) -> None:
        for item in [i for i in self.items if i[0] == name]:
            _stop_group(item[1], item[2])
            self.items.remove(item)

    def stop_all(self) -> None:
        while self.items:
            _name, proc, grace = self.items.pop()
            _stop_group(proc, grace)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def sigterm_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so every ``finally`` stops what it started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None,
              headers: dict[str, str] | None = None) -> float:
    """Poll ``url`` until it answers 200; returns the seconds it took."""
    import httpx

    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} while starting\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, headers=headers, trust_env=False).status_code == 200:
                return time.monotonic() - begin
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- nginx ------------------------------------------------------------------------------------


def nginx_conf(folder: Path, listen: int, primary: int, backup: int, keepalive: int = 512,
               read_timeout_s: int = 600) -> str:
    """A complete nginx.conf: primary (max_fails=2 fail_timeout=30s) + backup, SSE pass-through."""
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
daemon off;
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp}
    upstream llm {{
        server 127.0.0.1:{primary} max_fails=2 fail_timeout=30s;
        server 127.0.0.1:{backup} backup;
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout {read_timeout_s}s;
            proxy_send_timeout {read_timeout_s}s;
            client_max_body_size 64m;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def start_nginx(procs: Procs, folder: Path, conf: str, cpus: str | None = None,
                name: str = "nginx") -> subprocess.Popen[bytes]:
    """Validate and start nginx in the foreground (``daemon off``) as a child of ours."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"),
            "-e", str(folder / "error.log")]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {check.stderr.strip()}")
    return procs.start(name, argv, cpus=cpus, grace=5)


# -- machine and versions --------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kib / 2**20, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": [round(v, 2) for v in os.getloadavg()]}


def versions(litellm_python: Path | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("homellm", "aiohttp", "uvicorn", "uvloop", "starlette", "transformers", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    if shutil.which("nginx"):
        proc = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        out["nginx"] = proc.stderr.strip().removeprefix("nginx version: ")
    else:
        out["nginx"] = "absent"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    out["git"] = (head or "unknown") + (" (src/ has uncommitted changes)" if dirty else "")
    if litellm_python and litellm_python.exists():
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        proc = subprocess.run([str(litellm_python), "-c", code], capture_output=True, text=True)
        out["litellm"] = proc.stdout.strip() or "broken"
    return out


def busy_note() -> str:
    """A warning when other work loads the CPUs (the figures are then noisier)."""
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    return f"load average {load1:.2f} on {cpus} CPUs" + (
        " - the machine is busy, expect noisy figures" if load1 > 0.5 * cpus else "")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
