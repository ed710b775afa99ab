"""What does the homellm gateway add over talking to the engine directly? (and nginx, LiteLLM)

One fast FAKE streaming backend (``homellm.gateway.fakebackend``), four ways to reach it:
``direct``, ``homellm`` (``homellm up`` with ``url:`` replicas), ``nginx`` (Debian's, primary +
``backup`` upstream, ``proxy_buffering off``) and ``litellm`` (its proxy, from a separate venv,
when installed). Each phase runs a separate load-generator process (``_loadgen.py``):

- ``probe``: a few concurrent short streams, for the *added* TTFT / end-to-end latency;
- ``c64``, ``c256``: closed loops of 64 and 256 concurrent 64-token streams, for streamed
  tokens (SSE chunks) per second, as a ratio to ``direct`` measured in the same round.

Paths are interleaved (round r runs every phase on every path, rotating the order), figures are
medians over rounds, and each ratio or difference is taken within its round. With ``--pin split``
(default) CPU 0 runs the load generator and the fake backends, CPU 1 the proxy under test.

    python benchmarks/gateway_overhead.py [--quick] [--out bench-out/gateway_overhead]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _infra import (
    PYTHON,
    Procs,
    busy_note,
    group_cpu_s,
    machine_info,
    nginx_conf,
    sigterm_as_interrupt,
    start_nginx,
    versions,
    wait_http,
    write_json,
)
from _infra import free_port as port

HERE = Path(__file__).resolve().parent
LITELLM_KEY = "sk-homellm-bench-0123456789abcdef0123456789abcdef"
TARGETS = {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "ratio_c64": 0.9}


@dataclass
class Target:
    name: str
    url: str  # base URL; requests go to url + /v1/chat/completions
    model: str
    pgid: int | None = None  # the proxy's process group, for CPU accounting
    headers: dict[str, str] = field(default_factory=dict)


def start_paths(procs: Procs, tmp: Path, args: argparse.Namespace, skipped: dict[str, str]
                ) -> tuple[list[Target], int]:
    """Start the fake backends and every proxy; return the paths and the fake's pgid."""
    client_cpu, proxy_cpu = ("0", "1") if args.pin == "split" else (None, None)
    fake, spare = port(), port()
    fake_argv = [PYTHON, "-m", "homellm.gateway.fakebackend", "--tokens", str(args.tokens),
                 "--delay-ms", str(args.delay_ms), "--ttft-ms", str(args.ttft_ms)]
    primary = procs.start("fake", [*fake_argv, "--port", str(fake), "--name", "primary"],
                          cpus=client_cpu)
    backup = procs.start("fake-backup", [*fake_argv, "--port", str(spare), "--name", "backup"],
                         cpus=client_cpu)
    wait_http(f"http://127.0.0.1:{fake}/health", primary, 30, tmp / "fake.log")
    wait_http(f"http://127.0.0.1:{spare}/health", backup, 30, tmp / "fake-backup.log")
    paths = [Target("direct", f"http://127.0.0.1:{fake}", "fake")]

    gw = port()
    stack = tmp / "stack.yaml"
    stack.write_text(f"""\
models:
  fake:
    source: bench/fake
    replicas:
      - {{role: primary, url: "http://127.0.0.1:{fake}"}}
      - {{role: backup, url: "http://127.0.0.1:{spare}"}}
gateway:
  listen: 127.0.0.1:{gw}
""")
    up = procs.start("homellm", [PYTHON, "-m", "homellm.cli", "up", "-c", str(stack),
                                 "--run-dir", str(tmp / "run")], cpus=proxy_cpu, grace=20)
    wait_http(f"http://127.0.0.1:{gw}/ready", up, 60, tmp / "homellm.log")
    paths.append(Target("homellm", f"http://127.0.0.1:{gw}", "fake", up.pid))

    if args.no_keys:
        skipped["homellm+keys"] = "--no-keys"
    else:  # the same gateway with an API key and every kind of limit checked (none reached)
        from homellm.keys import KeyFile

        key = KeyFile(tmp / "keys.json").add("bench")
        gw_keys = port()
        keyed = tmp / "stack-keys.yaml"
        keyed.write_text(stack.read_text().replace(f"listen: 127.0.0.1:{gw}", f"""\
listen: 127.0.0.1:{gw_keys}
  api_keys_file: keys.json
  limits:
    max_concurrent_requests: 100000
    per_key: {{rpm: 100000000, tpm: 1000000000, concurrent: 100000}}"""))
        up = procs.start("homellm-keys", [PYTHON, "-m", "homellm.cli", "up", "-c", str(keyed),
                                          "--run-dir", str(tmp / "run-keys")],
                         cpus=proxy_cpu, grace=20)
        wait_http(f"http://127.0.0.1:{gw_keys}/ready", up, 60, tmp / "homellm-keys.log")
        paths.append(Target("homellm+keys", f"http://127.0.0.1:{gw_keys}", "fake", up.pid,
                            {"Authorization": f"Bearer {key}"}))

    if args.no_nginx:
        skipped["nginx"] = "--no-nginx"
    else:
        try:
            listen = port()
            conf = nginx_conf(tmp / "nginx", listen, fake, spare)
            proc = start_nginx(procs, tmp / "nginx", conf, cpus=proxy_cpu)
            wait_http(f"http://127.0.0.1:{listen}/health", proc, 20, tmp / "nginx.log")
            paths.append(Target("nginx", f"http://127.0.0.1:{listen}", "fake", proc.pid))
        except (OSError, RuntimeError) as exc:
            skipped["nginx"] = f"did not start: {exc}"

    litellm = Path(args.litellm_venv) / "bin" / "litellm"
    if args.no_litellm:
        skipped["litellm"] = "--no-litellm"
    elif not litellm.exists():
        skipped["litellm"] = f"{litellm} not found (pip install 'litellm[proxy]' into that venv)"
    else:
        listen = port()
        conf_file = tmp / "litellm.yaml"
        conf_file.write_text(f"""\
model_list:
  - model_name: fake
    litellm_params: {{model: openai/fake, api_base: "http://127.0.0.1:{fake}/v1", api_key: none}}
  - model_name: fake-backup
    litellm_params: {{model: openai/fake, api_base: "http://127.0.0.1:{spare}/v1", api_key: none}}
router_settings:
  fallbacks: [{{fake: [fake-backup]}}]
general_settings:
  master_key: {LITELLM_KEY}
""")
        proc = procs.start("litellm", [str(litellm), "--config", str(conf_file), "--host",
                                       "127.0.0.1", "--port", str(listen), "--num_workers", "1",
                                       "--telemetry", "False"], cpus=proxy_cpu,
                           env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        try:
            wait_http(f"http://127.0.0.1:{listen}/health/liveliness", proc, 180,
                      tmp / "litellm.log")
            paths.append(Target("litellm", f"http://127.0.0.1:{listen}", "fake", proc.pid,
                               {"Authorization": f"Bearer {LITELLM_KEY}"}))
        except RuntimeError as exc:
            skipped["litellm"] = f"did not start: {str(exc)[-600:]}"
            procs.stop("litellm")
    return paths, primary.pid


def run_phase(path: Target, phase: tuple[str, int, int], args: argparse.Namespace,
              fake_pgid: int, warmup: float, duration: float) -> dict[str, Any]:
    """One load-generator process against one path; its figures plus CPU used by each side."""
    import json
    import subprocess

    name, concurrency, max_tokens = phase
    argv = [PYTHON, str(HERE / "_loadgen.py"), "--url", path.url + "/v1/chat/completions",
            "--model", path.model, "--concurrency", str(concurrency), "--warmup", str(warmup),
            "--duration", str(duration), "--max-tokens", str(max_tokens)]
    argv += [f"--header={k}:{v}" for k, v in path.headers.items()]
    if name == "probe":
        argv.append("--raw")
    if args.pin == "split":
        argv = ["taskset", "-c", "0", *argv]
    cpu = {"proxy": group_cpu_s(path.pgid) if path.pgid else 0.0, "fake": group_cpu_s(fake_pgid)}
    begin = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=warmup + duration + 90)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed on {path.name}: {proc.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["phase_wall_s"] = round(time.perf_counter() - begin, 2)
    chunks = max(result["chunks_total"], 1)
    for side, pgid in (("proxy", path.pgid), ("fake", fake_pgid)):
        used = (group_cpu_s(pgid) - cpu[side]) if pgid else 0.0
        result[f"{side}_cpu_s"] = round(used, 2)
        result[f"{side}_cpu_us_per_chunk"] = round(used / chunks * 1e6, 2)
    return result


def settle(pgids: list[int], limit_s: float = 30.0) -> float:
    """Wait until every process group is idle (< 5 % of a CPU over 0.5 s); the seconds waited.

    A proxy still draining the streams of the previous phase (LiteLLM needs ~2 s after 256
    streams) would otherwise steal CPU from the next path's phase.
    """
    begin = time.perf_counter()
    while time.perf_counter() - begin < limit_s:
        before = sum(group_cpu_s(g) for g in pgids)
        time.sleep(0.5)
        if sum(group_cpu_s(g) for g in pgids) - before < 0.025:
            break
    return round(time.perf_counter() - begin, 2)


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def analyse(runs: list[dict[str, Any]], names: list[str], phases: list[str]) -> dict[str, Any]:
    """Medians over rounds of absolute figures, of differences and of ratios vs direct."""
    by = {(r["round"], r["phase"], r["path"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    out: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {}
        for phase in phases:
            mine = [by[(n, phase, name)] for n in rounds if (n, phase, name) in by]
            base = [by.get((n, phase, "direct")) for n in rounds if (n, phase, name) in by]
            for metric in ("ttft_ms", "e2e_ms"):
                for q in ("p50", "p99"):
                    row[f"{phase}.{metric}.{q}"] = med([m[metric][q] for m in mine])
                    if phase == "probe" and name != "direct":
                        row[f"added.{metric}.{q}"] = med(
                            [m[metric][q] - b[metric][q] for m, b in zip(mine, base, strict=True)
                             if b])
            row[f"{phase}.chunks_per_s"] = med([m["chunks_per_s"] for m in mine])
            row[f"{phase}.ratio"] = med([m["chunks_per_s"] / b["chunks_per_s"]
                                         for m, b in zip(mine, base, strict=True) if b])
            row[f"{phase}.failed"] = sum(m["failed"] + m["short_streams"] for m in mine)
            row[f"{phase}.proxy_cpu_us_per_chunk"] = med([m["proxy_cpu_us_per_chunk"]
                                                          for m in mine])
        out[name] = row
    return out


def paired(runs: list[dict[str, Any]], name: str, base: str, phases: list[str]
           ) -> dict[str, float]:
    """Medians over rounds of (name − base) latency and name ÷ base throughput, same round."""
    by = {(r["round"], r["phase"], r["path"]): r for r in runs}
    out: dict[str, float] = {}
    for phase in phases:
        pairs = [(m, by[(n, p, base)]) for (n, p, path), m in by.items()
                 if p == phase and path == name and (n, p, base) in by]
        if not pairs:
            continue
        for metric in ("ttft_ms", "e2e_ms"):
            for q in ("p50", "p99"):
                out[f"{phase}.{metric}.{q}"] = med([m[metric][q] - b[metric][q] for m, b in pairs])
        out[f"{phase}.ratio"] = med([m["chunks_per_s"] / b["chunks_per_s"] for m, b in pairs
                                     if b["chunks_per_s"]])
    return out


def table(summary: dict[str, Any], phases: list[str]) -> str:
    load = [p for p in phases if p != "probe"]
    head = ["path", "probe TTFT p50/p99 ms", "added TTFT p50/p99", "added E2E p50/p99"]
    for p in load:
        head += [f"{p} tok/s", f"{p} ratio", f"{p} proxy µs/tok"]
    head.append("failed")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary.items():
        added = "—" if name == "direct" else (
            f"{row['added.ttft_ms.p50']:+.2f} / {row['added.ttft_ms.p99']:+.2f}")
        added_e2e = "—" if name == "direct" else (
            f"{row['added.e2e_ms.p50']:+.2f} / {row['added.e2e_ms.p99']:+.2f}")
        cells = [name, f"{row['probe.ttft_ms.p50']:.2f} / {row['probe.ttft_ms.p99']:.2f}",
                 added, added_e2e]
        for p in load:
            cells += [f"{row[f'{p}.chunks_per_s']:.0f}", f"{row[f'{p}.ratio']:.2f}",
                      "—" if name == "direct" else f"{row[f'{p}.proxy_cpu_us_per_chunk']:.0f}"]
        cells.append(str(sum(v for k, v in row.items() if k.endswith(".failed"))))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    row = summary.get("homellm")
    if not row:
        return {}
    out: dict[str, Any] = {}
    for metric in ("ttft_ms", "e2e_ms"):
        for q, limit in (("p50", TARGETS["added_p50_ms"]), ("p99", TARGETS["added_p99_ms"])):
            value = row[f"added.{metric}.{q}"]
            out[f"added {metric} {q} <= {limit} ms"] = {"value": value, "met": value <= limit}
    keyed = summary.get("keys_vs_open")
    if keyed:
        value = keyed["probe.ttft_ms.p50"]
        out["keys+limits add <= 1.0 ms to the p50 TTFT of homellm without keys"] = {
            "value": value, "met": value <= 1.0}
    if "c64.ratio" in row:
        value = row["c64.ratio"]
        out[f"c64 ratio >= {TARGETS['ratio_c64']}"] = {"value": value,
                                                        "met": value >= TARGETS["ratio_c64"]}
    return out


def plot(summary: dict[str, Any], phases: list[str], file: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary if n != "direct"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = ["added.ttft_ms.p50", "added.ttft_ms.p99", "added.e2e_ms.p50", "added.e2e_ms.p99"]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + i * width for j in range(len(names))]
        bars = left.bar(xs, [summary[n][key] for n in names], width,
                        label=key.removeprefix("added."))
        left.bar_label(bars, fmt="%.2f", fontsize=7)
    left.axhline(1.0, color="grey", ls=":", lw=1)
    left.axhline(5.0, color="grey", ls="--", lw=1)
    left.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    left.set_ylabel("added latency vs direct (ms), probe phase")
    left.set_yscale("symlog", linthresh=1)
    left.legend(fontsize=8)
    load = [p for p in phases if p != "probe"]
    width = 0.8 / max(len(load), 1)
    for i, phase in enumerate(load):
        xs = [j + i * width for j in range(len(summary))]
        bars = right.bar(xs, [summary[n][f"{phase}.ratio"] for n in summary], width, label=phase)
        right.bar_label(bars, fmt="%.2f", fontsize=7)
    right.axhline(TARGETS["ratio_c64"], color="grey", ls="--", lw=1)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(summary))], list(summary))
    right.set_ylabel("streamed tokens/s ÷ direct (same round)")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/gateway_overhead"))
    parser.add_argument("--quick", action="store_true", help="smoke run (<= 30 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--probe-concurrency", type=int, default=4)
    parser.add_argument("--probe-tokens", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--pin", choices=("split", "none"), default="split")
    parser.add_argument("--no-keys", action="store_true", help="skip homellm with keys+limits")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--litellm-venv", default="/tmp/litellm-venv")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration, args.concurrency = 1, 0.5, 2.0, "64"
        args.no_litellm = True
    sigterm_as_interrupt()
    args.out.mkdir(parents=True, exist_ok=True)
    phases = [("probe", args.probe_concurrency, args.probe_tokens)]
    phases += [(f"c{c}", int(c), args.tokens) for c in args.concurrency.split(",")]
    began = time.perf_counter()
    info = {"machine": machine_info(), "versions": versions(Path(args.litellm_venv) / "bin" /
                                                           "python"), "busy_before": busy_note()}
    print(f"{info['busy_before']}", flush=True)
    arrangement = ("split: CPU 0 = load generator + fake backends, CPU 1 = the proxy under test"
                   if args.pin == "split" else "none: no pinning, everything shares every CPU")
    skipped: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="homellm-bench-") as tmpname, Procs(Path(tmpname)) \
            as procs:
        tmp = Path(tmpname)
        try:
            paths, fake_pgid = start_paths(procs, tmp, args, skipped)
            for rnd in range(args.rounds):
                for phase in phases:
                    order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
                    for path in order:
                        waited = settle([p.pgid for p in paths if p.pgid] + [fake_pgid])
                        result = run_phase(path, phase, args, fake_pgid,
                                           args.warmup, args.duration)
                        result.update(round=rnd, phase=phase[0], path=path.name,
                                      settle_s=waited)
                        runs.append(result)
                        print(f"round {rnd} {phase[0]:>5} {path.name:>8}: "
                              f"{result['chunks_per_s']:>8.0f} tok/s  TTFT p50 "
                              f"{result['ttft_ms']['p50']:.2f} p99 {result['ttft_ms']['p99']:.2f}"
                              f" ms  failed {result['failed']}", flush=True)
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    names = [p for p in ("direct", "homellm", "homellm+keys", "nginx", "litellm")
             if any(r["path"] == p for r in runs)]
    summary = analyse(runs, names, [p[0] for p in phases])
    keys_vs_open = paired(runs, "homellm+keys", "homellm", [p[0] for p in phases])
    text = table(summary, [p[0] for p in phases])
    targets = verdict({**summary, "keys_vs_open": keys_vs_open})
    wall = round(time.perf_counter() - began, 1)
    title = (f"gateway overhead: {args.rounds} rounds x {args.duration:g} s, {args.tokens} tok @ "
             f"{args.delay_ms:g} ms, pin={args.pin}, {info['machine']['cpu_model']} "
             f"x{info['machine']['nproc']}")
    write_json(args.out / "results.json", {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "arrangement": arrangement, **info, "busy_after": busy_note(), "skipped": skipped,
        "wall_s": wall, "summary": summary, "keys_vs_open": keys_vs_open, "targets": targets,
        "runs": runs})
    plot(summary, [p[0] for p in phases], args.out / "overhead.png", title)
    (args.out / "table.md").write_text(text + "\n")
    print(f"\n{arrangement}\n{text}")
    if keys_vs_open:
        print("homellm+keys − homellm (same round, medians): " + ", ".join(
            f"{k} {v:+.3f}" for k, v in keys_vs_open.items() if k.startswith("probe.")))
    for key, value in targets.items():
        print(f"homellm {key}: {value['value']} -> {'met' if value['met'] else 'NOT met'}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"wall {wall} s; figures in {args.out}/results.json, overhead.png, table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
