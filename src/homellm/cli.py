"""The ``homellm`` command: parse, call one function, render."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from homellm import __version__
from homellm.bench.cli_bench import bench_command, compare_command
from homellm.cli_chat import chat_command
from homellm.data.cli_data import data_app, tokenizer_app
from homellm.errors import ConfigError, HomellmError
from homellm.plan.cli_plan import plan_app
from homellm.train.cli_train import export_command, train_command

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run, protect, measure and train your own LLMs on your own GPUs.")
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

StackOption = Annotated[Path, typer.Option("--config", "-c", help="stack file (homellm.yaml)")]


def _fail(exc: HomellmError) -> NoReturn:
    message = str(exc)
    first, _, rest = message.partition("\n")
    err_console.print(f"[red]error:[/] {first}", markup=True, soft_wrap=True)
    if rest:
        err_console.print(rest, markup=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _version(value: bool) -> None:
    if value:
        console.print(f"homellm {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False,
         log_level: Annotated[str, typer.Option(help="debug, info, warning or error")]
         = "warning",
         log_json: Annotated[bool, typer.Option("--log-json", help="log lines as JSON")] = False
         ) -> None:
    """homellm: serve models from one stack file behind a failover gateway, and more."""
    from homellm.logsetup import setup_logging

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        _fail(ConfigError(f"--log-level: expected debug, info, warning or error, got "
                          f"{log_level!r}"))
    setup_logging(log_level, log_json)


@app.command()
def check(config: StackOption = Path("homellm.yaml"),
          json_output: Annotated[bool, typer.Option("--json")] = False,
          engines: Annotated[bool, typer.Option(
              "--preflight", help="also ask each installed engine whether it accepts our flags")
          ] = False) -> None:
    """Validate a stack file and print the processes it resolves to.

    It refuses what `homellm up` refuses before starting anything (exit 2, FILE:LINE), short of
    a taken port and, without --preflight, flags the installed engines lack. Warnings (a
    setting an engine cannot apply) are printed to stderr and keep exit 0.
    """
    from homellm.config import load_stack
    from homellm.engines.preflight import preflight
    from homellm.stackcheck import check_run_folder, resolve_for_start

    try:
        stack = load_stack(config)
        resolved = resolve_for_start(stack)
        if stack.run_dir:  # `up --run-dir` would override it, else up writes there
            check_run_folder(Path(stack.run_dir), stack.where("run_dir"))
        specs = resolved.specs
        if engines:
            specs = [preflight(s) for s in specs]
    except HomellmError as exc:
        _fail(exc)
    for warning in resolved.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", markup=True, soft_wrap=True)
    rows = [{"replica": s.replica, "role": s.role, "engine": s.engine, "gpus": s.gpus,
             "command": s.argv, "env": s.env, "url": s.base_url, "health_url": s.health_url,
             "upstream_model": s.upstream_model, "remote": s.remote} for s in specs]
    if json_output:
        warnings = [{"file": w.file, "line": w.line, "field": w.field, "message": w.message}
                    for w in resolved.warnings]
        print(json.dumps({"stack": str(config), "gateway": stack.gateway.listen,
                          "clients": stack.gateway.clients.model_dump(), "replicas": rows,
                          "warnings": warnings}, indent=2))
        return
    import shlex

    console.print(f"[bold]{config}[/]: valid; gateway on {stack.gateway.listen}")
    clients = stack.gateway.clients
    console.print(f"  clients: headers within {clients.header_timeout_s:g} s, body reads at most "
                  f"{clients.body_timeout_s:g} s apart, idle keep-alive "
                  f"{clients.idle_timeout_s:g} s, at most {clients.max_connections} connections")
    for row in rows:
        gpus = ",".join(map(str, row["gpus"])) or "CPU"
        console.print(f"\n[bold]{row['replica']}[/] {row['role']} {row['engine']} on {gpus} "
                      f"→ {row['url']} (ready when {row['health_url']} answers 200)")
        if row["remote"]:
            console.print("  remote backend: not started here")
            continue
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in row["env"].items())
        console.print(f"  {env} \\\n  {shlex.join(row['command'])}", markup=False,
                      soft_wrap=True)


@app.command()
def up(config: StackOption = Path("homellm.yaml"),
       run_dir: Annotated[Path | None, typer.Option(help="logs and state (default: under "
                                                       "$HOMELLM_HOME/runs)")] = None) -> None:
    """Start every engine of the stack file, supervised, behind the gateway, until Ctrl-C or
    SIGTERM: exit 130 after Ctrl-C, 0 after SIGTERM, while starting or serving alike."""
    import signal

    def stop_before_the_loop(signum: int, frame: object) -> None:
        raise typer.Exit(0)  # STOP_EXIT_CODES[SIGTERM]: nothing has started yet

    # from here to serve_stack's own handlers, so SIGTERM exits 0 in every phase
    signal.signal(signal.SIGTERM, stop_before_the_loop)
    from homellm.config import load_stack
    from homellm.stackcheck import check_run_folder
    from homellm.up import STOP_EXIT_CODES, default_run_dir, run_loop, serve_stack

    try:
        stack = load_stack(config)
        folder = run_dir or (Path(stack.run_dir) if stack.run_dir else default_run_dir(config))
        check_run_folder(folder, "--run-dir" if run_dir else stack.where("run_dir")
                         if stack.run_dir else "run folder (under $HOMELLM_HOME)")
        code = run_loop(lambda: serve_stack(stack, folder, console, config))
    except HomellmError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # Ctrl-C before serve_stack's handlers were in place
        code = STOP_EXIT_CODES[signal.SIGINT]
    raise typer.Exit(int(code or 0))


@app.command()
def demo(port: Annotated[int, typer.Option(help="gateway port (the next free one if taken)")]
         = 8080,
         exit_after_drill: Annotated[bool, typer.Option(
             "--exit-after-drill", help="exit after the failover drill (for scripts)")] = False,
         json_output: Annotated[bool, typer.Option("--json", help="print the drill as JSON")]
         = False) -> None:
    """Serve an embedded tiny model as primary + backup and run a failover drill (no GPU)."""
    from homellm.demo_run import run_demo
    from homellm.up import run_loop

    try:
        code = run_loop(lambda: run_demo(console, port, exit_after_drill, json_output))
    except HomellmError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(int(code or 0))


keys_app = typer.Typer(help="API keys of the gateway (gateway.api_keys_file in the stack file)",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_file(config: Path):  # type: ignore[no-untyped-def]
    from homellm.config import load_stack
    from homellm.keys import KeyFile

    stack = load_stack(config, check_sources=False)
    if not stack.gateway.api_keys_file:
        raise ConfigError(f"{config}: gateway.api_keys_file is not set; add it (for example "
                          "api_keys_file: keys.json) to use API keys")
    return KeyFile(Path(stack.gateway.api_keys_file))


@keys_app.command("add")
def keys_add(name: Annotated[str, typer.Argument(help="who or what the key is for")],
             config: StackOption = Path("homellm.yaml"),
             models: Annotated[str | None, typer.Option(help="comma-separated models it may "
                                                        "use (default: all)")] = None,
             rpm: Annotated[int | None, typer.Option(min=1, help="requests per minute")] = None,
             tpm: Annotated[int | None, typer.Option(min=1, help="tokens per minute (prompt + "
                                                     "completion)")] = None,
             concurrent: Annotated[int | None, typer.Option(min=1, help="requests in flight")]
             = None) -> None:
    """Make a new key: printed once, only its hash is stored. Limits set here apply unless the
    stack file's gateway.limits.keys names this key."""
    from homellm.config import KeyLimits

    try:
        limits = KeyLimits(rpm=rpm, tpm=tpm, concurrent=concurrent)
        key = _key_file(config).add(name, models.split(",") if models else None, limits)
    except HomellmError as exc:
        _fail(exc)
    err_console.print(f"key {name!r} added; it is shown only now:")
    print(key)


