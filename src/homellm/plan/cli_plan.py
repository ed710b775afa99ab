"""``homellm plan``: the typer sub-app (serve, train, gpus, models, calibrate). Parsing and
rendering only; every figure comes from ``plan/``'s modules."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from homellm.cliutil import fail
from homellm.errors import ConfigError, HomellmError

plan_app = typer.Typer(help="What fits on which GPUs, which layout, how fast, how long and how "
                            "costly; every figure can show its working (--explain).",
                       no_args_is_help=True)
Opt = typer.Option
GpusOpt = Annotated[str | None, Opt(help="e.g. 2xrtx-pro-6000, h100, rtx-pro-6000,rtx-4090 "
                                         "(default: the GPUs NVML sees)")]
GpuSpecOpt = Annotated[str | None, Opt(help="a GPU not in the catalog: mem=GiB,bw=GB/s,"
                                            "bf16=TFLOPS[,fp8=…,tdp=W] (--gpus N for N of them)")]
ExplainOpt = Annotated[bool, Opt("--explain", help="every figure with its formula and inputs")]
JsonOpt = Annotated[bool, Opt("--json", help="the plan as JSON")]




def _efficiency(gpus: list[Any], engine: str, kind: str) -> tuple[dict[str, float], list[str]]:
    """Calibrated factors stored for this GPU and engine, with a line citing each."""
    from homellm.plan.calibration import load_calibration

    return load_calibration().factors_for(gpus[0].key, engine, kind)


@plan_app.command("serve")
def serve(
    model: Annotated[str, typer.Argument(help="catalog name (qwen3-30b-a3b), HF id, or a model "
                                              "folder / config.json")],
    gpus: GpusOpt = None,
    gpu_spec: GpuSpecOpt = None,
    context: Annotated[int | None, Opt(help="longest request, tokens (default: the model's)")]
    = None,
    concurrency: Annotated[int, Opt(help="requests in flight")] = 1,
    dtype: Annotated[str, Opt(help="bfloat16, float16, or fp8 (weights quantized to FP8 while "
                                   "loading: vLLM --quantization fp8_per_tensor)")] = "bfloat16",
    kv_cache_dtype: Annotated[str, Opt(help="auto (the model dtype) or fp8 (half the KV "
                                            "bytes: vLLM --kv-cache-dtype fp8)")] = "auto",
    prefer: Annotated[str, Opt(help="what the recommendation weighs first: balanced, "
                                    "availability (survive a GPU failure), capacity")]
    = "balanced",
    prompt: Annotated[int, Opt(help="prompt tokens for prefill and TTFT")] = 2048,
    gpu_memory_utilization: Annotated[float, Opt(help="vLLM's budget fraction")] = 0.9,
    write: Annotated[Path | None, Opt(help="write a stack file for the recommended layout")]
    = None,
    layout: Annotated[str | None, Opt(help="with --write: write this layout (replicas, tp or "
                                          "pp) instead of the recommended one")] = None,
    standby: Annotated[bool, Opt("--standby", help="with --write and replicas: the second GPU "
                                                   "as a backup (active-standby) instead of a "
                                                   "second primary")] = False,
    explain: ExplainOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Memory, layouts (replicas, TP, PP), speed and vLLM flags for serving MODEL."""
    from homellm.longcontext import window_for_source
    from homellm.plan.inputs import resolve_gpus, resolve_plan_model
    from homellm.plan.render import render_notes, render_sections
    from homellm.plan.serve import NothingFitsError, plan_serve
    from homellm.plan.stackfile import stack_source, write_stack

    console = Console(stderr=json_output)
    try:
        spec = resolve_plan_model(model)
        devices = resolve_gpus(gpus, gpu_spec)
        factors, cited = _efficiency(devices, "vllm", "serve")
        plan = plan_serve(spec, devices, context=context, concurrency=concurrency, dtype=dtype,
                          gpu_memory_utilization=gpu_memory_utilization, efficiency=factors,
                          prompt=prompt, kv_cache_dtype=kv_cache_dtype, prefer=prefer,
                          window=window_for_source(model))
        if write is not None and plan.fits:
            write_stack(write, plan, source=stack_source(model), layout=layout,
                        mode="active-standby" if standby else "active-active")
        elif layout is not None and write is None:
            raise ConfigError("--layout: only with --write (it chooses the layout to write)")
    except HomellmError as exc:
        raise fail(console, exc) from None
    nothing_fits = NothingFitsError(
        f"nothing fits: no layout of {spec.name} on {', '.join(g.key for g in devices)} holds "
        "its weights and one request of the asked context"
        + (f"; {write} not written" if write is not None else ""))
    if json_output:
        print(json.dumps({**plan.to_json(), "calibration": cited}, indent=1))
        if not plan.fits:
            raise fail(console, nothing_fits)
        return
    console.print(layouts_table(plan, f"{spec.name} on {', '.join(g.key for g in devices)}: "
                                      "layouts"))
    console.print("★ recommended. reqs: requests of the asked context held at once by the whole "
                  "layout; tok/s: decode tokens/s of the whole layout with 1 stream"
                  + (f" and with {concurrency}" if concurrency > 1 else "")
                  + f"; TTFT for a {prompt:,}-token prompt; after a GPU loss: what "
                  "the layout still holds and decodes with one GPU failed.", style="dim")
    console.print(f"[bold]recommendation:[/] {escape(plan.reason)}", highlight=False)
    chosen = plan.chosen
    if chosen is not None:
        console.print("vllm serve flags: " + escape(shlex.join(chosen.flags)), highlight=False)
        render_sections([(f"{chosen.label}: memory per GPU", list(chosen.memory.figures.values())),
                         (f"{chosen.label}: speed", list(chosen.decode_b1.figures.values())
                          + list(chosen.decode_at.figures.values())
                          + list(chosen.prefill.values()))]
                        + ([(f"{chosen.label}: static YaRN", list(chosen.yarn.values()))]
                           if chosen.yarn else []), console, explain)
        if explain:   # the table's after-loss columns, every layout
            render_sections([(f"{layout.label}: after one GPU fails",
                              layout.availability.all_figures())
                             for layout in plan.layouts.values() if layout.fits], console, True)
        render_notes(chosen.notes, console)
    else:
        for layout in plan.layouts.values():
            if layout.memory.error:
                console.print(f"[red]{escape(layout.label)}:[/] {escape(layout.memory.error)}",
                              highlight=False)
    render_notes(plan.notes + cited, console)
    if not plan.fits:
        raise fail(console, nothing_fits)
    if write is not None:
        console.print(f"wrote {write}", highlight=False)


