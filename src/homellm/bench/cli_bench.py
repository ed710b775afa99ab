"""``homellm bench``: the command function for the CLI to mount (``app.command("bench")(
bench_command)``). It parses, calls ``run_bench``/``run_sweep``, writes the files through
``report.write_report`` and renders; no measuring logic lives here.

Exit codes: 0 done; 1/2 a ``HomellmError`` (one line); 3 with ``--strict`` when the client
limited the run (invalid); 130 after Ctrl-C (the partial result is written first).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from homellm.errors import ConfigError, HomellmError

if TYPE_CHECKING:  # the measuring modules load only when a bench runs: `homellm --help` stays fast
    from homellm.bench.load import BenchOptions, LoadRun
    from homellm.bench.sweep import SweepResult
    from homellm.bench.workload import WorkloadSpec

Opt = typer.Option


def _loads(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sweep-loads {text!r}: give numbers, e.g. 1,2,4,8") from None
    if not loads or any(not x > 0 for x in loads):
        raise ConfigError("--sweep-loads: every load must be > 0")
    return loads


def _workload(prompts_file: Path | None, corpus: Path | None, **kw: Any) -> WorkloadSpec:
    from homellm.bench.workload import WorkloadSpec

    if prompts_file and corpus:
        raise ConfigError("give --prompts-file or --corpus, not both")
    if prompts_file:
        return WorkloadSpec(source="file", path=prompts_file, **kw)
    if corpus:
        return WorkloadSpec(source="corpus", path=corpus, **kw)
    return WorkloadSpec(source="random", **kw)


def _extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--extra-body: not JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise ConfigError("--extra-body: give a JSON object, e.g. '{\"temperature\": 0}'")
    return body


def bench_command(
    ctx: typer.Context,
    url: Annotated[str | None, Opt(help="OpenAI-compatible base URL, e.g. "
                                        "http://127.0.0.1:8080 (required to run)")] = None,
    model: Annotated[str | None, Opt(help="model name (default: the first /v1/models lists)")]
    = None,
    endpoint: Annotated[str, Opt(help="chat or completions")] = "chat",
    api_key: Annotated[str | None, Opt(envvar="OPENAI_API_KEY", show_envvar=True,
                                       help="sent as Authorization: Bearer")] = None,
    input_len: Annotated[int, Opt(help="prompt tokens (words without --tokenizer)")] = 1024,
    output_len: Annotated[int | None, Opt(help="max output tokens (default 128; a prompts "
                                               "file's own lengths)")] = None,
    range_ratio: Annotated[float, Opt(help="lengths uniform in [L(1-r), L(1+r)], as vLLM")]
    = 0.0,
    prefix_len: Annotated[int, Opt(help="a shared prefix of this many tokens")] = 0,
    prompts_file: Annotated[Path | None, Opt(help="JSONL ({\"prompt\": ...}) or ShareGPT JSON")]
    = None,
    corpus: Annotated[Path | None, Opt(help="a .txt file or folder: windows of your own text")]
    = None,
    num_prompts: Annotated[int, Opt(help="distinct prompts prepared")] = 1000,
    tokenizer: Annotated[str | None, Opt(help="tokenizer.json or model folder: exact lengths, "
                                              "and output tokens when the server sends no "
                                              "usage")] = None,
    concurrency: Annotated[int | None, Opt(help="closed loop: streams in flight; with --rate: "
                                                "a cap")] = None,
    rate: Annotated[float | None, Opt(help="open loop: requests/s (inf: all at once)")] = None,
    burstiness: Annotated[float, Opt(help="gamma shape of the gaps: 1 Poisson, <1 burstier")]
    = 1.0,
    num_requests: Annotated[int | None, Opt(help="requests in the run (default: --num-prompts "
                                                 "unless --duration)")] = None,
    duration: Annotated[float | None, Opt(help="seconds; what is in flight then is cancelled")]
    = None,
    warmup: Annotated[int, Opt(help="requests before the run, not counted")] = 0,
    workers: Annotated[int, Opt(help="client processes (more when one core is not enough)")]
    = 1,
    seed: Annotated[int, Opt(help="prompts and arrivals")] = 0,
    ignore_eos: Annotated[bool, Opt(help="ask the server to generate all output tokens")]
    = False,
    extra_body: Annotated[str | None, Opt(help="JSON merged into every request body")] = None,
    connect_timeout: Annotated[float, Opt(help="seconds")] = 10.0,
    first_token_timeout: Annotated[float, Opt(help="seconds to the first token message")]
    = 600.0,
    between_tokens_timeout: Annotated[float, Opt(help="seconds between token messages")] = 60.0,
    percentiles: Annotated[str, Opt(help="e.g. 50,90,99")] = "50,90,99",
    slo: Annotated[str | None, Opt(help="goodput SLOs, e.g. ttft=500ms,tpot=50ms")] = None,
    sweep: Annotated[str | None, Opt(help="concurrency or rate: one run per load until "
                                          "saturation")] = None,
    sweep_loads: Annotated[str | None, Opt(help="the sweep's loads (default 1,2,4,...,256)")]
    = None,
    do_calibrate: Annotated[bool, Opt("--calibrate/--no-calibrate",
                                      help="replay the load on a loopback server to check the "
                                           "client itself")] = True,
    out: Annotated[Path | None, Opt(help="folder for JSON, JSONL, CSV, PNG, HTML")] = None,
    label: Annotated[str | None, Opt(help="a name for this run")] = None,
    save_text: Annotated[bool, Opt(help="keep generated text in the per-request files")]
    = False,
    strict: Annotated[bool, Opt(help="exit 3 when the client limited the run")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
    json_output: Annotated[bool, Opt("--json", help="print the result JSON")] = False,
) -> None:
    """Load-test an OpenAI-compatible endpoint with vLLM's metric definitions.

    `homellm bench compare A.json B.json` compares two results.
    """
    if ctx.invoked_subcommand is not None:
        return
    from homellm.bench.client import Timeouts
    from homellm.bench.load import BenchOptions
    from homellm.bench.metrics import parse_percentiles, parse_slos

    console = Console(stderr=json_output)
    try:
        if not url:
            raise ConfigError("--url is required: the OpenAI-compatible base URL to load-test, "
                              "e.g. http://127.0.0.1:8080")
        if endpoint not in ("chat", "completions"):
            raise ConfigError(f"--endpoint {endpoint!r}: chat or completions")
        if sweep not in (None, "concurrency", "rate"):
            raise ConfigError(f"--sweep {sweep!r}: concurrency or rate")
        options = BenchOptions(
            url=url, model=model, endpoint=endpoint,  # type: ignore[arg-type]
            api_key=api_key,
            workload=_workload(prompts_file, corpus, input_len=input_len, output_len=output_len,
                               range_ratio=range_ratio, prefix_len=prefix_len,
                               num_prompts=num_prompts, seed=seed),
            tokenizer=tokenizer, concurrency=concurrency, rate=rate, burstiness=burstiness,
            num_requests=num_requests, duration_s=duration, warmup=warmup,
            timeouts=Timeouts(connect_timeout, first_token_timeout, between_tokens_timeout),
            workers=workers, seed=seed, ignore_eos=ignore_eos, extra_body=_extra_body(extra_body),
            keep_text=save_text)
        pcts = parse_percentiles(percentiles)
        slos = parse_slos(slo) if slo else None
        folder = out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
        if sweep:
            code = _sweep(options, sweep, _loads(sweep_loads), pcts, slos, do_calibrate, folder,
                          label, progress, json_output, console)
        else:
            code = _single(options, pcts, slos, do_calibrate, folder, label, progress,
                           json_output, console, strict)
    except HomellmError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _single(options: BenchOptions, pcts: list[float], slos: dict[str, float] | None,
            do_calibrate: bool, folder: Path, label: str | None, progress: bool,
            json_output: bool, console: Console, strict: bool) -> int:
    from homellm.bench.load import calibrate, run_load, run_until_signal
    from homellm.bench.progress import live_progress
    from homellm.bench.sweep import result_of

    async def job(stop: Any) -> LoadRun:
        if progress:
            with live_progress(console, label or "bench") as hook:
                run = await run_load(options, stop=stop, on_progress=hook)
        else:
            run = await run_load(options, stop=stop)
        if do_calibrate and not run.interrupted:
            console.print("calibrating the client against a loopback server…")
            run.calibration = await calibrate(run)
        return run

    run = run_until_signal(job)
    result = result_of(run, percentiles=pcts, slos=slos, label=label)
    write_bench_outputs(result, run, folder)
    _show(result, folder, json_output, console)
    if run.interrupted:
        return 130
    return 3 if strict and not result["valid"] else 0


def _sweep(options: BenchOptions, kind: str, loads: list[float] | None, pcts: list[float],
           slos: dict[str, float] | None, do_calibrate: bool, folder: Path, label: str | None,
           progress: bool, json_output: bool, console: Console) -> int:
    from homellm.bench.load import calibrate, run_until_signal
    from homellm.bench.sweep import result_of, run_sweep
    from homellm.fsutil import atomic_write_text

    def on_point(load: float, result: dict[str, Any]) -> None:
        mark = "" if result["valid"] else " [red]INVALID (client-limited)[/]"
        console.print(f"{kind} {load:g}: {result.get('output_throughput') or 0:,.1f} tok/s, "
                      f"median E2EL {result.get('median_e2el_ms') or math.nan:,.0f} ms, "
                      f"failed {result.get('failed')}{mark}")

    async def job(stop: Any) -> SweepResult:
        res = await run_sweep(options, kind, loads, percentiles=pcts, slos=slos,  # type: ignore[arg-type]
                              stop=stop, on_point=on_point)
        if do_calibrate and res.runs and not res.runs[-1].interrupted:
            res.runs[-1].calibration = await calibrate(res.runs[-1])
            res.points[-1] = result_of(res.runs[-1], percentiles=pcts, slos=slos,
                                       label=res.points[-1].get("label"))
        return res

    res = run_until_signal(job)
    for k, (load, run, result) in enumerate(zip(res.loads, res.runs, res.points, strict=True)):
        last = k == len(res.points) - 1
        write_bench_outputs(result, run, folder, stem=f"bench-{kind}-{load:g}",
                            sweep=res.points if last else None)
    summary = res.summary()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "sweep.json", json.dumps(summary, indent=1) + "\n")
    if json_output:
        print(json.dumps({"sweep": summary, "points": res.points}, default=str))
    else:
        console.print(f"sweep: {res.stopped}; knee at {kind} {res.knee}; best goodput "
                      f"{res.best_goodput}; files in {folder}")
    return 130 if res.stopped == "interrupted" else 0


def write_bench_outputs(result: dict[str, Any], run: LoadRun, folder: Path, *,
                        stem: str = "bench",
                        sweep: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """The one place the files are written: ``report.write_report`` (JSON, JSONL, CSV, PNG,
    HTML), with the records on their run-relative clock."""
    from homellm.bench.report import write_report

    return write_report(result, folder, stem=stem, records=run.records,
                        started_at=run.started_at, sweep=sweep)


def _show(result: dict[str, Any], folder: Path, json_output: bool, console: Console) -> None:
    from homellm.bench.render import render_summary
    from homellm.bench.result import result_json

    if json_output:
        print(result_json(result), end="")
    else:
        render_summary(result, console)
        console.print(f"files in {folder}")
    if not result["valid"]:
        console.print("[bold red]INVALID: the client, not the server, limited this run:[/] "
                      + "; ".join(result["invalid_reasons"]), highlight=False)



def compare_command(
    a: Annotated[Path, typer.Argument(help="a result JSON (the baseline)")],
    b: Annotated[Path, typer.Argument(help="a result JSON (the change)")],
    json_output: Annotated[bool, Opt("--json", help="print the comparison as JSON")] = False,
) -> None:
    """Two results side by side: each metric's change, and a Mann-Whitney U test on the
    per-request TTFT, TPOT, ITL and E2EL."""
    from homellm.bench.compare import compare_results
    from homellm.bench.render import render_compare
    from homellm.bench.result import load_result

    console = Console(stderr=json_output)
    try:
        table = compare_results(load_result(a), load_result(b), a_name=a.stem, b_name=b.stem)
    except HomellmError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    if json_output:
        print(json.dumps(table.to_json(), indent=1))
    else:
        render_compare(table, console)
