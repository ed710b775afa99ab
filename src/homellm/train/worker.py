"""The process torchrun starts: ``python -m homellm.train.worker RUN_DIR/run.json``. Reads the
run config ``homellm train`` wrote, runs the loop, exits 0 when finished or stopped (saved,
resumable), 1 with a one-line error on rank 0."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from homellm.errors import HomellmError


def main(argv: list[str]) -> int:
    from homellm.train.loop import run_training
    from homellm.train.progress import TrainProgress
    from homellm.train.runconfig import RunConfig

    rank = int(os.environ.get("RANK", "0"))
    console = Console(highlight=False)
    if len(argv) != 1:
        print("usage: python -m homellm.train.worker RUN_DIR/run.json", file=sys.stderr)
        return 2
    try:
        config = RunConfig.model_validate_json(Path(argv[0]).read_text("utf-8"))
        progress = TrainProgress(console, enabled=rank == 0, log_every=config.log_every)
        outcome = run_training(config, progress)
    except (HomellmError, OSError, ValueError) as exc:
        if rank == 0:
            Console(stderr=True, highlight=False).print(f"[red]error:[/] {exc}")
        return getattr(exc, "exit_code", 1)
    # stopped (saved, resumable) is a clean end for torchrun: a non-zero code would make it
    # report a failed worker; `homellm train` knows it asked and exits 130 itself
    return 0 if outcome.status in ("finished", "stopped") else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything the run wrote is fsynced by now. Skipping interpreter finalisation avoids a
    # gloo abort ("terminate called without an active exception", SIGABRT) when process-group
    # objects the modules still hold are destroyed during teardown; seen in about 1 run in 3.
    os._exit(code)
