"""SIGKILL the primary engine under load: homellm's gateway vs nginx (primary + ``backup``).

Two REAL engines (``transformers serve`` replicas of the demo model, on CPU) are started and
supervised by ``homellm up``, so a killed primary is restarted by homellm's supervisor (in the
nginx scenario that plays systemd's ``Restart=on-failure``). Each scenario starts a fresh stack:

- ``homellm``: the load goes through the homellm gateway (its default health settings);
- ``nginx``: the load goes through nginx (``max_fails=2 fail_timeout=30s`` primary, ``backup``
  server, default ``proxy_next_upstream error timeout``) pointed at the same two engine ports.

A closed loop of ``--concurrency`` streaming chat completions runs for ``--duration`` s; the
primary engine is SIGKILLed ``--kill-at`` s after the load starts. Per scenario: failed requests
(before the first byte / cut mid-stream), kill → first success from the backup, kill → primary
engine healthy again, kill → primary back in rotation (a request served by it again).

    python benchmarks/failover.py [--out bench-out/failover] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from _infra import (
    PYTHON,
    Procs,
    busy_note,
    free_port,
    machine_info,
    nginx_conf,
    sigterm_as_interrupt,
    start_nginx,
    versions,
    wait_http,
    write_json,
)
from _loadgen import (
    BEFORE_FIRST_BYTE,
    MID_STREAM,
    OK,
    Record,
    chat_body,
    run_loop,
    stream_chat,
)
from homellm.supervisor import reap_leftovers


def stack_yaml(model_dir: Path, gateway: int, primary: int, backup: int) -> str:
    """Two CPU replicas; gateway and supervisor left at homellm's defaults."""
    return f"""\
models:
  tiny:
    source: {model_dir}
    engine: transformers
    device: cpu
    replicas:
      - {{role: primary, port: {primary}}}
      - {{role: backup, port: {backup}}}
gateway:
  listen: 127.0.0.1:{gateway}
"""


def engine_pid(run_dir: Path, port: int) -> int | None:
    """The live engine process of this run folder listening on ``port`` (by its env marker)."""
    marker = f"HOMELLM_ENGINE_OF={run_dir.resolve()}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if (entry / "stat").read_text().split(") ")[1].startswith("Z"):
                continue
        except OSError:
            continue
        if b"--port" in cmdline and cmdline[cmdline.index(b"--port") + 1] == str(port).encode():
            return int(entry.name)
    return None


async def poll_health(url: str, stop: asyncio.Event, t0: float, out: list[tuple[float, bool]]
                      ) -> None:
    """Record each up/down change of ``url`` (GET → 200) as (seconds since t0, up)."""
    last: bool | None = None
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            try:
                async with session.get(url) as resp:
                    up = resp.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                up = False
            if up != last:
                out.append((round(time.perf_counter() - t0, 3), up))
                last = up
            await asyncio.sleep(0.2)


async def drive(url: str, model: str, args: argparse.Namespace, run_dir: Path, primary: int,
                backend_header: str) -> dict[str, Any]:
    """The closed loop, the kill at ``kill_at``, and the primary's health timeline."""
    body = chat_body(model, args.max_tokens)
    headers = {"Content-Type": "application/json"}
    rows: list[tuple[int, Record]] = []
    health: list[tuple[float, bool]] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()
    end_at = t0 + args.duration
    kill: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:

        async def worker(lane: int) -> None:
            while time.perf_counter() < end_at:
                rows.append((lane, await stream_chat(session, url, body, headers, None,
                                                     backend_header)))

        async def killer() -> None:
            await asyncio.sleep(args.kill_at)
            pid = engine_pid(run_dir, primary)
            if pid is None:
                kill["error"] = "no primary engine process found"
                return
            os.kill(pid, signal.SIGKILL)
            kill.update(pid=pid, t=round(time.perf_counter() - t0, 3))

        monitor = asyncio.create_task(
            poll_health(f"http://127.0.0.1:{primary}/health", stop, t0, health))
        await asyncio.gather(killer(), *(worker(lane) for lane in range(args.concurrency)))
        stop.set()
        await monitor
    requests = [{
        "lane": lane, "start": round(r.start - t0, 4),
        "first_byte": None if r.first_byte is None else round(r.first_byte - t0, 4),
        "end": round(r.end - t0, 4), "status": r.status, "tokens": r.tokens,
        "outcome": r.outcome, "error": r.error, "backend": r.backend, "attempts": r.attempts,
    } for lane, r in rows]
    return {"kill": kill, "primary_health": health, "requests": requests}


