"""One view, three shapes: plain text tables, JSON, or a small HTML page of tables.

A ``View`` is the data (what JSON shows, unchanged) plus the tables a person reads
(what plain text and HTML show). Every value in HTML is escaped, and a cell's control
characters are shown as escapes: a name that a server sent cannot forge a row or drive
the terminal that shows the report.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Shape = Literal["plain", "json", "html"]
SHAPES: tuple[Shape, ...] = ("plain", "json", "html")
CONTENT_TYPES: dict[Shape, bytes] = {
    "plain": b"Content-Type: text/plain; charset=utf-8\r\n",
    "json": b"Content-Type: application/json\r\n",
    "html": b"Content-Type: text/html; charset=utf-8\r\n",
}
#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class View:
    title: str
    data: Any
    tables: list[Table] = field(default_factory=list)
    #: lines shown above the tables (plain and HTML)
    notes: list[str] = field(default_factory=list)


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None / NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).translate(_CONTROLS)


def ms(value: float | None) -> str:
    """Seconds as milliseconds for a cell."""
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.2f}"


def render(view: View, shape: Shape, links: tuple[tuple[str, str], ...] = ()) -> bytes:
    """``links`` (label, href): a navigation line atop the HTML page."""
    if shape == "json":
        return orjson.dumps(view.data, option=orjson.OPT_NON_STR_KEYS)
    if shape == "html":
        return render_html(view, links).encode()
    return render_plain(view).encode()


def render_plain(view: View) -> str:
    lines = [view.title, *view.notes]
    for table in view.tables:
        lines.append("")
        lines.append(table.title)
        cells = [list(table.columns), *([cell(v) for v in row] for row in table.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
        for row in cells:
            first = row[0].ljust(widths[0])
            rest = [value.rjust(width) for value, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  " + "  ".join([first, *rest]).rstrip())
        if not table.rows:
            lines.append("  (none)")
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:0 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em}"
    "td{text-align:right;font-variant-numeric:tabular-nums}td:first-child{text-align:left}"
    "th{background:#f3f3f3}"
)


def render_html(view: View, links: tuple[tuple[str, str], ...] = ()) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(view.title)}</title><style>{_STYLE}</style></head><body>",
    ]
    if links:
        parts.append("<nav>" + " | ".join(f'<a href="{esc(h)}">{esc(t)}</a>' for t, h in links) + "</nav>")
    parts.append(f"<h1>{esc(view.title)}</h1>")
    parts.extend(f"<p>{esc(note)}</p>" for note in view.notes)
    for table in view.tables:
        parts.append(f"<h2>{esc(table.title)}</h2>")
        parts.append(
            "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in table.columns) + "</tr></thead>"
        )
        parts.append("<tbody>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{esc(cell(v))}</td>" for v in row) + "</tr>")
        if not table.rows:
            parts.append(f'<tr><td colspan="{len(table.columns)}">(none)</td></tr>')
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
