"""COCO ground truth, read once for the audit and the benchmark: checked, indexed, matched to a model.

One reader so that both front ends refuse the same bad files with the same words: a file without
``categories`` (every mask would "disagree with ground truth"), annotations without ``id`` (given one),
a polygon pycocotools cannot rasterise (a ``ValueError`` for that image, not a crash of the run), and
categories that match no class of the model by name (an error unless a class map says how).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_coco", "coco_index", "annotation_mask", "map_classes", "ignored_categories", "norm_name"]


def read_coco(source: str | Path | dict, what: str | None = None) -> tuple[dict[str, Any], str]:
    """A COCO instances file (path or dict) as a checked dict, and the name to use for it in messages.

    Raises FileNotFoundError (no file) or ValueError naming the file and the problem: not JSON, no
    ``images`` / ``annotations`` / ``categories`` lists, an annotation without ``image_id`` or
    ``category_id``. Annotations without ``id`` get one (after the largest given), as pycocotools needs.
    """
    if isinstance(source, dict):
        data, what = source, what or "the COCO annotations"
    else:
        path = Path(source)
        what = what or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotations {path} not found; pass the path of an instances .json")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); pass a COCO instances file "
                             "(e.g. instances_val2017.json)") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        have = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{what} is not a COCO instances file: it needs 'images', 'annotations' and "
                         f"'categories' lists (found {have}); without categories no object can be matched "
                         "to a class of the model")
    return _check_entries(data, what), what


def _check_entries(data: dict[str, Any], what: str) -> dict[str, Any]:
    """Every image and category has an id, every annotation an image and a category; missing annotation ids
    filled in a copy (the caller's dict is left as it was)."""
    for kind, keys in (("images", ("id",)), ("categories", ("id", "name")),
                       ("annotations", ("image_id", "category_id"))):
        for k, entry in enumerate(data[kind]):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise ValueError(f"{what}: {kind}[{k}] lacks {', '.join(repr(m) for m in missing)}; every COCO "
                                 f"{kind[:-1]} needs {', '.join(keys)}")
    given = [a["id"] for a in data["annotations"] if isinstance(a.get("id"), int)]
    if len(given) == len(data["annotations"]):
        return data
    next_id = max(given, default=0) + 1
    annotations = []
    for ann in data["annotations"]:
        if not isinstance(ann.get("id"), int):
            ann = dict(ann, id=next_id)
            next_id += 1
        annotations.append(ann)
    return dict(data, annotations=annotations)


def coco_index(data: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` over ``data`` (already checked by :func:`read_coco`), built quietly."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # pragma: no cover - pycocotools is an optional dependency
        raise ImportError("COCO ground truth needs pycocotools: pip install 'dsxai[coco]'") from exc
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_mask(coco: Any, ann: dict[str, Any]) -> np.ndarray:
    """The bool mask of one annotation; ValueError naming it when its segmentation cannot be drawn.

    pycocotools raises a bare ``Exception`` (or TypeError / IndexError) on a malformed polygon; turned
    into a ValueError, the caller records the image's error and goes on with the next image.
    """
    try:
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            return coco.annToMask(ann).astype(bool)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises plain Exception
        raise ValueError(f"annotation {ann.get('id')} of image {ann.get('image_id')} has a segmentation that "
                         f"cannot be drawn ({type(exc).__name__}: {exc}); fix or drop it") from None


def norm_name(name: str) -> str:
    """Class / category names compared case-, space-, ``_``- and ``-``-insensitively."""
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _preview(d: dict[int, str], n: int = 8) -> str:
    items = [f"{k}: {v}" for k, v in list(d.items())[:n]]
    return "{" + ", ".join(items) + (", ..." if len(d) > n else "") + "}"


def map_classes(class_names: dict[int, str], categories: dict[int, str],
                mapping: dict[str, str] | None = None) -> dict[int, int]:
    """Model class id -> COCO category id.

    ``mapping`` (``{model_class_name_or_id: coco_category_name}``) when given, else by name, else (no name
    matches) by equal ids only when the model's class names are bare ids (torchvision-style): ids of
    differently named classes are no evidence. Raises ValueError naming both sides when nothing maps.
    """
    by_name = {norm_name(n): cid for cid, n in categories.items()}
    out: dict[int, int] = {}
    if mapping:
        names_to_id = {norm_name(n): i for i, n in class_names.items()}
        for key, target in mapping.items():
            key_s = str(key)
            if key_s.lstrip("-").isdigit() and int(key_s) in class_names:
                model_id = int(key_s)
            elif norm_name(key_s) in names_to_id:
                model_id = names_to_id[norm_name(key_s)]
            else:
                raise ValueError(f"class map key {key_s!r} is neither a class id nor a class name of the model "
                                 f"(classes: {_preview(class_names)})")
            if norm_name(target) not in by_name:
                raise ValueError(f"class map value {target!r} is not a category of the annotations "
                                 f"(categories: {_preview(categories)})")
            out[model_id] = by_name[norm_name(target)]
    else:
        out = {i: by_name[norm_name(n)] for i, n in class_names.items() if norm_name(n) in by_name}
        if not out:
            out = {i: i for i in class_names if i in categories and not norm_name(class_names[i]).startswith("n/a")}
            if out and any(not str(class_names[i]).isdigit() for i in out):
                out = {}  # names exist and differ: ids are no evidence
    if not out:
        raise ValueError(f"no model class maps to a category of the annotations: model classes "
                         f"{_preview(class_names)}, COCO categories {_preview(categories)}; pass a class map "
                         "{\"model_class_name_or_id\": \"coco_category_name\"} (class_map=, --class-map FILE)")
    return out


def ignored_categories(data: dict[str, Any], mapped: set[int]) -> list[str]:
    """Names of every category some annotation uses that no model class maps to (all of them, sorted)."""
    used = {int(a["category_id"]) for a in data["annotations"]}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    return sorted(names.get(c, str(c)) for c in used - set(mapped))
