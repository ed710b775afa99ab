"""How many streamed SSE messages per second does one ``homellm bench`` process sustain before its
own timing degrades, next to guidellm, against the same loopback streaming server?

The server is ``homellm.bench.mockserver.MockServer`` (run here with ``--serve``): every request
gets ``--messages`` token messages, the first ``--ttft-ms`` after the request arrived and then one
every ``--delay-ms``, on due times counted from the request's arrival (so the server's own lag does
not accumulate). It runs alone on CPU 1; the client under test alone on CPU 0 (``taskset``), so
each tool gets exactly one core. The server also times a 10 ms timer in its own loop: its lag says
whether the server, not the client, was late.

**Step load** (closed loop, ``--levels`` concurrent streams, ``--duration`` s each): per level and
tool, messages/s received during the measured duration, median ITL and TTFT as the tool itself
reports them, failures, and for homellm its own self-check (event-loop lag, send lag, CPU busy).
A level is **sustained** when, with the same rules for both tools:

- the median ITL is within ``--itl-tolerance`` (10 %) of the server's delay, and
- the messages/s received are at least ``--rate-floor`` (90 %) of what the streams would get from
  a client that adds nothing: ``C × N / (TTFT + (N − 1) × delay)`` (the tool did not fall
  behind), and
- no request failed (requests still in flight when the duration ends do not count as failed).

A tool's sustained rate is its messages/s at the highest sustained level; the ratio is
homellm ÷ guidellm. When homellm passes the top level the ratio is a lower bound. A stricter
figure for homellm alone also asks its own self-check (``valid``) to pass; guidellm has no such
check, so that ratio is given next to the first, not instead of it.

**TTFT/ITL comparison**: both tools against one more server (TTFT ≠ delay, so the two cannot be
mixed up) at ``--compare-concurrency`` streams; medians side by side with the server's timing.

guidellm runs from its own venv (``--guidellm-venv``, default /tmp/guidellm-venv); without it the
script measures homellm alone and says why. guidellm needs a tokenizer for its synthetic prompts:
the demo model's (``homellm.demo.build_demo_model``), built into the temporary folder.

    python benchmarks/bench_client.py [--quick] [--no-guidellm] [--out bench-out/bench_client]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _infra import (
    PYTHON,
    REPO,
    Procs,
    busy_note,
    free_port,
    group_cpu_s,
    machine_info,
    sigterm_as_interrupt,
    versions,
    wait_http,
    write_json,
)

HERE = Path(__file__).resolve().parent


# -- the server (``--serve``) -----------------------------------------------------------------


def serve(port: int, ttft_ms: float, delay_ms: float, messages: int) -> None:
    """MockServer with a ``GET /stats`` (``?reset`` starts a new window): requests, the lag of a
    10 ms timer in the server's loop, CPU busy fraction."""
    import asyncio

    import numpy as np

    from homellm.bench.mockserver import MockServer, MockTiming

    lags: list[float] = []
    window = {"cpu": time.process_time(), "wall": time.perf_counter(), "requests": 0}

    class Server(MockServer):
        async def _answer(self, method: str, path: str, body: bytes,
                          writer: asyncio.StreamWriter) -> None:
            if method == "get" and path.startswith("/stats"):
                cpu, wall = time.process_time(), time.perf_counter()
                data = json.dumps({
                    "requests": self.requests - window["requests"],
                    "lag_p50_ms": float(np.percentile(lags, 50)) * 1e3 if lags else None,
                    "lag_p99_ms": float(np.percentile(lags, 99)) * 1e3 if lags else None,
                    "lag_max_ms": max(lags) * 1e3 if lags else None,
                    "cpu_busy": (cpu - window["cpu"]) / max(wall - window["wall"], 1e-9),
                }).encode()
                if "reset" in path:
                    lags.clear()
                    window.update(cpu=cpu, wall=wall, requests=self.requests)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(data), data))
                return
            await super()._answer(method, path, body, writer)

    async def main() -> None:
        server = Server(MockTiming(ttft_ms / 1e3, delay_ms / 1e3, messages), port=port)
        await server.start()
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(max(0.0, time.perf_counter() - t0 - 0.01))

    import uvloop

    uvloop.run(main())


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    import httpx

    answer = httpx.get(url + "/stats" + ("?reset" if reset else ""), timeout=10, trust_env=False)
    return dict(answer.json())


