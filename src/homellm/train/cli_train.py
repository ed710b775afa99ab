"""``homellm train`` and ``homellm export``: parse, decide how many processes, run (in this
process for one device, under torchrun for several), render. The loop is ``train/loop.py``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from homellm.cliutil import fail
from homellm.errors import ConfigError, HomellmError

Opt = typer.Option
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=3e-4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "cpu", "none"):
        return []
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise ConfigError(f"--gpus {text!r}: expected GPU indices like 0,1 or 'cpu'") from None
    return gpus


def load_config(config_file: Path | None, resume: Path | None, sets: list[str],
                gpus: str | None) -> Any:
    """The run's config: the file, or the run folder's saved config with --resume; then the
    flags. An explicit --gpus wins over the file."""
    from homellm.train.loop import RUN_CONFIG_FILE
    from homellm.train.runconfig import RunConfig, apply_overrides, load_run_config

    if config_file is None and resume is None:
        raise ConfigError("give a run config file (see docs/train.md), or --resume RUN_DIR")
    if config_file is not None and resume is not None:
        raise ConfigError("give a run config file or --resume RUN_DIR, not both")
    if resume is not None:
        saved = resume / RUN_CONFIG_FILE
        if not saved.exists():
            raise ConfigError(f"{resume}: not a run folder (no {RUN_CONFIG_FILE})")
        try:
            config = RunConfig.model_validate_json(saved.read_text("utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{saved}: unreadable run config ({str(exc).splitlines()[0]})"
                              ) from None
    else:
        assert config_file is not None
        config = load_run_config(config_file)
    overrides = _overrides(sets)
    chosen = _gpus(gpus)
    if chosen is not None:
        overrides["gpus"] = chosen
    return apply_overrides(config, overrides) if overrides else config


def _visible_gpus(config: Any) -> list[int]:
    import torch

    if config.gpus is not None:
        return list(config.gpus)
    return list(range(torch.cuda.device_count()))


def _preflight(config: Any, gpus: list[int], nproc: int) -> str:
    """The memory check in the launching process, so a run that cannot fit is refused before
    any worker starts."""
    import torch

    from homellm.train.build import _mem_available_gib
    from homellm.train.preflight import describe_memory, preflight_memory

    if gpus:
        memory = torch.cuda.get_device_properties(gpus[0]).total_memory / 2**30
    else:
        memory = _mem_available_gib() / nproc
    return describe_memory(preflight_memory(config, memory, nproc,
                                            device="cuda" if gpus else "cpu"))


def _check_data(config: Any, processes: int) -> str:
    from homellm.train.build import check_data

    return check_data(config, processes)


def train_command(
    config_file: Annotated[Path | None, typer.Argument(
        help="the run config (YAML); see docs/train.md", show_default=False)] = None,
    resume: Annotated[Path | None, Opt("--resume", help="go on with the run in this folder "
                                       "(a run also resumes by itself when its out folder "
                                       "holds a checkpoint)")] = None,
    gpus: Annotated[str | None, Opt("--gpus", help="GPU indices, e.g. 0,1 (one process "
                                    "each, under torchrun), or 'cpu'")] = None,
    nproc: Annotated[int, Opt("--nproc", min=1, help="CPU runs: processes under torchrun "
                              "(gloo), e.g. to test data parallelism")] = 1,
    sets: Annotated[list[str] | None, Opt("--set", help="override a setting: --set lr=3e-4 "
                                          "--set checkpoint.every_steps=100")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="check the data as a start does, print "
                                 "the model, memory, plan and the torchrun command; train "
                                 "nothing")] = False,
) -> None:
    """Train a model from token shards: from scratch, or SFT on dialogues (objective: sft)."""
    try:
        config = load_config(config_file, resume, sets or [], gpus)
        devices = _visible_gpus(config)
        processes = len(devices) if devices else nproc
        memory_line = _preflight(config, devices, processes)
        # one process checks its data as it starts; the launcher checks before any worker does,
        # and a dry run checks exactly what a start would
        data_line = _check_data(config, processes) if processes > 1 or dry_run else ""
    except HomellmError as exc:
        raise fail(err_console, exc) from None

    if processes > 1 or dry_run:
        from homellm.train.distributed import describe_command, torchrun_command
        from homellm.train.loop import RUN_CONFIG_FILE

        run_dir = Path(config.out)
        spec = run_dir / RUN_CONFIG_FILE
        argv = torchrun_command([str(spec)], processes)
        console.print(data_line)
        console.print(memory_line)
        console.print(f"torchrun: {describe_command(argv, devices)}")
        if dry_run:
            _print_plan(config, processes)
            return
        from homellm.fsutil import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec, config.model_dump_json(indent=2))
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        code = _run_workers(argv, env, run_dir)
        raise typer.Exit(code)

    from homellm.train.loop import run_training
    from homellm.train.progress import TrainProgress

    progress = TrainProgress(console, log_every=config.log_every)
    try:
        outcome = run_training(config, progress)
    except HomellmError as exc:
        raise fail(err_console, exc) from None
    console.print(f"run folder: {outcome.run_dir} (report: {outcome.run_dir}/report/"
                  "index.html)")
    if outcome.status == "stopped":
        raise typer.Exit(130)


def _run_workers(argv: list[str], env: dict[str, str], run_dir: Path) -> int:
    """Run torchrun in its own session, so a terminal's Ctrl-C reaches only this process (torchrun
    turns a signal into a traceback and a failure). Ctrl-C or SIGTERM here creates the run's
    STOP file: the workers save at the next step boundary and end cleanly, and this exits 130.
    A second Ctrl-C kills them (the last checkpoint stays intact)."""
    import signal

    from homellm.train.loop import STOP_FILE

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    from homellm.procutil import die_with_parent

    previous = signal.signal(signal.SIGTERM, interrupt)
    # should this launcher die (even by SIGKILL), torchrun gets SIGTERM and passes it on: the
    # workers then save at the step boundary and stop instead of training unwatched
    proc = subprocess.Popen(argv, env=env, start_new_session=True,
                            preexec_fn=die_with_parent(os.getpid(), signal.SIGTERM))
    try:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            (run_dir / STOP_FILE).touch()
            err_console.print("stopping at the next step boundary (Ctrl-C again to kill)")
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return 130
            return 130 if code == 0 else code
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_plan(config: Any, processes: int) -> None:
    from homellm.train.build import plan_stages
    from homellm.train.preflight import run_model_spec

    spec = run_model_spec(config)
    console.print(f"model: {config.model}: {spec.params.total / 1e6:,.1f}M parameters")
    for plan in plan_stages(config, processes):
        console.print(f"stage {plan.index}: seq_len {plan.stage.seq_len}, micro_batch "
                      f"{plan.micro_batch}, steps {plan.first_step}–{plan.end_step}, "
                      f"{plan.tokens_per_step:,} tokens per step")


def export_command(
    source: Annotated[Path, typer.Argument(help="a run folder or a checkpoint folder")],
    out: Annotated[Path, Opt("-o", "--out", help="the Hugging Face model folder to write")],
    best: Annotated[bool, Opt("--best", help="the checkpoint with the lowest validation "
                              "loss instead of the latest")] = False,
    gguf: Annotated[str | None, Opt("--gguf", help="also write a GGUF (f16, q8_0, ...) with "
                                    "llama.cpp's converter")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="replace an existing folder")] = False,
    as_json: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
) -> None:
    """Export a training checkpoint as a Hugging Face folder (safetensors, config, generation
    config, tokenizer with chat template) that transformers, vLLM and `homellm up` load."""
    from homellm.train.export import export_checkpoint

    try:
        folder = export_checkpoint(source, out, best=best, gguf=gguf, overwrite=overwrite)
    except HomellmError as exc:
        raise fail(err_console, exc) from None
    if as_json:
        print(json.dumps({"folder": str(folder)}))
    else:
        console.print(f"exported: {folder}")

