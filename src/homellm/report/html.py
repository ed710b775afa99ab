"""A self-contained HTML page (inline CSS, PNGs as base64 data URIs): one file, no build step."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
.warn{background:#fff3cd;padding:.5em;border:1px solid #e0c060}
"""


@dataclass(slots=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass(slots=True)
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    warning: str | None = None


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f'<td class="n">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="n">{value}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, sections: Sequence[Section]) -> str:
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
             f"</title><style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{escape(s.heading)}</h2>")
        if s.warning:
            parts.append(f'<p class="warn">{escape(s.warning)}</p>')
        parts.extend(f"<p>{escape(p)}</p>" for p in s.paragraphs)
        parts.extend(_table(t) for t in s.tables)
        parts.extend(f'<figure><img alt="{escape(cap)}" src="{png_data_uri(png)}">'
                     f"<figcaption>{escape(cap)}</figcaption></figure>" for cap, png in s.images)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)
