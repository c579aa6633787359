"""The results of :func:`dsxai.explain`: :class:`Explanation` (detections and maps), its figures and files.

>>> import dsxai
>>> ex = dsxai.explain("yolov8n.pt", ["bus.jpg"])          # doctest: +SKIP
>>> picture = ex.render(0)                                   # doctest: +SKIP
>>> ex.figures(0)[0]["energy_in_box"]                        # doctest: +SKIP
>>> ex.save("out/")                                          # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .boxes import box_masks
from .colorbar import caption, with_colorbar
from .detections import Detections
from .imaging import ImageLike, load_images
from .labels import LARGE_BOX
from .metrics import baseline_maps, energy_pointing_game
from .render import (hidden_labels, render_detections, render_grid, render_masks, render_panels, shrunk_size,
                     write_png)
from .runs import derived_clash, inside, read_json, safe_name, write_atomic, write_manifest

__all__ = ["Explanation", "map_figures", "check_stem", "write_index", "jsonable"]

# explain, DEFAULT_METHOD and resolve_classes live in dsxai.pipeline, which builds Explanations; they are
# served from here too (lazily: an import at load time would be a cycle) so older imports keep working.
_FROM_PIPELINE = ("explain", "DEFAULT_METHOD", "resolve_classes")

_FORMAT = "dsxai.explanation/1"
INDEX = "explanation.json"  # the folder's manifest: format, stems, settings and exactly the run's files
#: the suffixes a saved image adds to its stem for its other files (``<stem>_det<k>.png``, ``<stem>_maps.npz``)
DERIVED_SUFFIXES = r"_det\d+|_maps|_grid"
_STYLES = ("fused", "grid", "masks")
_GRID_DETAIL = "one map per detection"


# ----------------------------------------------------------------------------------------------- figures


def map_figures(detections: Detections, maps: Tensor) -> list[dict[str, Any]]:
    """Per map: what it explains, where it points, and whether it says more than its box.

    Keys: ``index``, ``label``, ``name``, ``score``, ``box`` (xyxy), ``peak`` ([x, y] pixel of the
    maximum), ``peak_value``, ``peak_in_box``, ``energy_in_box`` (share of the map's mass inside its
    own box), ``energy_outside_box`` (the rest: evidence the fused picture hides; 0 for an all-zero
    map), ``no_evidence`` (the map is all zero: nothing positive at the explained layers, see
    ``dsxai.engine.warn_no_evidence``), ``box_share`` (the box's share of the image) and ``large_box``
    (``box_share > LARGE_BOX``: energy in box is near 1 for any map there), ``prior_energy_in_box`` (the
    same figure for the box prior, a Gaussian at the box centre: what the box alone says).
    When the detections have masks, also ``peak_in_mask``, ``energy_in_mask``, ``prior_energy_in_mask`` and
    ``beats_box_prior`` (the map puts more of its mass in the object's mask than the box prior does: it says
    more than its box); without masks ``beats_box_prior`` is None (a box alone cannot tell).
    """
    if len(detections) != len(maps):
        raise ValueError(f"got {len(maps)} maps for {len(detections)} detections")
    if len(maps) == 0:
        return []
    h, w = maps.shape[-2:]
    peak_value, peak = maps.flatten(1).max(1)
    py, px = peak // w, peak % w
    rows = torch.arange(len(maps), device=maps.device)
    boxes = box_masks(detections.boxes, (h, w), maps.device)
    prior = baseline_maps("box_gaussian", detections.boxes.to(maps.device), (h, w))
    cols = {"peak_in_box": boxes[rows, py, px], "energy_in_box": energy_pointing_game(maps, boxes),
            "prior_energy_in_box": energy_pointing_game(prior, boxes),
            "box_share": boxes.flatten(1).float().mean(1)}
    masks = None if detections.masks is None else detections.masks.to(maps.device).bool()
    if masks is not None:
        cols.update(peak_in_mask=masks[rows, py, px], energy_in_mask=energy_pointing_game(maps, masks),
                    prior_energy_in_mask=energy_pointing_game(prior, masks))
    has = peak_value > 0  # an all-zero map: its peak and shares say nothing (the layer gave no evidence)
    return [_figure(k, detections, px, py, peak_value, has, cols) for k in range(len(maps))]


def _figure(k: int, detections: Detections, px: Tensor, py: Tensor, peak_value: Tensor, has: Tensor,
            cols: dict[str, Tensor]) -> dict[str, Any]:
    fig = {"index": k, "label": int(detections.labels[k]), "name": detections.names[k],
           "score": round(float(detections.scores[k]), 6),
           "box": [round(float(v), 2) for v in detections.boxes[k].tolist()], "peak": [int(px[k]), int(py[k])],
           "peak_value": round(float(peak_value[k]), 6), "no_evidence": not bool(has[k])}
    for key, values in cols.items():
        value = values[k]
        fig[key] = bool(value) if value.dtype == torch.bool else round(float(value), 6)
    fig["energy_outside_box"] = round(1.0 - fig["energy_in_box"], 6) if has[k] else 0.0
    fig["large_box"] = fig["box_share"] > LARGE_BOX
    fig["beats_box_prior"] = (bool(has[k]) and fig["energy_in_mask"] > fig["prior_energy_in_mask"]
                              if "energy_in_mask" in fig else None)
    return fig


# ----------------------------------------------------------------------------------------------- Explanation


@dataclass
class Explanation:
    """Detections and one map per detection, for each image of one :func:`explain` call.

    Attributes:
        detections: one :class:`~dsxai.Detections` per image (original pixels).
        maps: one float ``[T_i, H_i, W_i]`` tensor per image, in [0, 1], over the original image;
            row ``k`` explains ``detections[i][k]``.
        images: the original images (H x W x 3 uint8 RGB); may be empty after :meth:`load` when
            they were not saved (pass them to :meth:`load`).
        settings: how the maps were made (method, layers, targets, conf, classes, max_dets,
            device, dsxai version, ...).
        extras: per image, more per-map figures by name (one value per map, e.g.
            ``sanity_rank_correlation`` from :func:`dsxai.sanity.add_sanity`), merged into :meth:`figures`.
    """

    detections: list[Detections]
    maps: list[Tensor]
    images: list[np.ndarray] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    extras: list[dict[str, list[Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.detections) != len(self.maps):
            raise ValueError(f"got {len(self.maps)} map sets for {len(self.detections)} images")
        if self.images and len(self.images) != len(self.detections):
            raise ValueError(f"got {len(self.images)} images for {len(self.detections)} detection sets")
        for i, (dets, maps) in enumerate(zip(self.detections, self.maps)):
            if maps.ndim != 3 or len(maps) != len(dets) or tuple(maps.shape[-2:]) != tuple(dets.image_size):
                raise ValueError(
                    f"image {i}: maps must be [T, H, W] = [{len(dets)}, {dets.image_size[0]}, "
                    f"{dets.image_size[1]}]; got {tuple(maps.shape)}"
                )

    def __len__(self) -> int:
        return len(self.detections)

    def _image(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for an explanation of {len(self)} image(s)")
        if not self.images:
            raise ValueError("this explanation holds no images: load it with Explanation.load(dir, images=[...]) "
                             "or save it with images=True")
        return self.images[index]

    def render(self, index: int = 0, style: str = "fused", colormap: str = "jet", alpha: float = 0.5,
               per_box: bool = True, colorbar: bool = True) -> np.ndarray:
        """A picture (H x W x 3 uint8 RGB, plus the colour bar strip below) of image ``index``.

        Styles: ``"fused"`` all detections in one picture (each box shows its own map rescaled
        inside it when ``per_box``; boxes, names and scores on top); ``"grid"`` one panel per
        detection with its map over the whole image and its box (the evidence outside the box
        that the fused view hides); ``"masks"`` each mask shows its own map, outlined (segmenters
        and instance segmenters). ``colorbar``: a strip under the picture with the colormap from
        0 to 1, the method and layers, and how many labels found no room (:mod:`dsxai.colorbar`).
        No detections: the image with a "no detections" banner (no strip: there is no map).
        """
        if style not in _STYLES:
            raise ValueError(f"unknown style {style!r}; use one of {', '.join(_STYLES)}")
        image, dets, maps = self._image(index), self.detections[index], self.maps[index]
        if style == "fused":
            picture = render_detections(image, dets, maps, alpha, colormap, per_box)
        elif style == "grid":
            picture = render_grid(image, dets, maps, alpha, colormap)
        else:
            picture = render_masks(image, dets, maps, alpha, colormap)
        if not colorbar or len(dets) == 0:
            return picture
        detail = {"fused": "each box rescaled to its own range" if per_box else "max of all maps",
                  "masks": "each mask rescaled to its own range", "grid": _GRID_DETAIL}[style]
        hidden = hidden_labels(dets) if style != "grid" else 0
        if hidden:
            detail += f" | {hidden} label(s) hidden: no room (see the figures)"
        size = shrunk_size(image.shape[:2]) if style == "grid" else None  # the grid's text is sized for a panel
        return self._with_bar(picture, index, colormap, detail, size)

    def _with_bar(self, picture: np.ndarray, index: int, colormap: str, detail: str,
                  size: tuple[int, int] | None = None) -> np.ndarray:
        """``picture`` with the colour bar strip: the colormap, the method and layers, and ``detail``; its text
        sized for ``size`` (default: the image's)."""
        title = caption(self.settings.get("method"), self.settings.get("layers"), detail)
        return with_colorbar(picture, colormap, title, size or self._image(index).shape[:2])

    def panels(self, index: int = 0, colormap: str = "jet", alpha: float = 0.5,
               colorbar: bool = True) -> list[np.ndarray]:
        """One full-size picture per detection of image ``index`` (its map, its box and label; the colour bar)."""
        panels = render_panels(self._image(index), self.detections[index], self.maps[index], alpha, colormap)
        if not colorbar:
            return panels
        return [self._with_bar(p, index, colormap, f"detection {k}") for k, p in enumerate(panels)]

    def figures(self, index: int = 0) -> list[dict[str, Any]]:
        """Per-map figures of image ``index``: see :func:`map_figures`."""
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for an explanation of {len(self)} image(s)")
        figures = map_figures(self.detections[index], self.maps[index])
        for key, values in (self.extras[index] if index < len(self.extras) else {}).items():
            for figure, value in zip(figures, values):
                figure[key] = value
        return figures

    # --------------------------------------------------------------------------------- files
    def save(self, directory: str | Path, stems: Sequence[str] | None = None, *, images: bool = True,
             pictures: bool = True, colormap: str = "jet", alpha: float = 0.5, colorbar: bool = True,
             grid: bool = True) -> list[Path]:
        """Write each image's results into ``directory``; returns the paths written.

        Per image ``<stem>`` (default ``image0``, ``image1``, ...): ``<stem>.png`` (fused picture),
        ``<stem>_grid.png`` (each detection's whole-image map with its box, unless ``grid=False``),
        ``<stem>_det<k>.png`` (one per detection; pictures carry a colour bar unless ``colorbar=False``),
        ``<stem>.json`` (settings, detections and per-map figures) and ``<stem>_maps.npz`` (maps as
        float16, masks as packed bits and, with ``images=True``, the original image), plus
        ``explanation.json``: the folder's manifest, listing
        the stems, the settings and exactly the files of this run. Files an earlier save into the same
        folder listed and this one does not write are removed (one run per folder). Every file is written
        atomically (temporary file, fsync, rename). Stems must be plain names (no folder, ``..`` or NUL).
        :meth:`load` reads it back.
        """
        directory = Path(directory)
        stems = [f"image{i}" for i in range(len(self))] if stems is None else [str(s) for s in stems]
        if len(stems) != len(self) or len({s.lower() for s in stems}) != len(stems):
            raise ValueError(f"need {len(self)} distinct stems (case-insensitively), got {stems}")
        for stem in stems:
            check_stem(stem)
        if stems and derived_clash(stems, DERIVED_SUFFIXES) is not None:
            raise ValueError(f"stems {stems} clash: one is another's per-detection or maps file name "
                             "(e.g. 'a' and 'a_det0'); use dsxai.runs.unique_stems(paths, derived=DERIVED_SUFFIXES)")
        written = []
        for i, stem in enumerate(stems):
            written += self.save_image(directory, i, stem, images=images, pictures=pictures, colormap=colormap,
                                       alpha=alpha, colorbar=colorbar, grid=grid)
        written.append(write_index(directory, stems, self.settings, written))
        return written

    def save_image(self, directory: str | Path, index: int, stem: str, *, images: bool = True,
                   pictures: bool = True, colormap: str = "jet", alpha: float = 0.5, colorbar: bool = True,
                   grid: bool = True) -> list[Path]:
        """Write the files of one image (see :meth:`save`) without the ``explanation.json`` index.

        ``grid``: also ``<stem>_grid.png`` (every detection's whole-image map with its box) when there
        are detections; ``colorbar``: the pictures carry the colour bar strip.
        """
        directory = Path(directory)
        check_stem(stem)
        dets, maps = self.detections[index], self.maps[index]
        written = self._save_pictures(directory, index, stem, colormap, alpha, colorbar, grid) if pictures else []
        arrays: dict[str, np.ndarray] = {"maps": maps.detach().cpu().numpy().astype(np.float16)}
        if dets.masks is not None:
            arrays["masks"] = np.packbits(dets.masks.cpu().numpy(), axis=-1)
        if images and self.images:
            arrays["image"] = self.images[index]
        written.append(write_atomic(directory / f"{stem}_maps.npz", _npz_bytes(arrays)))
        shown = {"fused": f"{stem}.png", "detections": [f"{stem}_det{k}.png" for k in range(len(dets))]}
        if grid and len(dets):
            shown["grid"] = f"{stem}_grid.png"
        record = {
            "format": _FORMAT, "stem": stem, "maps_file": f"{stem}_maps.npz", "settings": jsonable(self.settings),
            "detections": dets.to_dict(), "has_masks": dets.masks is not None,
            "figures": self.figures(index),
            "extras": jsonable(self.extras[index] if index < len(self.extras) else {}),
            "pictures": shown if pictures else {},
        }
        written.append(write_atomic(directory / f"{stem}.json", json.dumps(record, indent=2).encode()))
        return written

    def _save_pictures(self, directory: Path, index: int, stem: str, colormap: str, alpha: float,
                       colorbar: bool, grid: bool) -> list[Path]:
        """The fused picture, the grid beside it (the evidence outside each box) and one per detection."""
        written = [write_png(directory / f"{stem}.png", self.render(index, "fused", colormap, alpha,
                                                                     colorbar=colorbar))]
        panels = self.panels(index, colormap, alpha, colorbar=False)
        if grid and panels:
            written.append(write_png(directory / f"{stem}_grid.png",
                                     self.render(index, "grid", colormap, alpha, colorbar=colorbar)))
        for k, panel in enumerate(panels):
            if colorbar:
                panel = self._with_bar(panel, index, colormap, f"detection {k}")
            written.append(write_png(directory / f"{stem}_det{k}.png", panel))
        return written

    @classmethod
    def load(cls, directory: str | Path, images: Sequence[ImageLike] | None = None) -> "Explanation":
        """Read what :meth:`save` (or ``dsxai explain --out``) wrote.

        Images come from the saved ``.npz`` files when they hold them, else from ``images``
        (else :attr:`images` stays empty: figures work, pictures need the images).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no saved explanation at {directory} (not a folder)")
        stems, files, settings = _read_index(directory)
        if not stems:
            raise FileNotFoundError(f"no saved explanation in {directory} (no explanation.json or <stem>.json)")
        detections, maps, originals, extras = [], [], [], []
        for stem in stems:
            record = _read_member(directory, f"{stem}.json", files)
            if not isinstance(record, dict) or record.get("format") != _FORMAT:
                raise ValueError(f"{directory / (stem + '.json')} is not a dsxai explanation record")
            if files is None:  # an older folder without a manifest: each record carries its settings
                settings = record.get("settings", settings)
            maps_file = _member_path(directory, str(record.get("maps_file")), files)
            with np.load(maps_file, allow_pickle=False) as data:
                size = tuple(record["detections"]["image_size"])
                masks = None
                if record.get("has_masks"):
                    masks = torch.from_numpy(np.unpackbits(data["masks"], axis=-1, count=size[1]).astype(bool))
                detections.append(Detections.from_dict(record["detections"], masks=masks))
                extras.append(record.get("extras") or {})
                maps.append(torch.from_numpy(data["maps"].astype(np.float32)))
                if "image" in data:
                    originals.append(data["image"])
        if images is not None:
            originals = load_images(list(images) if isinstance(images, (list, tuple)) else images)
        elif len(originals) != len(stems):
            originals = []
        return cls(detections=detections, maps=maps, images=originals, settings=settings or {}, extras=extras)


def check_stem(stem: str) -> str:
    """``stem`` when it is a plain file-name stem; ValueError for ``..``, absolute paths, folders or NUL.

    Why: a stem becomes file names in the output folder, and must never reach outside it.
    """
    safe_name(stem)
    if "/" in stem:
        raise ValueError(f"unsafe stem {stem!r}: give a plain name without folders")
    return stem


def write_index(directory: str | Path, stems: Sequence[str], settings: dict[str, Any],
                files: Sequence[str | Path], complete: bool = True) -> Path:
    """Write ``explanation.json`` (format, stems, settings, exactly the run's ``files``) into ``directory``
    and remove the files an earlier run's index listed that this run did not write (kept, when the run
    stopped early: ``complete=False``; see :func:`dsxai.runs.write_manifest`)."""
    directory = Path(directory)
    names = [Path(f).name for f in files]
    doc = {"format": _FORMAT, "stems": [check_stem(s) for s in stems], "settings": jsonable(settings)}
    return write_manifest(directory, INDEX, doc, names, complete=complete)


def _read_index(directory: Path) -> tuple[list[str], set[str] | None, dict[str, Any]]:
    """Stems, listed files (None for older folders without a file list) and settings of a saved folder."""
    index = directory / INDEX
    if not index.is_file():  # e.g. an older CLI output folder: every per-image record
        return sorted(p.stem for p in directory.glob("*.json") if _is_record(p)), None, {}
    doc = read_json(index)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("stems"), list):
        raise ValueError(f"{index} is not a dsxai explanation index (format {_FORMAT!r} with stems)")
    stems = [check_stem(str(s)) for s in doc["stems"]]
    files = doc.get("files")
    listed = {safe_name(str(f)) for f in files} if isinstance(files, list) else None
    return stems, listed, doc.get("settings") if isinstance(doc.get("settings"), dict) else {}


def _member_path(directory: Path, name: str, files: set[str] | None) -> Path:
    """``directory / name`` for a file of this run: a plain name, listed in the index, not leaving the folder."""
    safe_name(name)
    if "/" in name or (files is not None and name not in files):
        raise ValueError(f"{directory / name} is not a file of the run saved in {directory} (not in {INDEX})")
    path = directory / name
    if not inside(directory, path):
        raise ValueError(f"{path} leads out of {directory} (a symlink?); refusing to read it")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the saved explanation in {directory} is incomplete")
    return path


def _read_member(directory: Path, name: str, files: set[str] | None) -> Any:
    return read_json(_member_path(directory, name, files))


def _is_record(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == _FORMAT and "maps_file" in data


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: containers recursively, numpy and one-element tensor scalars as numbers, else str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def __getattr__(name: str) -> Any:
    if name in _FROM_PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
