"""Ground truth, read once for the audit and the benchmark: COCO files (checked, indexed, matched to a model)
and label PNGs.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_coco", "coco_index", "annotation_mask", "CocoGroundTruth", "load_coco", "map_classes",
           "keep_categories", "ignored_categories", "norm_name", "Truth", "read_label_png", "truth_from_labels",
           "CocoTruth"]


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


@dataclass
class CocoGroundTruth:
    """A checked, indexed COCO instances file and the image folder its ``file_name`` entries live in."""

    coco: Any  # pycocotools.coco.COCO
    images_dir: Path
    path: Path

    @property
    def categories(self) -> dict[int, str]:
        """Category id -> name."""
        return {int(c["id"]): str(c["name"]) for c in self.coco.dataset.get("categories", [])}

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def image_ids(self, category_ids: Iterable[int], limit: int | None = None) -> list[int]:
        """Ids (ascending) of the images holding a non-crowd object of ``category_ids``; the first ``limit``."""
        wanted = set(int(c) for c in category_ids)
        ids = [i for i in sorted(self.coco.imgs)
               if any(int(a["category_id"]) in wanted and not a.get("iscrowd", 0)
                      for a in self.coco.imgToAnns.get(i, []))]
        return ids[:limit] if limit is not None else ids

    def objects(self, image_id: int, category_ids: Iterable[int]) -> dict[str, Any]:
        """Non-crowd objects of ``category_ids`` in an image: ``ann_ids``, ``boxes`` xyxy, ``categories``,
        ``masks`` (bool ``[N, H, W]`` or None when an annotation has no segmentation) and ``size``."""
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        cats = set(int(c) for c in category_ids)
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if int(a["category_id"]) in cats and not a.get("iscrowd", 0)]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)
        masks = None
        if anns and all(a.get("segmentation") for a in anns):
            masks = np.stack([annotation_mask(self.coco, a) for a in anns])
            if masks.shape[1:] != (h, w):
                raise ValueError(f"annotation masks of image {image_id} are {masks.shape[1:]} but the image "
                                 f"entry says {(h, w)}; fix height/width in the json")
        return {"ann_ids": [int(a["id"]) for a in anns], "boxes": boxes,
                "categories": [int(a["category_id"]) for a in anns], "masks": masks, "size": (h, w)}


def load_coco(annotations: str | Path, images_dir: str | Path) -> CocoGroundTruth:
    """A COCO instances json (checked by :func:`read_coco`) with its image folder.

    Raises FileNotFoundError (no json, no folder) or ValueError (a corrupt or non-COCO json).
    """
    data, _ = read_coco(annotations)
    images = Path(images_dir)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} not found; pass the folder the json's file_name "
                                "entries are relative to")
    return CocoGroundTruth(coco_index(data), images, Path(annotations))


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
                         "{\"model_class_name_or_id\": \"coco_category_name\"} (class_map=)")
    return out


def keep_categories(class_to_cat: dict[int, int], categories: dict[int, str],
                    names: Iterable[str]) -> dict[int, int]:
    """``class_to_cat`` restricted to the categories called ``names``; ValueError naming unknown names."""
    wanted = {norm_name(c) for c in names}
    unknown = wanted - {norm_name(n) for n in categories.values()}
    if unknown:
        raise ValueError(f"categories {sorted(unknown)} are not in the annotations "
                         f"(categories: {_preview(categories)})")
    return {k: v for k, v in class_to_cat.items() if norm_name(categories[v]) in wanted}


def ignored_categories(data: dict[str, Any], mapped: set[int]) -> list[str]:
    """Names of every category some annotation uses that no model class maps to (all of them, sorted)."""
    used = {int(a["category_id"]) for a in data["annotations"]}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    return sorted(names.get(c, str(c)) for c in used - set(mapped))


# ----------------------------------------------------------------------------------------------- per-image truth
# The audit's ground truth of one image: label PNGs (pixel value = class id) or COCO annotations, both as
# instance masks with the model's class ids.


@dataclass
class Truth:
    """Ground truth of one image, in the model's class ids.

    Attributes:
        instances: ``[G, H, W]`` bool, one mask per ground-truth object.
        classes: ``[G]`` long, the class id of each object.
        labels: ``[H, W]`` long class ids, -1 where no object.
    """

    instances: Tensor
    classes: Tensor
    labels: Tensor


def _stack_instances(found: list[np.ndarray], size: tuple[int, int]) -> Tensor:
    """``[G, H, W]`` bool from a list of masks (``[0, H, W]`` when empty)."""
    return torch.from_numpy(np.stack(found)) if found else torch.zeros((0, *size), dtype=torch.bool)


def truth_from_labels(label_map: np.ndarray, background: int | None) -> Truth:
    """A label map (pixel value = class id) as a :class:`Truth`: one object per class and 8-connected
    component, ``background`` pixels belonging to none. Why components: two objects of a class apart are two."""
    import cv2

    found, classes = [], []
    for c in np.unique(label_map).tolist():
        if background is not None and c == background:
            continue
        count, comp = cv2.connectedComponents((label_map == c).astype(np.uint8), connectivity=8)
        for k in range(1, count):
            found.append(comp == k)
            classes.append(int(c))
    labels = label_map.astype(np.int64)
    if background is not None:
        labels[labels == background] = -1
    return Truth(_stack_instances(found, label_map.shape[:2]), torch.tensor(classes, dtype=torch.long),
                 torch.from_numpy(labels))


def read_label_png(path: str | Path) -> np.ndarray:
    """The ``[H, W]`` class ids of a label PNG; ValueError for an unreadable file or a colour image (a grey
    image saved as RGB is accepted). Why refuse colour: its pixel values are no class ids."""
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError(f"cannot read the ground-truth mask {path} (unsupported or corrupt file)")
    if data.ndim == 3:
        if data.shape[2] == 4:
            data = data[..., :3]
        if not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
            raise ValueError(f"ground-truth mask {path} is a colour image; give a single-channel PNG whose pixel "
                             "values are class ids")
        data = data[..., 0]
    return np.asarray(data)


class CocoTruth:
    """COCO annotations as per-image :class:`Truth` in the model's class ids, images found by file name.

    Categories map to ``class_names`` as :func:`map_classes` says (``class_map`` when given); the categories
    no class maps to are named in one warning and their annotations ignored.
    """

    def __init__(self, source: Any, class_names: dict[int, str], class_map: dict[str, str] | None = None):
        data, what = read_coco(source)
        self.coco = coco_index(data)
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        try:
            to_category = map_classes(class_names, categories, class_map)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        self.category_map = {cat: model_id for model_id, cat in to_category.items()}
        ignored = ignored_categories(data, set(self.category_map))
        if ignored:
            warnings.warn(f"COCO categories {', '.join(ignored)} are not classes of the model "
                          f"({', '.join(class_names.values())}); their annotations are ignored", stacklevel=3)
        self.by_file: dict[str, dict] = {}
        for entry in data["images"]:
            name = str(entry.get("file_name", ""))
            for key in (name, Path(name).name, Path(name).stem):
                self.by_file.setdefault(key, entry)

    def find(self, name: str, path: str | None) -> dict | None:
        """The image entry of a file: by its path, its file name, then ``name`` (a stem); None when absent."""
        for key in ([path, Path(path).name] if path else []) + [name]:
            if key and key in self.by_file:
                return self.by_file[key]
        return None

    def truth(self, entry: dict, size: tuple[int, int]) -> Truth:
        """The ground truth of image ``entry``, whose picture is ``size`` (h, w); ValueError when the entry
        gives another size (the annotations belong to another version of the image)."""
        h, w = size
        eh, ew = int(entry.get("height", h)), int(entry.get("width", w))
        if (eh, ew) != (h, w):
            raise ValueError(f"COCO image entry {entry.get('file_name')!r} is {ew}x{eh} but the image is {w}x{h}; "
                             "the annotations belong to another version of the image")
        found, classes = [], []
        labels = np.full((h, w), -1, np.int64)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[entry["id"]], iscrowd=None)):
            cid = self.category_map.get(int(ann["category_id"]))
            if cid is None or not ann.get("segmentation"):
                continue
            m = annotation_mask(self.coco, ann)
            found.append(m)
            classes.append(cid)
            labels[m] = cid
        return Truth(_stack_instances(found, (h, w)), torch.tensor(classes, dtype=torch.long),
                     torch.from_numpy(labels))