# -- the tools ---------------------------------------------------------------------------------


def ideal_rate(concurrency: int, ttft_ms: float, delay_ms: float, messages: int) -> float:
    """Messages/s of ``concurrency`` closed-loop streams if the client added no time at all."""
    return concurrency * messages / ((ttft_ms + (messages - 1) * delay_ms) / 1000.0)


def run_homellm(url: str, concurrency: int, args: argparse.Namespace, folder: Path,
                cpus: str | None) -> dict[str, Any]:
    """One ``homellm bench`` process (one worker, the default) at one concurrency."""
    argv = [PYTHON, "-m", "homellm.cli", "bench", "--url", url, "--model", "mock",
            "--concurrency", str(concurrency), "--duration", str(args.duration),
            "--input-len", "16", "--output-len", str(args.messages), "--num-prompts", "64",
            "--no-calibrate", "--no-progress", "--out", str(folder)]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    begin = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          timeout=args.duration + 180)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(f"homellm bench failed ({done.returncode}): {done.stderr[-1500:]}"
                           f"{done.stdout[-1500:]}")
    result = json.loads((folder / "bench.json").read_text())
    records = [json.loads(line) for line in (folder / "bench.jsonl").read_text().splitlines()
               if line.strip()]
    # messages received while the load ran, every request counted (also those cancelled at the
    # end), over the run's duration from its scheduled start: guidellm's output tokens/s rule
    start = min(r["scheduled_at"] for r in records)
    end = start + args.duration
    received = sum(1 for r in records for t in r["chunk_times"] if start <= t <= end)
    overhead = result["bench_card"]["client_overhead"]
    failed = {k: v for k, v in (result.get("errors_by_kind") or {}).items()
              if v and k != "cancelled"}
    return {
        "tool": "homellm", "concurrency": concurrency, "messages_per_s": received / args.duration,
        "median_itl_ms": result["median_itl_ms"], "p99_itl_ms": result.get("p99_itl_ms"),
        "median_ttft_ms": result["median_ttft_ms"], "p99_ttft_ms": result.get("p99_ttft_ms"),
        "completed": result["completed"], "failed": sum(failed.values()), "failures": failed,
        "self_check_valid": result["valid"], "self_check_reasons": result["invalid_reasons"],
        "loop_lag_p99_ms": overhead["loop_lag_p99_ms"],
        "send_lag_p50_ms": overhead["send_lag_p50_ms"],
        "send_lag_p99_ms": overhead["send_lag_p99_ms"], "cpu_busy": overhead["cpu_busy_max"],
        "process_wall_s": round(wall, 2),
    }


def guidellm_bin(args: argparse.Namespace) -> Path:
    return Path(args.guidellm_venv) / "bin" / "guidellm"


