"""Which layer? Explain one image's detections at each candidate layer, beside a randomised-weights twin.

:func:`compare_layers` explains every detection at each candidate layer (the adapter's default set, then
the stages of the backbone/neck, or the layers given), and the same detections with a
:func:`dsxai.sanity.randomized_copy` of the model. Per layer: peak-in-box share, mean energy in box (trained
and randomised) and the mean rank correlation of trained vs randomised maps. It recommends the layer that maximises
``energy_in_box - energy_in_box_random``: the share of the maps' mass inside their boxes that the trained
weights earn beyond what the architecture alone puts there (a dense detector's maps sit near the scoring
anchor whatever the weights, so energy in box alone rewards the architecture, and the whole-map rank
correlation is dominated by zeros both maps share outside the receptive field).
Why a grid: which layer explains best is a judgement people make by looking; the figures say why.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .detections import Detections
from .explanation import map_figures
from .imaging import ImageLike, load_image
from .layers import probe_outputs, resolve_layers
from .pipeline import explain_maps
from .render import draw_detections, grid, overlay, titled, write_png
from .runs import check_output_folder, write_atomic
from .sanity import randomized_copy, randomized_maps, rank_correlation

__all__ = ["LayerRow", "LayerComparison", "compare_layers", "stage_layers", "candidate_layers",
           "comparison_picture", "MAX_CANDIDATES", "MAX_ROWS", "CELL", "PNG", "JSON"]

#: at most this many columns (candidate layers); more stages are thinned evenly, and the result says so
MAX_CANDIDATES = 8
#: at most this many detections (rows, highest scores first) in the picture; the table uses all of them
MAX_ROWS = 8
#: side of one grid cell in pixels: titles drawn at this size are >= 12 px tall (dsxai.render.text_style)
CELL = 420
PNG, JSON = "layers.png", "layers.json"


@dataclass
class LayerRow:
    """The figures of one candidate layer (means over the image's detections; NaN: undefined)."""

    name: str
    layers: list[str]
    default: bool
    peak_in_box: float
    energy_in_box: float
    peak_in_box_random: float
    energy_in_box_random: float
    rank_correlation: float
    score: float


@dataclass
class LayerComparison:
    """What :func:`compare_layers` found: one row per candidate, the recommendation and why."""

    rows: list[LayerRow]
    recommended: str | None
    reason: str
    method: str
    detections: Detections
    skipped: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    maps: dict[str, Tensor] = field(default_factory=dict, repr=False)
    random_maps: dict[str, Tensor] = field(default_factory=dict, repr=False)
    #: per candidate, per detection: (energy in box, rank correlation), the figures of the picture's cells
    cell_figures: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, repr=False)

    def table(self) -> str:
        """The rows as a fixed-width text table (what the CLI prints)."""
        head = f"{'layer':34s} {'peak_in_box':>11s} {'energy':>7s} {'energy_rand':>11s} {'rank_corr':>9s} {'score':>7s}"
        lines = [head]
        for r in self.rows:
            mark = " *" if r.name == self.recommended else ""
            lines.append(f"{r.name[:34]:34s} {r.peak_in_box:11.2f} {r.energy_in_box:7.3f} "
                         f"{r.energy_in_box_random:11.3f} {r.rank_correlation:9.3f} {r.score:7.3f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: rows (NaN as null), recommendation, reason, criterion, skipped stages, detections."""
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                for r in self.rows]
        return {"method": self.method, "criterion": "energy_in_box - energy_in_box_random", "rows": rows,
                "recommended": self.recommended, "reason": self.reason, "skipped": self.skipped,
                "detections": self.detections.to_dict()}


