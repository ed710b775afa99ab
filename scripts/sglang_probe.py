"""Feed ``python -m sglang.launch_server`` argv to SGLang's own code, as far as a CPU-only
machine allows.

Run by the SGLang venv's python (scripts/engine_acceptance.py does this); same protocol as
vllm_probe.py: a JSON job a line in (``{"id", "argv": [args after sglang.launch_server]}``),
one ``PROBE {json}`` line out per job.

The stages are those of ``sglang/launch_server.py``:

1. ``parse``: ``prepare_server_args(argv)`` (argparse over ``ServerArgs.add_cli_args``, then
   ``ServerArgs.from_cli_args``);
2. ``resolve``: ``server_args.resolve_once()`` (what ``run_server`` does first: the
   resolution pipeline that fills and checks the record). Without a GPU it stops at
   ``get_device()``: "No accelerator ..."; that stop is reported as ``without_device``, and
   the job goes on with ``--device cpu`` added (SGLang's own CPU device);
3. ``model_config``: ``ModelConfig.from_server_args(server_args)`` (reads config.json,
   applies ``--json-model-override-args``, checks ``--context-length``).

"accepted" means all of them passed.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr
from typing import Any

import sglang
from probe_common import Stages, rope_of, serve_jobs

SGLANG_DIR = os.path.dirname(sglang.__file__)
NO_ACCELERATOR = "No accelerator"  # sglang/srt/utils/common.py, get_device()
CPU_DEVICE = ("--device", "cpu")


def probe(argv: list[str]) -> dict[str, Any]:
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.server_args import prepare_server_args

    result: dict[str, Any] = {"accepted": False, "stage": "", "error": "", "where": "",
                              "engine_config": ""}
    stages = Stages(SGLANG_DIR, result)

    def parse() -> Any:
        captured = io.StringIO()
        try:
            with redirect_stderr(captured):
                return prepare_server_args(list(argv))
        finally:
            result["stderr"] = " ".join(captured.getvalue().split())[-600:]

    server_args = stages.run("parse", parse)
    if server_args is None:
        return result
    native: dict[str, Any] = {}
    if stages.run("resolve", lambda: server_args.resolve_once() or True, into=native) is None:
        if NO_ACCELERATOR not in native["error"]:
            result.update(native)
            return result
        # SGLang's own answer for a machine without a GPU is its --device cpu; the record is
        # parsed anew since a failed resolution cannot be retried on the same one.
        result["without_device"] = f"{native['error']} (at {native['where']})"
        server_args = stages.run("parse", lambda: prepare_server_args([*argv, *CPU_DEVICE]))
        if server_args is None:
            return result
        if stages.run("resolve", lambda: server_args.resolve_once() or True) is None:
            return result
    model_config = stages.run("model_config",
                              lambda: ModelConfig.from_server_args(server_args))
    if model_config is None:
        return result
    result.update(accepted=True, context_len=model_config.context_len,
                  architectures=list(getattr(model_config.hf_config, "architectures", None)
                                     or []),
                  rope=rope_of(getattr(model_config, "hf_text_config", model_config.hf_config)))
    return result


def warm() -> None:
    import sglang.srt.arg_groups.pipeline
    import sglang.srt.configs.model_config  # noqa: F401
    from sglang.srt.server_args import prepare_server_args

    prepare_server_args(["--model-path", SGLANG_DIR])


if __name__ == "__main__":
    sys.exit(serve_jobs(probe, SGLANG_DIR, warm))
