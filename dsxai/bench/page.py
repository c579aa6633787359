"""``report.html`` of a benchmark run: the results with their CIs beside the baselines, the per-category
table, the metrics plot, the gallery, the run's timings and config; one self-contained page, every string
from data escaped, every picture linked relatively.

Why a page: results.json is for programs and summary.md for a repository; a person opens a file from disk.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from ..htmlpage import escape, fmt, image, link, number_cell, page_end, page_start, sortable_header, text_cell

__all__ = ["REPORT", "report_html", "run_timings"]

#: the page's file name in the output folder
REPORT = "report.html"

_CSS = """
tr.baseline td{background:#f4f6fb;color:#555}
span.ci{color:#777;font-size:11px}
#results td,#categories td{white-space:nowrap}
#config td.t{overflow-wrap:anywhere}
img.plot,img.gallery{max-width:100%;border:1px solid #ddd}
"""

Record = dict[str, Any]


def faithfulness_label(cfg: dict[str, Any]) -> str:
    """How a run's ``config`` section says its deletion / insertion setting: "off" or "on (K=20[, box span])"."""
    if not cfg["faithfulness"]:
        return "off"
    return f"on (K={cfg['steps']}{', box span' if cfg.get('span') == 'box' else ''})"


def run_timings(records: Iterable[Record]) -> dict[str, dict[str, float]]:
    """Per timed step (a method's explain call): images timed, total and mean seconds per image, read from
    the records' ``seconds`` (resumed images keep the time of the run that made them)."""
    totals: dict[str, list[float]] = {}
    for r in records:
        for name, seconds in (r.get("seconds") or {}).items() if r.get("status") == "ok" else ():
            if isinstance(seconds, (int, float)):
                totals.setdefault(name, []).append(float(seconds))
    return {name: {"images": len(v), "total_s": sum(v), "mean_s": sum(v) / len(v)} for name, v in totals.items()}


def _value(summary: dict[str, Any]) -> str:
    """A metric cell: its mean and 95 % CI, sorting by the mean."""
    mean = summary.get("mean")
    if mean is None:
        return number_cell(None, fmt(None))
    lo, hi = summary["ci95"]
    return number_cell(mean, f"{mean:.3f}<br><span class='ci'>[{lo:.3f}, {hi:.3f}]</span>")


def _head(results: dict[str, Any]) -> list[str]:
    """Title, what was run, and the counts."""
    cfg, c = results["config"], results["counts"]
    faith = faithfulness_label(cfg)
    parts = [page_start("dsxai localization benchmark", _CSS),
             f"<p class='note'>model {fmt(cfg['model'])}, methods {fmt(', '.join(cfg['methods']))}, categories "
             f"{fmt(', '.join(cfg['categories'] or []))}; pairs: detections matched to objects at IoU &ge; "
             f"{cfg['match_iou']:g}; pointing tolerance {cfg['tolerance']:g} px, IoU at "
             f"{cfg['threshold']:g} of the max, faithfulness {faith}; means over pairs with the 95 % "
             f"bootstrap CI (seed {fmt(cfg['seed'])})</p>",
             "<h2>Counts</h2><table id='counts'><tbody>"]
    labels = (("images", "images_ok"), ("images that failed", "images_failed"), ("objects", "gt"),
              ("detections", "detections"), ("matched pairs", "matched"),
              ("unmatched detections", "unmatched_detections"), ("missed objects", "missed_gt"))
    parts += [f"<tr>{text_cell(label)}{number_cell(c[k], fmt(c[k]))}</tr>" for label, k in labels]
    parts.append("</tbody></table>")
    if c["matched"] == 0:
        parts.append("<p><b>No detection matched a ground-truth object</b>: check the confidence threshold, the "
                     "class map and the image folder.</p>")
    return parts


def _results(results: dict[str, Any], shown: Sequence[str]) -> list[str]:
    """One row per method, then one per baseline (maps that know only where the box or image centre is)."""
    parts = ["<h2>Results</h2><p class='note'>baselines (shaded) are the floor a method must beat; click a "
             "column header to sort</p><table id='results'><thead><tr>",
             *sortable_header(["name", "kind", "pairs", *shown]), "</tr></thead><tbody>"]
    for kind in ("methods", "baselines"):
        for name, entry in results[kind].items():
            cells = "".join(_value(entry[k]) for k in shown)
            parts.append(f"<tr class='{kind[:-1]}'>{text_cell(name)}{text_cell(kind[:-1])}"
                         f"{number_cell(entry['n_pairs'], fmt(entry['n_pairs']))}{cells}</tr>")
    parts.append("</tbody></table>")
    return parts


def _categories(results: dict[str, Any], shown: Sequence[str]) -> list[str]:
    """The mean of each metric per category and method or baseline (no CI: categories can be small)."""
    parts = ["<h2>Per category</h2><table id='categories'><thead><tr>",
             *sortable_header(["category", "name", "pairs", *shown]), "</tr></thead><tbody>"]
    rows = [(cat, kind, name, figures) for kind in ("methods", "baselines")
            for name, entry in results[kind].items() for cat, figures in entry["per_category"].items()]
    for cat, kind, name, figures in sorted(rows, key=lambda r: r[0]):
        cells = "".join(number_cell(figures.get(k), fmt(figures.get(k), digits=3)) for k in shown)
        parts.append(f"<tr class='{kind[:-1]}'>{text_cell(cat)}{text_cell(name)}"
                     f"{number_cell(figures['n_pairs'], fmt(figures['n_pairs']))}{cells}</tr>")
    parts.append("</tbody></table>")
    return parts


def _pictures(plot: str | None, galleries: Sequence[str]) -> list[str]:
    """The metrics plot and each method's gallery, linked relatively."""
    parts = []
    if plot:
        parts += ["<h2>Metrics plot</h2>", f"<p>{image(plot, 'mean and 95 % CI of each metric', 'plot')}</p>"]
    if galleries:
        parts.append("<h2>Gallery</h2><p class='note'>best (top row) and worst (bottom row) pairs of each method "
                     "by energy_box (E); the detection with its label, the ground-truth box in green</p>")
        for src in galleries:
            name = src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            parts += [f"<h3>{escape(name)}</h3>", f"<p>{image(src, f'gallery of {name}', 'gallery')}</p>"]
    return parts


def _timings(timings: dict[str, dict[str, float]]) -> list[str]:
    if not timings:
        return []
    parts = ["<h2>Timings</h2><p class='note'>seconds of each method's explain call per image (scoring and "
             "faithfulness forwards not included)</p><table id='timings'><thead><tr>",
             *sortable_header(["step", "images", "total_s", "mean_s"]), "</tr></thead><tbody>"]
    for name, t in timings.items():
        parts.append(f"<tr>{text_cell(name)}{number_cell(t['images'], fmt(t['images']))}"
                     f"{number_cell(t['total_s'], fmt(t['total_s'], digits=2))}"
                     f"{number_cell(t['mean_s'], fmt(t['mean_s'], digits=3))}</tr>")
    parts.append("</tbody></table>")
    return parts


def _config(config: dict[str, Any], files: Sequence[str]) -> list[str]:
    """The run's settings (as results.json holds them) and links to its other files."""
    parts = ["<h2>Config</h2><table id='config'><tbody>"]
    for key, value in config.items():
        # floats as given (15.0, not a rounded 15.00); containers as JSON
        shown = repr(value) if isinstance(value, float) else value if isinstance(value, (str, int, bool)) or \
            value is None else json.dumps(value)
        parts.append(f"<tr>{text_cell(key)}{text_cell(shown)}</tr>")
    parts.append("</tbody></table>")
    if files:
        parts.append("<p>files: " + ", ".join(link(f) for f in files) + "</p>")
    return parts


def _errors(errors: list[dict[str, Any]]) -> list[str]:
    if not errors:
        return []
    parts = ["<h2>Failed images</h2><table id='errors'><thead><tr><th>image</th><th>error</th></tr></thead><tbody>"]
    parts += [f"<tr>{text_cell(e.get('file_name') or e['image_id'])}{text_cell(e['error'])}</tr>" for e in errors]
    parts.append("</tbody></table>")
    return parts


def report_html(results: dict[str, Any], shown: Sequence[str], *, timings: dict[str, dict[str, float]] | None = None,
                plot: str | None = None, galleries: Sequence[str] = (), files: Sequence[str] = ()) -> str:
    """The page of a run's ``results.json`` dict: ``shown`` metrics (in order) in the tables, ``timings`` from
    :func:`run_timings`, and ``plot``, ``galleries`` and ``files`` as paths relative to the page's folder
    (the caller passes only files it wrote)."""
    sections = [_head(results), _results(results, shown), _categories(results, shown), _pictures(plot, galleries),
                _timings(timings or {}), _errors(results.get("errors") or []), _config(results["config"], files)]
    return "\n".join(line for parts in sections for line in parts) + page_end()
