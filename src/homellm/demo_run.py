"""``homellm demo``: build the tiny model, serve it as primary + backup, run the failover drill."""

from __future__ import annotations

import json
import signal
import time

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from homellm.config import load_stack
from homellm.demo import build_demo_model, demo_model_info, demo_snippets, demo_stack_yaml
from homellm.drill import DrillReport, run_drill
from homellm.engines.registry import port_is_free
from homellm.fsutil import atomic_write_text, homellm_home
from homellm.up import STOP_EXIT_CODES, running_stack, wait_for_signal


def _free_gateway_port(preferred: int) -> int:
    port = preferred
    while not port_is_free("127.0.0.1", port):
        port += 1
    return port


def drill_table(report: DrillReport) -> Table:
    table = Table(title="Failover drill", show_header=False)
    table.add_row("requests sent", str(len(report.requests)))
    table.add_row("succeeded", str(sum(r.ok for r in report.requests)))
    table.add_row("failed before their first byte", str(report.failed_before_first_byte))
    table.add_row("cut mid-stream (clean error event)", str(report.cut_mid_stream))
    table.add_row("served by", ", ".join(f"{k}: {v}" for k, v in sorted(report.served_by.items())))

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    table.add_row("first success on the backup after the kill", secs(report.first_backup_success_s))
    table.add_row("primary restarted and ready after", secs(report.primary_ready_s))
    table.add_row("primary serving again after", secs(report.primary_serving_s))
    table.add_row("result", "[green]passed[/]" if report.passed else "[red]FAILED[/]")
    return table


async def run_demo(console: Console, port: int = 8080, exit_after_drill: bool = False,
                   json_output: bool = False) -> int:
    home = homellm_home() / "demo"
    started = time.monotonic()
    with console.status("building the demo model (tokenizer + tiny Qwen3, no download)"):
        model_dir = build_demo_model(home / "model")
    info = demo_model_info(model_dir)
    console.print(f"[bold]demo model[/] {model_dir} ({info['parameters']:,} parameters, vocab "
                  f"{info['vocab_size']}, random weights: [yellow]answers are gibberish by "
                  f"design[/]) in {time.monotonic() - started:.1f} s")
    stack_file = home / "homellm.yaml"
    atomic_write_text(stack_file, demo_stack_yaml(model_dir, _free_gateway_port(port)))
    stack = load_stack(stack_file)
    console.print(f"[bold]stack file[/] {stack_file}")

    def on_event(replica: str, event: str, detail: str) -> None:
        colour = {"ready": "green", "exited": "red", "failed": "red"}.get(event, "cyan")
        console.print(f"  [{colour}]{replica}: {event}[/] {detail}")

    async with running_stack(stack, home / "run", on_event, console.print) as running:
        curl, python = demo_snippets(running.url)
        console.print(Panel(f"{running.url}/v1  (model name: demo)\n\n[bold]curl[/]\n{curl}\n\n"
                            f"[bold]python (openai)[/]\n{python}",
                            title="OpenAI-compatible endpoint", expand=False))
        report = await run_drill(running, "demo", on_progress=lambda t: console.print(f"  {t}"))
        console.print(drill_table(report))
        if json_output:
            print(json.dumps(report.as_dict()))
        if exit_after_drill:
            return 0 if report.passed else 1
        console.print(f"serving on {running.url} until Ctrl-C")
        received = await wait_for_signal()
        console.print("stopping engines")
    # a failed drill is the result that matters; otherwise up's rule (SIGTERM 0, Ctrl-C 130)
    return STOP_EXIT_CODES[signal.Signals(received)] if report.passed else 1