def role_of(backend: str, names: dict[str, str]) -> str:
    """'primary'/'backup' from x-homellm-backend ('tiny/0') or nginx's $upstream_addr list."""
    last = backend.split(",")[-1].strip()
    return names.get(last, "?" if last else "none")


def metrics(run: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    reqs = sorted(run["requests"], key=lambda r: r["start"])
    for r in reqs:
        r["role"] = role_of(r["backend"], names)
        r["retried"] = r["attempts"] > 1
    t_kill = run["kill"].get("t")
    out: dict[str, Any] = {
        "requests": len(reqs), "ok": sum(r["outcome"] == OK for r in reqs),
        "failed_before_first_byte": sum(r["outcome"] == BEFORE_FIRST_BYTE for r in reqs),
        "cut_mid_stream": sum(r["outcome"] == MID_STREAM for r in reqs),
        "retried_by_proxy": sum(r["retried"] for r in reqs),
        "served_ok": {role: sum(r["outcome"] == OK and r["role"] == role for r in reqs)
                      for role in ("primary", "backup")},
        "kill_s": t_kill,
    }
    if t_kill is None:
        return out

    def after(seconds: list[float]) -> float | None:
        later = [s for s in seconds if s > t_kill]
        return round(min(later) - t_kill, 3) if later else None

    ok_backup = [r for r in reqs if r["outcome"] == OK and r["role"] == "backup"]
    out["kill_to_first_backup_success_s"] = after([r["end"] for r in ok_backup])
    out["kill_to_first_backup_byte_s"] = after([r["first_byte"] for r in ok_backup])
    back = [r["first_byte"] for r in reqs if r["outcome"] == OK and r["role"] == "primary"
            and r["start"] > t_kill]
    out["kill_to_primary_back_in_rotation_s"] = after(back)
    ups = [t for t, up in run["primary_health"] if up]
    out["kill_to_primary_engine_healthy_s"] = after(ups)
    keys = ("start", "first_byte", "end", "outcome", "backend", "attempts", "error")
    out["failures"] = [{k: r[k] for k in keys} for r in reqs if r["outcome"] != OK]
    return out


async def scenario(kind: str, args: argparse.Namespace, model_dir: Path, tmp: Path,
                   procs: Procs) -> dict[str, Any]:
    folder = tmp / kind
    folder.mkdir()
    gateway, primary, backup = free_port(), free_port(), free_port()
    stack = folder / "stack.yaml"
    stack.write_text(stack_yaml(model_dir, gateway, primary, backup))
    run_dir = folder / "run"
    up = procs.start(f"{kind}-up", [PYTHON, "-m", "homellm.cli", "--log-level", "info",
                                            "up", "-c", str(stack), "--run-dir", str(run_dir)],
                     grace=30)
    log = procs.log_dir / f"{kind}-up.log"
    copies = {log: f"{kind}-homellm-up.log", folder / "nginx" / "error.log": f"{kind}-nginx.log"}
    try:
        began = time.perf_counter()
        wait_http(f"http://127.0.0.1:{gateway}/ready", up, 300, log)
        for port in (primary, backup):
            wait_http(f"http://127.0.0.1:{port}/health", up, 120, log)
        startup = round(time.perf_counter() - began, 1)
        names = {"tiny/0": "primary", "tiny/1": "backup",
                 f"127.0.0.1:{primary}": "primary", f"127.0.0.1:{backup}": "backup"}
        if kind == "homellm":
            url, model, header = f"http://127.0.0.1:{gateway}", "tiny", "x-homellm-backend"
        else:
            listen = free_port()
            proc = start_nginx(procs, folder / "nginx", nginx_conf(folder / "nginx", listen,
                                                                  primary, backup, keepalive=16),
                               name=f"{kind}-nginx")
            wait_http(f"http://127.0.0.1:{listen}/health", proc, 20)
            url, model, header = f"http://127.0.0.1:{listen}", str(model_dir), "x-upstream"
        print(f"{kind}: stack ready in {startup} s; load for {args.duration} s, "
              f"SIGKILL primary at {args.kill_at} s", flush=True)
        run = await drive(url + "/v1/chat/completions", model, args, run_dir, primary, header)
        run["startup_s"] = startup
        run["metrics"] = metrics(run, names)
        return run
    finally:
        procs.stop_all()
        reap_leftovers(run_dir)
        for src, name in copies.items():
            if src.exists():
                shutil.copy(src, args.out / name)


COLOURS = {("primary", OK): "tab:blue", ("backup", OK): "tab:orange"}


def plot(results: dict[str, dict[str, Any]], file: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.2 + 1.6 * len(results)),
                             sharex=True, squeeze=False)
    for ax, (kind, run) in zip(axes[:, 0], results.items(), strict=True):
        for r in run["requests"]:
            colour = {BEFORE_FIRST_BYTE: "red", MID_STREAM: "magenta"}.get(
                r["outcome"], COLOURS.get((r.get("role", "?"), r["outcome"]), "grey"))
            ax.barh(r["lane"], r["end"] - r["start"], left=r["start"], height=0.55,
                    color=colour, edgecolor="white", linewidth=0.6)
            if r["outcome"] != OK:
                ax.plot(r["end"], r["lane"], "x", color="black", ms=7)
        m = run["metrics"]
        if m.get("kill_s") is not None:
            t = m["kill_s"]
            ax.axvline(t, color="black", lw=1.5)
            for key, style in (("kill_to_primary_engine_healthy_s", "g--"),
                               ("kill_to_primary_back_in_rotation_s", "b:")):
                if m.get(key) is not None:
                    ax.axvline(t + m[key], color=style[0], ls=style[1:], lw=1.5)
        ax.set_title(f"{kind}: {m['ok']} ok, {m['failed_before_first_byte']} failed before first "
                     f"byte, {m['cut_mid_stream']} cut mid-stream", fontsize=9)
        ax.set_ylabel("worker")
        ax.set_yticks(range(max(r["lane"] for r in run["requests"]) + 1))
    axes[-1, 0].set_xlabel("seconds since load start")
    legend = [Line2D([], [], color=c, lw=5) for c in ("tab:blue", "tab:orange", "red", "magenta")]
    legend += [Line2D([], [], color="black"), Line2D([], [], color="g", ls="--"),
               Line2D([], [], color="b", ls=":")]
    fig.legend(legend, ["primary ok", "backup ok", "failed before first byte", "cut mid-stream",
                        "SIGKILL primary", "primary engine healthy", "primary back in rotation"],
               loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(file, dpi=110)


def fmt(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.2f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("requests (ok)", lambda m: f"{m['requests']} ({m['ok']})"),
            ("failed before first byte", lambda m: str(m["failed_before_first_byte"])),
            ("cut mid-stream", lambda m: str(m["cut_mid_stream"])),
            ("retried on the other backend by the proxy", lambda m: str(m["retried_by_proxy"])),
            ("served ok by primary / backup",
             lambda m: f"{m['served_ok']['primary']} / {m['served_ok']['backup']}"),
            ("kill → first backup success (end of stream), s",
             lambda m: fmt(m.get("kill_to_first_backup_success_s"))),
            ("kill → first byte of that success, s",
             lambda m: fmt(m.get("kill_to_first_backup_byte_s"))),
            ("kill → primary engine healthy again, s",
             lambda m: fmt(m.get("kill_to_primary_engine_healthy_s"))),
            ("kill → primary back in rotation, s",
             lambda m: fmt(m.get("kill_to_primary_back_in_rotation_s")))]
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(get(r["metrics"]) for r in results.values())
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/failover"))
    parser.add_argument("--scenarios", default="homellm,nginx")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--duration", type=float, default=55.0)
    parser.add_argument("--kill-at", type=float, default=12.0)
    parser.add_argument("--model-dir", type=Path, help="demo model folder (built if missing)")
    parser.add_argument("--quick", action="store_true", help="homellm only, 20 s of load")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios, args.duration, args.kill_at = "homellm", 20.0, 6.0
    sigterm_as_interrupt()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    info = {"machine": machine_info(), "versions": versions(), "busy_before": busy_note()}
    print(info["busy_before"], flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="homellm-failover-") as tmpname:
        tmp = Path(tmpname)
        from homellm.demo import build_demo_model

        model_dir = build_demo_model(args.model_dir or tmp / "demo-model")
        procs = Procs(tmp)
        try:
            for kind in args.scenarios.split(","):
                results[kind] = run_loop(scenario(kind, args, model_dir, tmp, procs))
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    wall = round(time.perf_counter() - began, 1)
    text = table(results)
    write_json(args.out / "results.json", {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **info, "busy_after": busy_note(), "wall_s": wall, "scenarios": results})
    plot(results, args.out / "timeline.png",
         f"SIGKILL primary at {args.kill_at:g} s under {args.concurrency} concurrent streams "
         f"(max_tokens {args.max_tokens}); transformers serve on CPU, restarted by homellm")
    (args.out / "table.md").write_text(text + "\n")
    print(f"\n{text}\n")
    for kind, run in results.items():
        for failure in run["metrics"].get("failures", [])[:8]:
            print(f"{kind}: {json.dumps(failure)}")
    print(f"wall {wall} s; figures in {args.out}/results.json, timeline.png, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