def stage_layers(model: nn.Module, example: Tensor) -> list[str]:
    """The stages of a backbone/neck: the children of the one container with the most children that output a
    ``[B, C, h, w]`` tensor (Ultralytics: ``model.0 .. model.21``; a ResNet body: ``conv1 .. layer4``), in
    call order."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for call in probe_outputs(model, example):
        if call.name in seen or not isinstance(call.output, Tensor) or call.output.ndim != 4:
            continue
        seen.add(call.name)
        parent = call.name.rsplit(".", 1)[0] if "." in call.name else ""
        found.setdefault(parent, []).append(call.name)
    if not found:
        return []
    return max(found.values(), key=len)  # max keeps the first of equals: the outer container


def _thin(names: list[str], keep: int) -> list[str]:
    """``keep`` names spread evenly from first to last (all of them when there are few enough)."""
    if len(names) <= keep:
        return list(names)
    if keep <= 1:
        return names[-1:]
    picks = sorted({round(i * (len(names) - 1) / (keep - 1)) for i in range(keep)})
    return [names[i] for i in picks]


def candidate_layers(adapter: Any, example: Tensor, cap: int = MAX_CANDIDATES
                     ) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``(name, layers)`` candidates: the adapter's default set first (one fused column), then the stages
    (:func:`stage_layers`) thinned to ``cap`` columns in all; and the stages left out."""
    defaults = list(adapter.default_layers)
    stages = [s for s in stage_layers(adapter.model, example) if [s] != defaults]
    kept = _thin(stages, cap - 1)
    return [("+".join(defaults), defaults)] + [(s, [s]) for s in kept], [s for s in stages if s not in kept]


def _given_candidates(model: nn.Module, layers: Sequence[str] | str, cap: int = MAX_CANDIDATES
                      ) -> list[tuple[str, list[str]]]:
    """``--layers`` as candidates: each name one column (``a+b`` fuses a and b); unknown names fail here."""
    names = [layers] if isinstance(layers, str) else list(layers)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("layers is empty: name at least one layer to compare, e.g. layers=['model.15']")
    if len(names) > cap:
        raise ValueError(f"{len(names)} layers given; compare at most {cap} at a time: pass fewer")
    out = []
    for name in names:
        parts = [p.strip() for p in name.split("+") if p.strip()]
        resolve_layers(model, parts)
        out.append(("+".join(parts), parts))
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _row(name: str, layers: list[str], default: bool, dets: Detections, maps: Tensor, random: Tensor
         ) -> tuple[LayerRow, list[float], list[float]]:
    """One table row, and per detection its energy in box and rank correlation (for the picture's cells).
    A map with no evidence counts as outside its box (it shows nothing)."""
    def shares(m: Tensor) -> tuple[list[float], list[float], bool]:
        figs = map_figures(dets, m)
        return ([0.0 if f["no_evidence"] else float(f["peak_in_box"]) for f in figs],
                [0.0 if f["no_evidence"] else float(f["energy_in_box"]) for f in figs],
                any(not f["no_evidence"] for f in figs))

    peak, energy, evident = shares(maps)
    peak_r, energy_r, _ = shares(random)
    corrs = rank_correlation(maps, random).tolist()
    e, e_r, corr = _mean(energy), _mean(energy_r), _mean(corrs)
    score = e - e_r if evident else float("nan")  # a layer without evidence has nothing to recommend
    row = LayerRow(name, layers, default, round(_mean(peak), 4), round(e, 4), round(_mean(peak_r), 4),
                   round(e_r, 4), round(corr, 4), round(score, 4))
    return row, energy, corrs


def _recommend(rows: list[LayerRow]) -> tuple[str | None, str]:
    """The argmax of ``score`` and the figures that decided (with the runner-up's)."""
    ranked = sorted([r for r in rows if not math.isnan(r.score)], key=lambda r: -r.score)
    if not ranked:
        return None, "no layer gave evidence (every map was zero); try another method or layers"

    def say(r: LayerRow) -> str:
        return (f"{r.name}: energy in box {r.energy_in_box:.3f} - {r.energy_in_box_random:.3f} with random "
                f"weights = {r.score:.3f}")
    reason = say(ranked[0]) + (f"; next best {say(ranked[1])}" if len(ranked) > 1 else "")
    return ranked[0].name, reason