def run_guidellm(url: str, levels: list[int], args: argparse.Namespace, folder: Path,
                 tokenizer: Path, cpus: str | None) -> list[dict[str, Any]]:
    """One ``guidellm run`` with a concurrent profile, one sub-benchmark per level (its
    start-up, ~20 s on one core, is paid once). Its defaults otherwise (worker processes,
    HTTP client), all on the client's CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "guidellm.json"
    argv = [str(guidellm_bin(args)), "run",
            "--backend", f"kind=openai_http,target={url},model=mock",
            "--profile", f"kind=concurrent,streams={levels[0]}",
            "--override", "profile.streams", ",".join(str(c) for c in levels),
            "--constraint", f"kind=max_duration,seconds={args.duration:g}",
            "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={args.messages}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--output", f"kind=json,path={out}", "--disable-console"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    begin = time.perf_counter()
    with (folder / "guidellm.log").open("wb") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                              timeout=120 + len(levels) * (args.duration + 60))
    wall = time.perf_counter() - begin
    if done.returncode != 0 or not out.exists():
        tail = (folder / "guidellm.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"guidellm failed ({done.returncode}): {tail}")
    rows = []
    for bench in json.loads(out.read_text())["benchmarks"]:
        m = bench["metrics"]
        totals = m["request_totals"]
        sched = bench.get("scheduler_metrics") or {}
        rows.append({
            "tool": "guidellm", "concurrency": bench["config"]["strategy"]["streams"],
            # output tokens/s over the benchmark's duration, every request counted; the server
            # sends one token per message, so these are messages/s
            "messages_per_s": m["output_tokens_per_second"]["total"]["mean"],
            "median_itl_ms": m["inter_token_latency_ms"]["successful"]["median"],
            "median_ttft_ms": m["time_to_first_token_ms"]["successful"]["median"],
            "completed": totals["successful"], "failed": totals["errored"],
            "failures": {"errored": totals["errored"]} if totals["errored"] else {},
            "duration_s": bench["duration"],
            "request_start_delay_avg_ms": _ms(sched.get("request_start_delay_avg")),
            "request_targeted_start_delay_avg_ms":
                _ms(sched.get("request_targeted_start_delay_avg")),
            "warnings": [str(w.get("message", w)) if isinstance(w, dict) else str(w)
                         for w in bench.get("warnings") or []][:5],
            "process_wall_s": round(wall, 2),
        })
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# -- analysis ------------------------------------------------------------------------------------


def judge(row: dict[str, Any], args: argparse.Namespace) -> None:
    """Mark a row sustained or not, with the reasons (same rules for both tools)."""
    ideal = ideal_rate(row["concurrency"], args.ttft_ms, args.delay_ms, args.messages)
    row["ideal_messages_per_s"] = round(ideal, 1)
    row["rate_fraction"] = round(row["messages_per_s"] / ideal, 4)
    itl = row["median_itl_ms"]
    row["itl_error"] = None if itl is None else round((itl - args.delay_ms) / args.delay_ms, 4)
    reasons = []
    if itl is None or abs(row["itl_error"]) > args.itl_tolerance:
        reasons.append(f"median ITL {itl if itl is None else round(itl, 2)} ms is not within "
                       f"{args.itl_tolerance:.0%} of {args.delay_ms:g} ms")
    if row["rate_fraction"] < args.rate_floor:
        reasons.append(f"{row['messages_per_s']:.0f} messages/s < {args.rate_floor:.0%} of "
                       f"{ideal:.0f}: fell behind")
    if row["failed"]:
        reasons.append(f"{row['failed']} failed requests")
    row["sustained"] = not reasons
    row["not_sustained_because"] = reasons


def sustained(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["sustained"]]
    if not ok:
        return {"level": None, "messages_per_s": None, "top_level_passed": False}
    best = max(ok, key=lambda r: r["concurrency"])
    top = max(r["concurrency"] for r in rows)
    return {"level": best["concurrency"], "messages_per_s": round(best["messages_per_s"], 1),
            "top_level_passed": best["concurrency"] == top,
            "failed_below": sorted(r["concurrency"] for r in rows if not r["sustained"]
                                   and r["concurrency"] < best["concurrency"])}


def table(rows: list[dict[str, Any]]) -> str:
    head = ["tool", "streams", "ideal msg/s", "msg/s", "÷ ideal", "median ITL ms", "ITL error",
            "median TTFT ms", "failed", "self-check", "sustained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["tool"] != "homellm", r["concurrency"])):
        check = "—" if "self_check_valid" not in r else (
            "valid" if r["self_check_valid"] else "INVALID: " + "; ".join(r["self_check_reasons"]))
        itl = "—" if r["median_itl_ms"] is None else f"{r['median_itl_ms']:.2f}"
        err = "—" if r["itl_error"] is None else f"{r['itl_error']:+.1%}"
        ttft = "—" if r["median_ttft_ms"] is None else f"{r['median_ttft_ms']:.1f}"
        lines.append("| " + " | ".join([
            r["tool"], str(r["concurrency"]), f"{r['ideal_messages_per_s']:.0f}",
            f"{r['messages_per_s']:.0f}", f"{r['rate_fraction']:.2f}", itl, err, ttft,
            str(r["failed"]), check, "yes" if r["sustained"] else "no"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, file: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    levels = sorted({r["concurrency"] for r in rows})
    left.plot(levels, [ideal_rate(c, args.ttft_ms, args.delay_ms, args.messages) for c in levels],
              color="grey", ls=":", label="ideal (client adds nothing)")
    left.plot(levels, [args.rate_floor * ideal_rate(c, args.ttft_ms, args.delay_ms,
                                                    args.messages) for c in levels],
              color="grey", ls="--", lw=0.8, label=f"{args.rate_floor:.0%} of ideal")
    for tool, color in (("homellm", "tab:blue"), ("guidellm", "tab:orange")):
        mine = sorted((r for r in rows if r["tool"] == tool), key=lambda r: r["concurrency"])
        if not mine:
            continue
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["messages_per_s"] for r in mine], "o-", color=color, label=tool)
        for r in mine:
            if not r["sustained"]:
                left.plot(r["concurrency"], r["messages_per_s"], "x", color="red", ms=10)
        right.plot(xs, [100 * (r["itl_error"] or 0) for r in mine], "o-", color=color,
                   label=tool)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("concurrent streams")
    left.set_ylabel("messages/s received (x: not sustained)")
    left.legend(fontsize=8)
    right.axhspan(-100 * args.itl_tolerance, 100 * args.itl_tolerance, color="green", alpha=0.1,
                  label=f"±{args.itl_tolerance:.0%}")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent streams")
    right.set_ylabel(f"median ITL − {args.delay_ms:g} ms server delay (%)")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(file, dpi=110)


# -- main --------------------------------------------------------------------------------------


def start_server(procs: Procs, name: str, tmp: Path, ttft_ms: float, delay_ms: float,
                 messages: int, cpus: str | None) -> str:
    port = free_port()
    proc = procs.start(name, [PYTHON, str(HERE / "bench_client.py"), "--serve", str(port),
                              "--ttft-ms", str(ttft_ms), "--delay-ms", str(delay_ms),
                              "--messages", str(messages)], cpus=cpus)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", proc, 30, tmp / f"{name}.log")
    return url


def compare(step: dict[str, Any], args: argparse.Namespace, ttft_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {"server_ttft_ms": ttft_ms, "server_itl_ms": args.delay_ms}
    for tool, row in step.items():
        out[tool] = {"median_ttft_ms": row["median_ttft_ms"], "median_itl_ms": row["median_itl_ms"],
                     "messages_per_s": row["messages_per_s"], "completed": row["completed"],
                     "failed": row["failed"]}
    if "homellm" in step and "guidellm" in step:
        h, g = step["homellm"], step["guidellm"]
        out["guidellm_minus_homellm_ms"] = {
            "median_ttft": round(g["median_ttft_ms"] - h["median_ttft_ms"], 3),
            "median_itl": round(g["median_itl_ms"] - h["median_itl_ms"], 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench-out/bench_client"))
    parser.add_argument("--quick", action="store_true", help="smoke run (<= 60 s)")
    parser.add_argument("--levels", default="16,32,64,128,256,512")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--messages", type=int, default=64, help="token messages per stream")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="server gap between them")
    parser.add_argument("--ttft-ms", type=float, default=10.0, help="server time to the first")
    parser.add_argument("--itl-tolerance", type=float, default=0.10)
    parser.add_argument("--rate-floor", type=float, default=0.90)
    parser.add_argument("--compare-concurrency", type=int, default=32)
    parser.add_argument("--compare-ttft-ms", type=float, default=50.0)
    parser.add_argument("--compare-duration", type=float, default=15.0)
    parser.add_argument("--no-guidellm", action="store_true")
    parser.add_argument("--guidellm-venv", default="/tmp/guidellm-venv")
    parser.add_argument("--pin", choices=("split", "none"), default="split")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.ttft_ms, args.delay_ms, args.messages)
        return 0
    if args.quick:
        # no separate comparison run: the comparison uses the step's lowest level
        args.levels, args.duration = "16,64", 3.0
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    sigterm_as_interrupt()
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    split = args.pin == "split" and (os.cpu_count() or 1) >= 2
    client_cpu, server_cpu = ("0", "1") if split else (None, None)
    skipped: dict[str, str] = {}
    if args.no_guidellm:
        skipped["guidellm"] = "--no-guidellm"
    elif not guidellm_bin(args).exists():
        skipped["guidellm"] = (f"{guidellm_bin(args)} not found (python3 -m venv "
                               f"{args.guidellm_venv} && {args.guidellm_venv}/bin/pip install "
                               "guidellm)")
    use_guidellm = "guidellm" not in skipped
    info = {"machine": machine_info(), "versions": versions(), "busy_before": busy_note()}
    if use_guidellm:
        code = "import importlib.metadata as m; print(m.version('guidellm'))"
        info["versions"]["guidellm"] = subprocess.run(
            [str(Path(args.guidellm_venv) / "bin" / "python"), "-c", code],
            capture_output=True, text=True).stdout.strip() or "broken"
    print(info["busy_before"], flush=True)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)
    rows: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="homellm-benchclient-") as tmpname, \
            Procs(Path(tmpname)) as procs:
        tmp = Path(tmpname)
        try:
            url = start_server(procs, "server", tmp, args.ttft_ms, args.delay_ms, args.messages,
                               server_cpu)
            for c in levels:
                server_stats(url, reset=True)
                row = run_homellm(url, c, args, tmp / f"homellm-{c}", client_cpu)
                row["server"] = server_stats(url)
                judge(row, args)
                rows.append(row)
                print(f"homellm  {c:>4} streams: {row['messages_per_s']:>8.0f} msg/s "
                      f"({row['rate_fraction']:.2f} of ideal), median ITL "
                      f"{row['median_itl_ms']:.2f} ms, TTFT {row['median_ttft_ms']:.1f} ms, "
                      f"self-check {'valid' if row['self_check_valid'] else 'INVALID'}, "
                      f"server lag p99 {row['server']['lag_p99_ms']:.1f} ms"
                      f"{'' if row['sustained'] else '  NOT sustained'}", flush=True)
            if use_guidellm:
                tokenizer = tmp / "demo-model"
                from homellm.demo import build_demo_model

                build_demo_model(tokenizer)
                server_stats(url, reset=True)
                grows = run_guidellm(url, levels, args, tmp / "guidellm", tokenizer, client_cpu)
                servers["guidellm_step"] = server_stats(url)
                for row in grows:
                    judge(row, args)
                    rows.append(row)
                    print(f"guidellm {row['concurrency']:>4} streams: "
                          f"{row['messages_per_s']:>8.0f} msg/s ({row['rate_fraction']:.2f} of "
                          f"ideal), median ITL {row['median_itl_ms']:.2f} ms, TTFT "
                          f"{row['median_ttft_ms']:.1f} ms"
                          f"{'' if row['sustained'] else '  NOT sustained'}", flush=True)
            if args.quick:
                low = levels[0]
                comparison = compare({r["tool"]: r for r in rows if r["concurrency"] == low},
                                     args, args.ttft_ms)
                comparison["concurrency"] = low
                comparison["note"] = "--quick: the step's lowest level, not a separate run"
            else:
                cargs = argparse.Namespace(**{**vars(args), "duration": args.compare_duration})
                curl = start_server(procs, "compare-server", tmp, args.compare_ttft_ms,
                                    args.delay_ms, args.messages, server_cpu)
                step = {"homellm": run_homellm(curl, args.compare_concurrency, cargs,
                                               tmp / "compare-homellm", client_cpu)}
                if use_guidellm:
                    step["guidellm"] = run_guidellm(curl, [args.compare_concurrency], cargs,
                                                    tmp / "compare-guidellm", tmp / "demo-model",
                                                    client_cpu)[0]
                comparison = compare(step, args, args.compare_ttft_ms)
                comparison["concurrency"] = args.compare_concurrency
                comparison["duration_s"] = args.compare_duration
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            return 130
        finally:
            server_cpu_s = {name: round(group_cpu_s(p.pid), 2) for name, p, _ in procs.items}
            procs.stop_all()
    result = {"homellm": sustained([r for r in rows if r["tool"] == "homellm"])}
    # stricter, homellm only: also its own self-check must call the run valid
    result["homellm_self_check_valid"] = sustained(
        [{**r, "sustained": r["sustained"] and r["self_check_valid"]}
         for r in rows if r["tool"] == "homellm"])
    if use_guidellm:
        result["guidellm"] = sustained([r for r in rows if r["tool"] == "guidellm"])
        h, g = result["homellm"]["messages_per_s"], result["guidellm"]["messages_per_s"]
        result["ratio_homellm_over_guidellm"] = round(h / g, 2) if h and g else None
        result["ratio_is_lower_bound"] = bool(result["homellm"]["top_level_passed"])
        result["target_2x_met"] = bool(h and g and h / g >= 2.0)
        hv = result["homellm_self_check_valid"]["messages_per_s"]
        result["ratio_with_homellm_self_check"] = round(hv / g, 2) if hv and g else None
    wall = round(time.perf_counter() - began, 1)
    text = table(rows)
    arrangement = ("split: CPU 1 = the loopback server, CPU 0 = the client under test" if split
                   else "none: no pinning")
    title = (f"bench client capacity: {args.messages} messages @ {args.delay_ms:g} ms (TTFT "
             f"{args.ttft_ms:g} ms), {args.duration:g} s per level, {info['machine']['cpu_model']}"
             f" x{info['machine']['nproc']}, pin={args.pin}")
    write_json(args.out / "results.json", {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rules": {"itl_tolerance": args.itl_tolerance, "rate_floor": args.rate_floor,
                  "ideal": "C * messages / ((ttft + (messages - 1) * delay) / 1000)"},
        "arrangement": arrangement, **info, "busy_after": busy_note(), "skipped": skipped,
        "wall_s": wall, "sustained": result, "comparison": comparison, "servers": servers,
        "process_cpu_s": server_cpu_s, "rows": rows})
    plot(rows, args, args.out / "bench_client.png", title)
    (args.out / "table.md").write_text(text + "\n")
    print(f"\n{arrangement}\n{text}\n")
    for tool in ("homellm", "guidellm"):
        if tool in result:
            s = result[tool]
            print(f"{tool} sustained: {s['messages_per_s']} messages/s at {s['level']} streams"
                  + (" (the top level: a lower bound)" if s["top_level_passed"] else ""))
    s = result["homellm_self_check_valid"]
    print(f"homellm sustained with its own self-check valid too: {s['messages_per_s']} "
          f"messages/s at {s['level']} streams")
    if "ratio_homellm_over_guidellm" in result:
        print(f"ratio homellm/guidellm: {result['ratio_homellm_over_guidellm']}"
              f"{' (lower bound)' if result['ratio_is_lower_bound'] else ''} -> target 2x "
              f"{'met' if result['target_2x_met'] else 'NOT met'}; with homellm's self-check: "
              f"{result['ratio_with_homellm_self_check']}")
    print("comparison: " + json.dumps(comparison))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"wall {wall} s; figures in {args.out}/results.json, bench_client.png, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
