"""The read-only status page at ``/``: server-rendered HTML, no build step, refreshes itself."""

from __future__ import annotations

import html
import time
from typing import Any

_COLOURS = {"ready": "#1a7f37", "draining": "#9a6700", "starting": "#0969da"}
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328}
h1{font-size:20px;margin:0 0 .2em} .sub{color:#656d76;margin-bottom:1.2em}
table{border-collapse:collapse;min-width:60em} th,td{padding:.35em .8em;text-align:left;
border-bottom:1px solid #d0d7de} th{background:#f6f8fa} td.n{text-align:right;
font-variant-numeric:tabular-nums} .state{font-weight:600} .err{color:#656d76;max-width:40em;
overflow-wrap:anywhere} .cards{display:flex;gap:1em;margin-bottom:1.2em} .card{border:1px solid
#d0d7de;border-radius:6px;padding:.6em 1em} .card b{display:block;font-size:20px}
"""


def render_status_page(rows: list[dict[str, Any]], models: dict[str, dict[str, int]],
                       refresh_s: int = 2) -> str:
    esc = html.escape
    cards = "".join(
        f'<div class="card" id="model-{esc(model)}">{esc(model)}'
        f'<b>{counts["healthy"]}/{counts["total"]}</b>healthy replicas</div>'
        for model, counts in models.items())
    body = []
    for row in rows:
        state = row["display_state"]
        colour = _COLOURS.get(state, "#cf222e")
        error = row.get("process_error") or row.get("last_error") or ""
        body.append(
            f'<tr id="replica-{esc(row["name"])}"><td>{esc(row["name"])}</td>'
            f'<td>{esc(row["role"])}</td>'
            f'<td class="state" style="color:{colour}">{esc(state)}</td>'
            f'<td class="n">{row["outstanding"]}</td><td class="n">{row["requests"]}</td>'
            f'<td class="n">{row["successes"]}</td><td class="n">{row["failures"]}</td>'
            f'<td class="n">{esc(str(row.get("restarts", "–")))}</td>'
            f'<td class="err">{esc(str(error))}</td></tr>')
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{refresh_s}">'
        f"<title>homellm gateway</title><style>{_STYLE}</style></head><body>"
        "<h1>homellm gateway</h1>"
        f'<div class="sub">replicas and live counters, as of {stamp} (refreshes every '
        f"{refresh_s} s; read-only)</div><div class=cards>{cards}</div>"
        "<table><thead><tr><th>replica</th><th>role</th><th>state</th><th>in flight</th>"
        "<th>requests</th><th>succeeded</th><th>failed</th><th>restarts</th>"
        f"<th>last error</th></tr></thead><tbody>{''.join(body)}</tbody></table></body></html>"
    )
