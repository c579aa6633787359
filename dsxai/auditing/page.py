"""``report.html``: one self-contained page (inline CSS and a sorting script), every value HTML-escaped.

Why self-contained: the report is mailed and opened from disk, without a server or network.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..htmlpage import escape, fmt, image, number_cell, page_end, page_start, sortable_header, text_cell

if TYPE_CHECKING:
    from .report import AuditResult

__all__ = ["report_html"]

_CSS = """
tr.flag{background:#fff3f0}
img.thumb{height:96px;image-rendering:pixelated}
"""

_CLASS_COLUMNS = ("class", "masks", "flagged", "evidence_inside", "evidence_ring", "evidence_outside",
                  "pointing_rate", "confidence", "iou_gt")
_MASK_COLUMNS = ("score", "image", "mask", "class", "area", "confidence", "evidence_inside", "evidence_ring",
                 "evidence_outside", "pointing_hit", "iou_gt", "evidence_in_gt", "reasons", "thumbnail")


def _head(result: "AuditResult") -> list[str]:
    """Title, settings line and the summary table."""
    s, st = result.summary, result.settings
    parts = [page_start("dsxai mask audit", _CSS),
             f"<p class='note'>model {fmt(st['model'])} ({fmt(st['adapter'])}), method {fmt(st['method'])}, "
             f"layers {fmt(', '.join(st['layers']))}, ring max({st['ring_px']} px, {st['ring_frac']}&middot;"
             f"&radic;area), flags: evidence outside &ge; {st['thresholds']['max_outside']}, confidence &lt; "
             f"{st['thresholds']['min_confidence']}, IoU with ground truth &lt; {st['thresholds']['min_iou']}</p>",
             "<h2>Summary</h2><table id='summary'><tbody>"]
    for label, value in (("images", s["images"]), ("images that failed", s["images_failed"]),
                         ("images without ground truth", s["images_without_gt"]), ("masks", s["masks"]),
                         ("flagged masks", s["flagged"])) + tuple((f"flag: {k}", v) for k, v in s["by_flag"].items()):
        parts.append(f"<tr><td class='t'>{escape(label)}</td><td>{value}</td></tr>")
    parts.append("</tbody></table>")
    return parts


def _classes(result: "AuditResult") -> list[str]:
    parts = ["<h2>Per class</h2><table id='classes'><thead><tr>", *sortable_header(_CLASS_COLUMNS),
             "</tr></thead><tbody>"]
    for c in result.classes:
        cells = "".join(f"<td{' class=t' if k == 'class' else ''}>"
                        f"{fmt(c[k], k.startswith('evidence') or k == 'pointing_rate')}</td>" for k in _CLASS_COLUMNS)
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    return parts


def _mask_cell(row: dict[str, Any], k: str) -> str:
    v = row.get(k)
    if k == "thumbnail":
        alt = f"mask {row['mask']} of {row['image']}"
        return f"<td>{image(v, alt, 'thumb') if v else ''}</td>"
    if k == "reasons":
        return f"<td class='t'>{'<br>'.join(escape(x) for x in v)}</td>"
    if k in ("image", "class"):
        return text_cell(v)
    return number_cell(v, fmt(v, k.startswith('evidence')))


def _masks(result: "AuditResult") -> list[str]:
    parts = ["<h2>Masks</h2><p class='note'>click a column header to sort; sorted by score "
             "(how much a mask needs a look) first</p><table id='masks'><thead><tr>", *sortable_header(_MASK_COLUMNS),
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
        parts.append(f"<tr>{text_cell(i['image'])}{text_cell(i['status'])}{text_cell(i['error'] or i['warning'])}"
                     "</tr>")
    parts.append("</tbody></table>")
    return parts


def report_html(result: "AuditResult") -> str:
    """The page: settings, summary, per-class table, masks by score (thumbnails), images with problems."""
    sections = [_head(result), _classes(result), _masks(result)]  # each ends with its table, the next one's
    text = "".join("\n".join(parts) for parts in sections)        # heading follows on the same line
    problems = _problems(result)
    return text + ("\n" + "\n".join(problems) if problems else "") + page_end()
