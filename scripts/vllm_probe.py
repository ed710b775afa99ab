"""Feed ``vllm serve`` argv to vLLM's own code, as far as a CPU-only machine allows.

Run by the vLLM venv's python (scripts/engine_acceptance.py does this). Reads one JSON job a
line on stdin, ``{"id": ..., "argv": [args after "vllm serve"]}``, and prints one line
``PROBE {json}`` per job: ``{"id", "accepted", "stage", "error", "where", "engine_config",
"platform", "max_model_len"}``.

The stages are those of ``vllm serve`` itself (vllm/entrypoints/cli/main.py, cli/serve.py,
launchers/api_server/entry.py):

0. ``build_parser``: the serve parser (building it instantiates every config's defaults);
1. ``parse``: the CLI's FlexibleArgumentParser with the serve subparser
   (``ServeSubcommand.subparser_init`` -> ``make_arg_parser``), then
   ``ServeSubcommand.validate`` (``validate_parsed_serve_args``);
2. ``engine_args``: ``AsyncEngineArgs.from_cli_args(args)``;
3. ``model_config``: ``engine_args.create_model_config()`` (reads config.json, applies
   ``--hf-overrides``, checks ``--max-model-len`` against the derived one).

"accepted" means all of them passed. Then ``create_engine_config()`` (what ``vllm serve``
does next) is tried and how far it got is reported as ``engine_config``.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr
from typing import Any

# The CUDA wheel on a machine without a GPU resolves to vLLM's UnspecifiedPlatform, whose
# empty device_type makes DeviceConfig raise while the serve parser is being built
# (vllm/config/device.py:55, "Failed to infer device type"). VLLM_TARGET_DEVICE=cpu is vLLM's
# own switch to its CPU platform (vllm/platforms/__init__.py, cpu_platform_plugin);
# VLLM_PROBE_PLATFORM=native leaves the platform as detected, to show where that stops.
if os.environ.get("VLLM_PROBE_PLATFORM", "cpu") == "cpu":
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"

import vllm
from probe_common import Stages, rope_of, serve_jobs

VLLM_DIR = os.path.dirname(vllm.__file__)


def serve_parser() -> Any:
    """vllm serve's parser, built the way vllm/entrypoints/cli/main.py builds it."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    return parser, command


def probe(argv: list[str]) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.usage.usage_lib import UsageContext

    result: dict[str, Any] = {"accepted": False, "stage": "", "error": "", "where": "",
                              "engine_config": "", "platform": type(current_platform).__name__}
    stages = Stages(VLLM_DIR, result)
    built = stages.run("build_parser", serve_parser)
    if built is None:
        return result
    parser, command = built

    def parse() -> Any:
        captured = io.StringIO()
        try:
            with redirect_stderr(captured):
                args = parser.parse_args(["serve", *argv])
        finally:
            result["stderr"] = " ".join(captured.getvalue().split())[-600:]
        command.validate(args)
        if args.model_tag is not None:  # ServeSubcommand.cmd does this first
            args.model = args.model_tag
        return args

    args = stages.run("parse", parse)
    if args is None:
        return result
    engine_args = stages.run("engine_args", lambda: AsyncEngineArgs.from_cli_args(args))
    if engine_args is None:
        return result
    model_config = stages.run("model_config", engine_args.create_model_config)
    if model_config is None:
        return result
    result.update(accepted=True, max_model_len=model_config.max_model_len,
                  architectures=list(model_config.architectures or []),
                  rope=rope_of(model_config.hf_text_config))
    engine: dict[str, Any] = {}
    config = stages.run("engine_config", lambda: engine_args.create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER), into=engine)
    result["engine_config"] = ("passed" if config is not None
                               else f"{engine['error']} (at {engine.get('where') or '?'})")
    return result


def warm() -> None:
    import vllm.engine.arg_utils
    import vllm.usage.usage_lib  # noqa: F401

    serve_parser()


if __name__ == "__main__":
    sys.exit(serve_jobs(probe, VLLM_DIR, warm))
