"""The pieces of dsxai's HTML reports (the audit's and the benchmark's): inline CSS, the column-sorting
script, escaped cells, sortable headers and relative links.

Why shared: both reports are self-contained pages mailed and opened from disk, without a server or network,
and must escape every value from data the same way.
"""
from __future__ import annotations

import html
from typing import Any, Iterable

__all__ = ["CSS", "SORT_JS", "fmt", "escape", "sortable_header", "number_cell", "text_cell", "page_start",
           "page_end", "image", "link"]

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}
td.t{text-align:left;max-width:32em}
.note{color:#666;font-size:13px}
"""

#: sorts a table by the clicked header's column (numbers by their ``data-v`` when given), toggling the order
SORT_JS = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const desc=th.dataset.dir!=='desc';th.dataset.dir=desc?'desc':'asc';
const key=r=>{const c=r.children[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;const n=parseFloat(v);
return isNaN(n)?v:n};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a>c?1:a<c?-1:0)*(desc?-1:1)}).forEach(r=>b.appendChild(r));}
"""


def escape(value: Any) -> str:
    """``value`` as text safe in HTML content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, percent: bool = False, digits: int = 2) -> str:
    """A cell's text: a dash for None, yes/no for booleans, floats rounded (or as percent), the rest escaped."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0%}" if percent else f"{value:.{digits}f}"
    return escape(value)


def sortable_header(columns: Iterable[str]) -> list[str]:
    """One clickable ``<th>`` per column (underscores shown as spaces)."""
    return [f"<th onclick='sortBy(this)'>{escape(c.replace('_', ' '))}</th>" for c in columns]


def number_cell(value: float | int | None, text: str) -> str:
    """A right-aligned cell showing ``text`` (already HTML) that sorts by ``value``."""
    return f"<td data-v='{'' if value is None else float(value)}'>{text}</td>"


def text_cell(value: Any) -> str:
    """A left-aligned cell of escaped text."""
    return f"<td class='t'>{fmt(value)}</td>"


def page_start(title: str, css: str = "") -> str:
    """``<!DOCTYPE>`` up to the opened ``<body>`` and an ``<h1>`` of ``title``; ``css`` is added to :data:`CSS`."""
    t = escape(title)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title><style>{CSS}{css}</style>"
            f"<script>{SORT_JS}</script></head><body>\n<h1>{t}</h1>")


def page_end() -> str:
    """What closes a page opened by :func:`page_start`."""
    return "\n</body></html>\n"


def image(src: str, alt: str, cls: str) -> str:
    """An ``<img>`` of a path relative to the page (so the folder can be moved or mailed whole)."""
    return f"<img class='{escape(cls)}' src='{escape(src)}' alt='{escape(alt)}'>"


def link(href: str, text: str | None = None) -> str:
    """An ``<a>`` to a path relative to the page, showing ``text`` (default: the path)."""
    return f"<a href='{escape(href)}'>{escape(href if text is None else text)}</a>"
