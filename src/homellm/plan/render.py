"""How ``homellm plan`` shows its figures: rich tables for people, every formula with
``--explain``, and data with ``--json`` (the CLI prints ``to_json()`` itself)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from homellm.plan.figures import Figure, _fmt


def value_text(figure: Figure) -> str:
    unit = f" {figure.unit}" if figure.unit else ""
    return f"{_fmt(figure.value)}{unit}"


def render_sections(sections: Sequence[tuple[str, Sequence[Figure]]], console: Console,
                    explain: bool = False) -> None:
    """One table per section (label, value, where it came from); with ``explain`` every figure
    with its formula, inputs and sources instead."""
    for title, figures in sections:
        if not figures:
            continue
        if explain:
            console.rule(title)
            for figure in figures:
                console.print(figure.explain(), highlight=False, markup=False)
            continue
        table = Table(title=title, title_justify="left", show_header=False, box=None,
                      pad_edge=False)
        table.add_column("what", style="bold")
        table.add_column("value", justify="right")
        table.add_column("note", style="dim", overflow="fold")
        for figure in figures:
            table.add_row(escape(figure.label), escape(value_text(figure)), escape(figure.note))
        console.print(table)
        console.print()


def render_notes(notes: Sequence[str], console: Console) -> None:
    for note in notes:
        console.print("[yellow]note:[/] " + escape(note), highlight=False)
