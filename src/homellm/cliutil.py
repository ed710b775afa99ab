"""What every ``homellm`` sub-command shares when it fails: one line, no traceback, the
error's exit code."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from homellm.errors import HomellmError


def fail(console: Console, exc: HomellmError) -> typer.Exit:
    """Print ``error: <message>`` and return the Exit to raise (``raise fail(c, e) from None``)."""
    console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)