def compare_layers(model_or_adapter: Any, image: ImageLike, layers: Sequence[str] | str | None = None,
                   method: str = "layercam", out: str | Path | None = None, *, conf: float | None = None,
                   max_dets: int | None = None, seed: int = 0, device: str | None = None, trust: bool = False,
                   adapter_options: dict[str, Any] | None = None, max_pixels: int | None = None,
                   max_layers: int = MAX_CANDIDATES) -> LayerComparison:
    """Explain ``image``'s detections at each candidate layer, trained and with randomised weights.

    Candidates: ``layers`` (names; ``"a+b"`` fuses a and b in one column; at most ``max_layers``), else the
    adapter's default set and the backbone/neck stages (:func:`candidate_layers`, thinned to ``max_layers``
    columns, default :data:`MAX_CANDIDATES`: ``skipped`` lists the stages left out). Each column costs two
    forward/backward passes. Detections come from the trained
    model in both runs. With ``out``: writes ``layers.png`` (rows: the :data:`MAX_ROWS` best-scoring
    detections, columns: candidates; each cell the map over a crop around the box, box drawn, titled with the
    layer and that cell's energy in box ``E`` and rank correlation ``r``) and ``layers.json``, atomically;
    ``out`` may not hold ``image``. The model is given back as it came.
    Raises ValueError for an unknown layer, an image without detections or an output folder holding the image.
    """
    from .adapters import resolve

    if not isinstance(max_layers, int) or isinstance(max_layers, bool) or max_layers < 1:
        raise ValueError(f"max_layers must be a positive integer, got {max_layers!r}")
    if out is not None and isinstance(image, (str, Path)):
        check_output_folder(Path(out), [image])
    picture = load_image(image, max_pixels)
    adapter = resolve(model_or_adapter, device=device, trust=trust, **(adapter_options or {}))
    skipped: list[str] = []
    if layers is not None:
        candidates = _given_candidates(adapter.model, layers, max_layers)
    else:
        candidates, skipped = candidate_layers(adapter, adapter.preprocess(picture).tensor, max_layers)
    options = _target_options(adapter, conf, max_dets)
    twin = randomized_copy(adapter.model, seed)
    result = _explain_all(adapter, twin, picture, method, candidates, options)
    result.skipped = skipped
    if out is not None:
        result.files = _write(result, picture, Path(out))
    return result


def _target_options(adapter: Any, conf: float | None, max_dets: int | None) -> dict[str, Any]:
    """``conf``/``max_dets`` under the names the adapter's targets take (semantic segmenters: no scores)."""
    segment = getattr(adapter, "task", "detect") == "segment"
    options: dict[str, Any] = {}
    if conf is not None and not segment:
        options["conf"] = conf
    if max_dets is not None:
        options["max_masks" if segment else "max_dets"] = max_dets
    return options


def _explain_all(adapter: Any, twin: nn.Module, image: np.ndarray, method: str,
                 candidates: list[tuple[str, list[str]]], options: dict[str, Any]) -> LayerComparison:
    """Every candidate explained trained and randomised; the rows, the recommendation and the maps."""
    defaults = list(adapter.default_layers)
    rows, maps, random, cells = [], {}, {}, {}
    reference: Detections | None = None
    for name, layers in candidates:
        dets, trained = explain_maps(adapter, image, method, layers, **options)
        dets = dets[0].cpu()
        if reference is None:
            if len(dets) == 0:
                raise ValueError("no detections in the image at these settings: nothing to compare; lower conf "
                                 "or pass another image")
            reference = dets
        elif len(dets) != len(reference):  # one image, one target: every layer explains the same detections
            raise ValueError(f"layer {name!r} explained {len(dets)} detections, the first layer {len(reference)}")
        _, randomised = randomized_maps(adapter, image, method, layers, random_model=twin, **options)
        maps[name], random[name] = trained[0].float().cpu(), randomised[0].float().cpu()
        row, energy, corrs = _row(name, layers, layers == defaults, reference, maps[name], random[name])
        rows.append(row)
        cells[name] = (energy, corrs)
    recommended, reason = _recommend(rows)
    return LayerComparison(rows, recommended, reason, method, reference, maps=maps, random_maps=random,
                           cell_figures=cells)