def layouts_table(plan: Any, title: str) -> Table:
    """One row per layout: memory, speed, and what survives one GPU failure."""
    table = Table(title=title, title_justify="left")
    speeds = ["tok/s ×1"] + ([f"tok/s ×{plan.concurrency}"] if plan.concurrency > 1 else [])
    for column in ("layout", "fits", "KV tokens", "max ctx", f"reqs @{plan_ctx(plan)}",
                   *speeds, "TTFT ms", "survives GPU loss", "reqs after loss",
                   "tok/s after loss"):
        table.add_column(column, justify="right" if column != "layout" else "left")
    n = len(plan.gpus)
    short = {"replicas": f"{n} replica{'s' if n > 1 else ''}", "tp": f"TP={n}", "pp": f"PP={n}"}
    for key, layout in plan.layouts.items():
        mark = " [green]★[/]" if key == plan.recommended else ""
        after = layout.availability
        cells = [f"{layout.kv_tokens_total:,}", f"{layout.memory.max_context:,}",
                 f"{layout.requests_at_context:,.1f}", f"{layout.decode_b1.tokens_per_s:,.0f}"]
        if plan.concurrency > 1:
            cells.append(f"{layout.total_tokens_per_s:,.0f}")
        cells += [f"{layout.prefill['ttft'].value:,.0f}",
                  "yes" if after.survives else "[red]no[/]",
                  f"{after.requests_held:,.1f}", f"{after.tokens_per_s:,.0f}"]
        table.add_row(short.get(key, layout.label) + mark,
                      "yes" if layout.fits else "[red]no[/]",
                      *(cells if layout.fits else ["—"] * len(cells)))
    return table


def plan_ctx(plan: Any) -> str:
    chosen = plan.chosen
    if chosen is None:
        return "ctx"
    return f"{chosen.context // 1024}K" if chosen.context % 1024 == 0 else f"{chosen.context:,}"


