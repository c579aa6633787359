"""``report.html``: one self-contained page (inline CSS and a sorting script), every value HTML-escaped.

Why self-contained: the report is mailed and opened from disk, without a server or network.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import AuditResult

__all__ = ["report_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}
td.t{text-align:left;max-width:32em}
tr.flag{background:#fff3f0}
img.thumb{height:96px;image-rendering:pixelated}
.note{color:#666;font-size:13px}
"""

_JS = """
function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const desc=th.dataset.dir!=='desc';th.dataset.dir=desc?'desc':'asc';
const key=r=>{const c=r.children[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent;const n=parseFloat(v);
return isNaN(n)?v:n};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a>c?1:a<c?-1:0)*(desc?-1:1)}).forEach(r=>b.appendChild(r));}
"""

_CLASS_COLUMNS = ("class", "masks", "flagged", "evidence_inside", "evidence_ring", "evidence_outside",
                  "pointing_rate", "confidence", "iou_gt")
_MASK_COLUMNS = ("score", "image", "mask", "class", "area", "confidence", "evidence_inside", "evidence_ring",
                 "evidence_outside", "pointing_hit", "iou_gt", "evidence_in_gt", "reasons", "thumbnail")


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0%}" if percent else f"{value:.2f}"
    return html.escape(str(value))


def _header(columns: tuple[str, ...]) -> list[str]:
    return [f"<th onclick='sortBy(this)'>{c.replace('_', ' ')}</th>" for c in columns]


def _head(result: "AuditResult") -> list[str]:
    """Title, settings line and the summary table."""
    s, st = result.summary, result.settings
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>dsxai audit</title><style>{_CSS}</style>"
             f"<script>{_JS}</script></head><body>",
             "<h1>dsxai mask audit</h1>",
             f"<p class='note'>model {_fmt(st['model'])} ({_fmt(st['adapter'])}), method {_fmt(st['method'])}, "
             f"layers {_fmt(', '.join(st['layers']))}, ring max({st['ring_px']} px, {st['ring_frac']}&middot;"
             f"&radic;area), flags: evidence outside &ge; {st['thresholds']['max_outside']}, confidence &lt; "
             f"{st['thresholds']['min_confidence']}, IoU with ground truth &lt; {st['thresholds']['min_iou']}</p>",
             "<h2>Summary</h2><table id='summary'><tbody>"]
    for label, value in (("images", s["images"]), ("images that failed", s["images_failed"]),
                         ("images without ground truth", s["images_without_gt"]), ("masks", s["masks"]),
                         ("flagged masks", s["flagged"])) + tuple((f"flag: {k}", v) for k, v in s["by_flag"].items()):
        parts.append(f"<tr><td class='t'>{html.escape(label)}</td><td>{value}</td></tr>")
    parts.append("</tbody></table>")
    return parts


def _classes(result: "AuditResult") -> list[str]:
    parts = ["<h2>Per class</h2><table id='classes'><thead><tr>", *_header(_CLASS_COLUMNS), "</tr></thead><tbody>"]
    for c in result.classes:
        cells = "".join(f"<td{' class=t' if k == 'class' else ''}>"
                        f"{_fmt(c[k], k.startswith('evidence') or k == 'pointing_rate')}</td>" for k in _CLASS_COLUMNS)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    return parts


def _mask_cell(row: dict[str, Any], k: str) -> str:
    v = row.get(k)
    if k == "thumbnail":
        cell = (f"<img class='thumb' src='{html.escape(v, quote=True)}' alt='mask {row['mask']} of "
                f"{html.escape(row['image'], quote=True)}'>") if v else ""
        return f"<td>{cell}</td>"
    if k == "reasons":
        return f"<td class='t'>{'<br>'.join(html.escape(x) for x in v)}</td>"
    if k in ("image", "class"):
        return f"<td class='t'>{_fmt(v)}</td>"
    return f"<td data-v='{'' if v is None else float(v)}'>{_fmt(v, k.startswith('evidence'))}</td>"


def _masks(result: "AuditResult") -> list[str]:
    parts = ["<h2>Masks</h2><p class='note'>click a column header to sort; sorted by score "
             "(how much a mask needs a look) first</p><table id='masks'><thead><tr>", *_header(_MASK_COLUMNS),
             "</tr></thead><tbody>"]
    for row in result.ranked():
        cells = "".join(_mask_cell(row, k) for k in _MASK_COLUMNS)
        parts.append(f"<tr class='{'flag' if row['flags'] else ''}'>{cells}</tr>")
    parts.append("</tbody></table>")
    return parts


def _problems(result: "AuditResult") -> list[str]:
    problems = [i for i in result.images if i["status"] == "error" or i["warning"]]
    if not problems:
        return []
    parts = ["<h2>Images with problems</h2><table id='problems'><thead><tr><th>image</th><th>status</th>"
             "<th>message</th></tr></thead><tbody>"]
    for i in problems:
        parts.append(f"<tr><td class='t'>{_fmt(i['image'])}</td><td class='t'>{_fmt(i['status'])}</td>"
                     f"<td class='t'>{_fmt(i['error'] or i['warning'])}</td></tr>")
    parts.append("</tbody></table>")
    return parts


def report_html(result: "AuditResult") -> str:
    """The page: settings, summary, per-class table, masks by score (thumbnails), images with problems."""
    sections = [_head(result), _classes(result), _masks(result)]  # each ends with its table, the next one's
    text = "".join("\n".join(parts) for parts in sections)        # heading follows on the same line
    problems = _problems(result)
    return text + ("\n" + "\n".join(problems) if problems else "") + "\n</body></html>\n"