def _window(box: Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    """A square crop around ``box``, twice its longer side (at least 32 px), inside the image where it fits."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = min(max(2 * max(x2 - x1, y2 - y1), 32.0), float(max(h, w)))
    left = min(max((x1 + x2 - side) / 2, 0.0), max(w - side, 0.0))
    top = min(max((y1 + y2 - side) / 2, 0.0), max(h - side, 0.0))
    return int(left), int(top), min(w, int(math.ceil(left + side))), min(h, int(math.ceil(top + side)))


def _cell(image: np.ndarray, heat: Tensor, detection: Detections, size: int = CELL) -> np.ndarray:
    """One detection's map over a crop around its box, rescaled to [0, 1] in the crop, scaled to fit
    ``size`` x ``size`` (white margin), with the box and its label drawn."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = _window(detection.boxes[0], h, w)
    scale = size / max(y2 - y1, x2 - x1)
    nh, nw = max(1, min(size, round((y2 - y1) * scale))), max(1, min(size, round((x2 - x1) * scale)))
    crop = torch.from_numpy(np.ascontiguousarray(image[y1:y2, x1:x2])).permute(2, 0, 1)[None].float()
    crop = F.interpolate(crop, size=(nh, nw), mode="bilinear", align_corners=False)
    crop_np = crop[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    part = heat[y1:y2, x1:x2].float()
    low, high = part.min(), part.max()
    part = (part - low) / (high - low) if high > low else torch.zeros_like(part)
    part = F.interpolate(part[None, None], size=(nh, nw), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    shifted = (detection.boxes - torch.tensor([x1, y1, x1, y1], dtype=torch.float32)) * scale
    one = Detections(boxes=shifted, scores=detection.scores, labels=detection.labels, image_size=(nh, nw),
                     class_names=detection.class_names)
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[:nh, :nw] = draw_detections(overlay(crop_np, part), one)
    return canvas


def comparison_picture(result: LayerComparison, image: np.ndarray, max_rows: int = MAX_ROWS,
                       size: int = CELL) -> np.ndarray:
    """The grid: one row per detection (the ``max_rows`` highest scores), one column per candidate; each
    cell titled with the layer, and below it ``E`` (energy in box) and ``r`` (rank correlation with the
    randomised-weights map) of that detection at that layer."""
    dets = result.detections
    order = dets.scores.argsort(descending=True)[:max_rows].tolist()
    cells = []
    for k in order:
        for row in result.rows:
            energy, corrs = result.cell_figures[row.name]
            figures = f"E {energy[k]:.2f}  r {corrs[k]:.2f}"
            cells.append(titled(titled(_cell(image, result.maps[row.name][k], dets[k], size), figures), row.name))
    return grid(cells, columns=len(result.rows))


def _write(result: LayerComparison, image: np.ndarray, out: Path) -> list[Path]:
    """``layers.png`` and ``layers.json`` in ``out``, each written atomically."""
    png = write_png(out / PNG, comparison_picture(result, image))
    shown = min(len(result.detections), MAX_ROWS)
    doc = dict(result.to_dict(), picture={"file": PNG, "rows": shown, "columns": len(result.rows), "cell": CELL,
                                          "detections_shown": f"{shown} of {len(result.detections)} by score"})
    return [png, write_atomic(out / JSON, json.dumps(doc, indent=2))]