@keys_app.command("list")
def keys_list(config: StackOption = Path("homellm.yaml"),
              json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys by name (never the keys themselves)."""
    import time

    try:
        records = _key_file(config).load()
    except HomellmError as exc:
        _fail(exc)
    rows = [{"name": r.name, "id": r.key_id, "models": r.models, "limits": r.limits,
             "revoked": r.revoked,
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))}
            for r in records]
    if json_output:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        revoked = "  [red]revoked[/]" if row["revoked"] else ""
        console.print(f"{row['name']}  hlk-{row['id']}-…  models={row['models'] or 'all'}  "
                      f"limits={row['limits'] or 'stack file'}  created {row['created']}{revoked}")


@keys_app.command("revoke")
def keys_revoke(name: str, config: StackOption = Path("homellm.yaml")) -> None:
    """Revoke a key by name (a running gateway stops accepting it within a second)."""
    try:
        _key_file(config).revoke(name)
    except HomellmError as exc:
        _fail(exc)
    console.print(f"key {name!r} revoked")


RunDirOption = Annotated[Path | None, typer.Option(help="the run folder `up` was given")]


@app.command()
def status(config: StackOption = Path("homellm.yaml"), run_dir: RunDirOption = None,
           json_output: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every replica of a running stack: state, in-flight requests, restarts, last error."""
    from homellm.admin_client import AdminClient

    try:
        rows = AdminClient.for_stack(config, run_dir).replicas()
    except HomellmError as exc:
        _fail(exc)
    if json_output:
        print(json.dumps({"replicas": rows}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{config}")
    for column in ("replica", "role", "state", "in flight", "requests", "failures", "restarts",
                   "last error"):
        table.add_column(column, overflow="fold")
    colours = {"ready": "green", "draining": "yellow", "failed": "red", "down": "red",
               "ejected": "red", "starting": "cyan"}
    for row in rows:
        state = row["display_state"]
        table.add_row(row["name"], row["role"], f"[{colours.get(state, 'white')}]{state}[/]",
                      str(row["outstanding"]), str(row["requests"]), str(row["failures"]),
                      str(row.get("restarts", "-")),
                      (row.get("process_error") or row.get("last_error") or "")[:120])
    console.print(table)


def _replica_action(action: str, config: Path, run_dir: Path | None, model: str,
                    replica: int) -> None:
    from homellm.admin_client import AdminClient

    try:
        result = getattr(AdminClient.for_stack(config, run_dir), action)(model, replica)
    except HomellmError as exc:
        _fail(exc)
    console.print(json.dumps(result))


ModelArg = Annotated[str, typer.Argument(help="model name in the stack file")]
ReplicaArg = Annotated[int, typer.Argument(help="replica index (0 is the first listed)")]


@app.command()
def drain(model: ModelArg, replica: ReplicaArg, config: StackOption = Path("homellm.yaml"),
          run_dir: RunDirOption = None) -> None:
    """Send no new requests to a replica and wait for its in-flight ones to finish."""
    _replica_action("drain", config, run_dir, model, replica)


@app.command()
def undrain(model: ModelArg, replica: ReplicaArg, config: StackOption = Path("homellm.yaml"),
            run_dir: RunDirOption = None) -> None:
    """Route to a drained replica again."""
    _replica_action("undrain", config, run_dir, model, replica)


@app.command()
def reload(config: StackOption = Path("homellm.yaml"), run_dir: RunDirOption = None) -> None:
    """Make a running `up` re-read the stack file (limits, timeouts, keys: no restart).

    An invalid file, or one that changes models or the listen address, is refused and the
    running configuration stays in force. `kill -HUP <pid of up>` does the same.
    """
    from homellm.admin_client import AdminClient

    try:
        client = AdminClient.for_stack(config, run_dir)
    except ConfigError as exc:
        _fail(ConfigError(f"{exc}; nothing was reloaded"))
    try:
        result = client.reload()
    except HomellmError as exc:
        _fail(exc)
    changed = ", ".join(result["changed"]) or "nothing changed"
    console.print(f"reloaded {result['file']}: {changed}")


@app.command()
def restart(model: ModelArg, replica: ReplicaArg, config: StackOption = Path("homellm.yaml"),
            run_dir: RunDirOption = None) -> None:
    """Restart a replica's engine process through the supervisor."""
    _replica_action("restart", config, run_dir, model, replica)


bench_app = typer.Typer(help="Load-test any OpenAI-compatible endpoint (vLLM's metric "
                        "definitions); `bench compare A.json B.json` compares two results.")
bench_app.callback(invoke_without_command=True)(bench_command)
bench_app.command("compare")(compare_command)
app.add_typer(bench_app, name="bench")
app.add_typer(plan_app, name="plan")
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")
app.command("train")(train_command)
app.command("export")(export_command)
app.command("chat")(chat_command)


@app.command()
def gguf(model_dir: Annotated[Path, typer.Argument(help="a Hugging Face model folder")],
         out_file: Annotated[Path, typer.Argument(help="the .gguf file to write")],
         outtype: Annotated[str, typer.Option(help="f32, f16, bf16, q8_0, ...")] = "f32") -> None:
    """Convert a Hugging Face model folder to GGUF for llama.cpp, with llama.cpp's converter."""
    from homellm.engines.gguf import convert_to_gguf

    try:
        written = convert_to_gguf(model_dir, out_file, outtype)
    except HomellmError as exc:
        _fail(exc)
    console.print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(app())

if __name__ == "__main__":  # python -m homellm.cli
    app()