@plan_app.command("train")
def train(
    model: Annotated[str, typer.Argument(help="a preset (125M, 355M, 1.3B, 3B), a catalog model, "
                                              "or a folder / config.json")],
    tokens: Annotated[str, Opt(help="training tokens, e.g. 10B")] = "10B",
    gpus: GpusOpt = None,
    gpu_spec: GpuSpecOpt = None,
    context: Annotated[int, Opt(help="sequence length")] = 2048,
    doc_len: Annotated[int | None, Opt(help="mean document length with document masking")]
    = None,
    micro_batch: Annotated[int | None, Opt(help="sequences per GPU per step (default: the "
                                                "largest that fits)")] = None,
    mfu: Annotated[float | None, Opt(help="model FLOPs utilisation (default: calibrated, else "
                                          "0.40)")] = None,
    strategy: Annotated[str, Opt(help="auto, single, ddp, fsdp2")] = "auto",
    electricity: Annotated[float | None, Opt(help="USD per kWh")] = None,
    purchase_usd: Annotated[float | None, Opt(help="what one of your GPUs cost")] = None,
    cloud: Annotated[str | None, Opt(help="GPU types to price in the cloud, e.g. h100-sxm,"
                                          "a100-80g (default: yours)")] = None,
    explain: ExplainOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Time, memory by component, DDP vs FSDP2, Chinchilla tokens and cost for training."""
    from homellm.hardware import find_gpu
    from homellm.plan.inputs import parse_count, resolve_gpus, resolve_plan_model
    from homellm.plan.render import render_notes, render_sections
    from homellm.plan.train import plan_train

    console = Console(stderr=json_output)
    try:
        spec = resolve_plan_model(model)
        devices = resolve_gpus(gpus, gpu_spec)
        cited: list[str] = []
        if mfu is None:
            factors, cited = _efficiency(devices, "homellm-train", "train")
            mfu = factors.get("mfu")
        cloud_gpus = [find_gpu(k) for k in cloud.split(",")] if cloud else None
        plan = plan_train(spec, devices, tokens=parse_count(tokens), context=context,
                          doc_len=doc_len, micro_batch=micro_batch, mfu=mfu, strategy=strategy,
                          electricity_usd_kwh=electricity, purchase_usd=purchase_usd,
                          cloud_gpus=cloud_gpus)
    except HomellmError as exc:
        raise fail(console, exc) from None
    if json_output:
        print(json.dumps({**plan.to_json(), "calibration": cited}, indent=1))
        return
    console.print(f"[bold]{spec.name}[/] on {', '.join(plan.gpus)}: {plan.strategy}"
                  f"{' with checkpointing' if plan.checkpointing else ''}, micro-batch "
                  f"{plan.micro_batch} — {escape(plan.why)}", highlight=False)
    render_sections(plan.sections(), console, explain)
    layouts = Table(title="layouts", title_justify="left")
    for column in ("strategy", "checkpointing", "GiB per GPU", "fits", "largest micro-batch"):
        layouts.add_column(column)
    for m in plan.layouts:
        layouts.add_row(m.strategy, "yes" if m.checkpointing else "no",
                        f"{m.total.value:,.1f}", "yes" if m.fits else "[red]no[/]",
                        f"{m.max_micro_batch.value:,.0f}")
    console.print(layouts)
    console.print(f"[bold]cost:[/] {escape(plan.cost.verdict)}", highlight=False)
    render_notes(plan.notes + plan.cost.notes + cited, console)


@plan_app.command("gpus")
def gpus_list(json_output: JsonOpt = False) -> None:
    """The GPU catalog (dense figures, with their sources), and the GPUs NVML sees here."""
    from dataclasses import asdict

    from homellm.hardware import detect_gpus, gpu_catalog

    catalog = gpu_catalog()
    detected = detect_gpus()
    if json_output:
        print(json.dumps({"catalog": [asdict(g) for g in catalog.values()],
                          "detected": [asdict(g) for g in detected or []]}, indent=1))
        return
    console = Console()
    table = Table(title="GPU catalog (dense BF16, FP32 accumulate)", title_justify="left")
    for column in ("id", "name", "GiB", "GB/s", "BF16 TFLOPS", "FP8", "TDP W", "NVLink"):
        table.add_column(column)
    for g in catalog.values():
        table.add_row(g.key, g.name, f"{g.memory_gib:g}", f"{g.bandwidth_gbs:g}",
                      f"{g.bf16_tflops:g}", f"{g.fp8_tflops:g}" if g.fp8_tflops else "—",
                      f"{g.tdp_w:g}" if g.tdp_w else "—",
                      f"{g.nvlink_gbs:g}" if g.nvlink_gbs else "no")
    console.print(table)
    console.print("detected here: " + (", ".join(g.name for g in detected) if detected
                                       else "none (no NVML)"))


@plan_app.command("models")
def models_list(json_output: JsonOpt = False) -> None:
    """Built-in model catalog and training presets, with parameter counts."""
    from homellm.models_catalog import CATALOG, TRAIN_PRESETS, train_preset_spec

    rows = [(e.name, e.spec(), e.source) for e in CATALOG]
    rows += [(name, train_preset_spec(name), "homellm training preset") for name in TRAIN_PRESETS]
    if json_output:
        print(json.dumps([{"name": n, "total": s.params.total, "active": s.params.active,
                           "source": src} for n, s, src in rows], indent=1))
        return
    console = Console()
    table = Table(title="models", title_justify="left")
    for column in ("name", "type", "total params", "active", "layers", "KV heads", "source"):
        table.add_column(column, overflow="fold")
    for name, s, src in rows:
        table.add_row(name, s.model_type, f"{s.params.total / 1e9:.2f}B",
                      f"{s.params.active / 1e9:.2f}B", str(s.num_layers), str(s.num_kv_heads),
                      src[:60])
    console.print(table)


@plan_app.command("calibrate")
def calibrate(
    results: Annotated[list[Path], typer.Argument(help="homellm bench (or vllm bench serve) "
                                                       "result JSON files, and/or homellm train "
                                                       "run folders, from this machine")],
    model: Annotated[str | None, Opt(help="the model the bench results measured (catalog name "
                                          "or folder); runs name their own")] = None,
    gpus: GpusOpt = None,
    gpu_spec: GpuSpecOpt = None,
    engine: Annotated[str, Opt(help="the engine that served the bench results")] = "vllm",
    tp: Annotated[int, Opt(help="tensor-parallel size of the measured server")] = 1,
    json_output: JsonOpt = False,
) -> None:
    """Fit the planner's efficiency factors to your measurements and store them; later plans
    for this GPU and engine use and cite them. Bench results fit the serve factors; a training
    run folder (with metrics.jsonl) fits the training MFU (engine homellm-train)."""
    from homellm.plan.calibration import (
        TRAIN_ENGINE,
        Fitted,
        fit_bench_result,
        fit_training_run,
        is_training_run,
        load_calibration,
    )
    from homellm.plan.inputs import resolve_gpus, resolve_plan_model

    console = Console(stderr=json_output)
    runs = [path for path in results if is_training_run(path)]
    benches = [path for path in results if path not in runs]
    notes: list[str] = []
    try:
        for path in benches:
            if path.is_dir():
                raise ConfigError(f"{path}: a folder without metrics.jsonl is not a training "
                                   "run; give a bench result file or a homellm train run folder")
        if benches and model is None:
            raise ConfigError("--model is required with bench results (which model they "
                               "measured)")
        if runs and model is not None and not benches:
            notes.append(f"--model {model} ignored: a training run's checkpoint names its model")
        devices = resolve_gpus(gpus, gpu_spec)
        device = devices[0]
        spec = resolve_plan_model(model) if benches and model is not None else None
        fits: list[Fitted] = []
        train_fits: list[Fitted] = []
        train_models: list[str] = []
        for path in benches:
            try:
                data = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise HomellmError(f"{path}: cannot read a result ({exc})") from None
            assert spec is not None
            fits += fit_bench_result(data, str(path), spec, device, tp=tp)
        for path in runs:
            fitted, run_model = fit_training_run(path, device, len(devices))
            train_fits.append(fitted)
            train_models.append(run_model.name)
        store = load_calibration()
        cited: list[str] = []
        if fits:
            assert spec is not None
            store.record(device.key, engine, spec.name, fits)
        if train_fits:
            store.record(device.key, TRAIN_ENGINE, ", ".join(dict.fromkeys(train_models)),
                         train_fits)
        saved = store.save()
        if fits:
            cited += store.factors_for(device.key, engine, "serve")[1]
        if train_fits:
            cited += store.factors_for(device.key, TRAIN_ENGINE, "train")[1]
    except HomellmError as exc:
        raise fail(console, exc) from None
    if json_output:
        print(json.dumps({"stored": str(saved), "notes": notes,
                          "fits": [{**vars(f), "figure": f.figure.to_json() if f.figure else None}
                                   for f in fits + train_fits], "now": cited}, indent=1))
        return
    if fits:
        assert spec is not None
        table = Table(title=f"calibration: {spec.name} on {device.key} ({engine})",
                      title_justify="left")
        for column in ("result", "factor", "fitted", "measured ms", "predicted before ms"):
            table.add_column(column)
        for f in fits:
            table.add_row(Path(f.source).name, f.factor, f"{f.value:.3f}", f"{f.measured:,.2f}",
                          f"{f.predicted_default:,.2f}")
        console.print(table)
    if train_fits:
        table = Table(title=f"training calibration on {device.key} ({TRAIN_ENGINE})",
                      title_justify="left")
        for column in ("run", "model", "factor", "fitted", "median tok/s",
                       "plan at MFU 0.40 tok/s"):
            table.add_column(column)
        for f, name in zip(train_fits, train_models, strict=True):
            table.add_row(Path(f.source).name, name, f.factor, f"{f.value:.3g}",
                          f"{f.measured:,.1f}", f"{f.predicted_default:,.1f}")
        console.print(table)
        for f in train_fits:
            if f.figure is not None:
                console.print(f.figure.explain(), highlight=False, markup=False)
    for line in notes + cited:
        console.print(line, highlight=False, markup=False)
    console.print(f"stored in {saved}", highlight=False)
