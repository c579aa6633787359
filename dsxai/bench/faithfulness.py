"""Deletion / insertion of one benchmark image in a few batched forwards, and a run's forward plan.

Why apart from ``per_image``: faithfulness is nearly all of a run's cost (``2 + 2 M T (K - 1)`` forwards per
image), so its count, its estimate, its progress and its batching live in one place.

Per image with ``T >= 1`` matched pairs, ``M`` map kinds (the methods, then :data:`dsxai.metrics.BASELINES`)
and ``K`` steps, the protocol runs :func:`dsxai.metrics.faithfulness_forwards` ``= 2 + 2 M T (K - 1)``
perturbed images: the original and the fully-deleted image once, shared by every curve, then the ``K - 1``
inner deletion and insertion steps of each of the ``M T`` curves. Images without pairs run none.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..detections import Detections
from ..metrics import BASELINES, Faithfulness, baseline_maps, deletion_insertion_batch, faithfulness_forwards
from ..runs import Progress
from .score import match_detections

if TYPE_CHECKING:
    from .per_image import BenchSetup

log = logging.getLogger("dsxai")

__all__ = ["BATCH_CANDIDATES", "FAITHFULNESS_CONF", "ForwardCounter", "ForwardPlan", "map_kinds",
           "plan_forwards", "measure_batch_size", "image_faithfulness", "add_faithfulness"]

#: batch sizes tried when a run is given none: the one with the least time per image on the run's first
#: faithfulness image wins. Measured on 2 CPU cores: batch 8 is faster per image than batch 1 at 256 px and
#: slower at 640 px, so no fixed default suits both; a GPU gains most from the largest batch that fits.
BATCH_CANDIDATES: dict[str, tuple[int, ...]] = {"cpu": (1, 8), "cuda": (1, 8, 32)}
#: detection threshold of the perturbed forwards, low so that weakened detections are still seen (D-RISE)
FAITHFULNESS_CONF = 0.01


def map_kinds(methods: Sequence[str]) -> list[str]:
    """The map kinds a run tests, in curve order: its methods, then the baselines."""
    return [*methods, *BASELINES]


@dataclass
class ForwardCounter:
    """The faithfulness forwards (images through the model) a run has done, and the time spent in them.

    Why: the proof that the run does no forward beyond its plan; ``bar`` advances with every chunk."""

    planned: int = 0
    run: int = 0
    seconds: float = 0.0
    bar: Progress | None = field(default=None, repr=False)
    #: images run to choose the batch size (not protocol forwards: counted apart, 0 when it was given)
    tuning: int = 0
    #: the batch size the perturbed images ran at, given or measured (None: no image needed faithfulness)
    batch_size: int | None = None

    def __call__(self, n: int) -> None:
        self.run += n
        if self.bar is not None:
            self.bar.update(n)

    def summary(self) -> dict[str, Any]:
        """What results.json records of the run's faithfulness cost."""
        return {"planned_forwards": self.planned, "forwards_run": self.run, "seconds": round(self.seconds, 3),
                "batch_size": self.batch_size, "batch_size_tuning_forwards": self.tuning}


@dataclass
class ForwardPlan:
    """The faithfulness forwards each image will need, and one forward's time measured on the way."""

    per_image: dict[int, int]
    pairs: dict[int, int]
    seconds_per_forward: float
    kinds: int
    steps: int

    @property
    def total(self) -> int:
        return sum(self.per_image.values())

    def describe(self) -> str:
        """The line a run prints before it starts: count, formula and estimate."""
        seconds = self.total * self.seconds_per_forward
        return (f"faithfulness: {self.total:,} forwards for {len(self.per_image)} images with "
                f"{sum(self.pairs.values())} matched pairs (2 + 2 x M x T x (K - 1) per image with T >= 1 pairs, "
                f"M = {self.kinds} map kinds, K = {self.steps}); one forward {1000 * self.seconds_per_forward:.1f} ms"
                f" -> about {_duration(seconds)}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def plan_forwards(setup: BenchSetup, image_ids: Sequence[int]) -> ForwardPlan:
    """The forwards the protocol needs for ``image_ids``: one detection forward per image finds its matched
    pairs ``T`` (as :func:`dsxai.bench.per_image.process_image` will), timed; an image that fails here
    counts 0 (its own processing records the error)."""
    cfg = setup.cfg
    kinds = len(map_kinds(cfg.methods))
    per_image: dict[int, int] = {}
    pairs: dict[int, int] = {}
    times: list[float] = []
    for image_id in image_ids:
        try:
            image = setup.load(image_id)
            t0 = time.perf_counter()
            dets = setup.adapter.predict(image, conf=cfg.conf, classes=sorted(setup.class_to_cat))[0]
            times.append(time.perf_counter() - t0)
            objs = setup.gt.objects(image_id, setup.category_ids)
        except Exception:  # noqa: BLE001 - process_image records this image's error
            per_image[image_id] = pairs[image_id] = 0
            continue
        cats = [setup.class_to_cat.get(int(c), -1) for c in dets.labels]
        matched = match_detections(dets.boxes, dets.scores, cats, torch.from_numpy(objs["boxes"]),
                                   objs["categories"], cfg.match_iou)
        pairs[image_id] = len(matched)
        per_image[image_id] = faithfulness_forwards(len(matched), kinds, cfg.steps, cfg.span)
    one = statistics.median(times[1:] or times) if times else 0.0  # the first forward warms up
    return ForwardPlan(per_image, pairs, one, kinds, int(cfg.steps))


def measure_batch_size(predict: Callable[[list[np.ndarray]], Any], image: np.ndarray, device: torch.device,
                       repeats: int = 2, clock: Callable[[], float] = time.perf_counter,
                       ) -> tuple[int, dict[int, float], int]:
    """The candidate of :data:`BATCH_CANDIDATES` with the least time per image on copies of ``image``.

    Each candidate runs once to warm up, then ``repeats`` times (the fastest counts). A candidate that runs
    out of GPU memory ends the search. Returns the choice, the seconds per image of each candidate tried and
    the images run to measure.
    """
    per_image: dict[int, float] = {}
    images_run = 0
    for size in BATCH_CANDIDATES.get(device.type, BATCH_CANDIDATES["cpu"]):
        copies = [image] * size
        try:
            times = []
            for _ in range(1 + repeats):
                _sync(device)
                t0 = clock()
                predict(copies)
                _sync(device)
                times.append(clock() - t0)
                images_run += size
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        per_image[size] = min(times[1:]) / size
    return min(per_image, key=per_image.get), per_image, images_run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(setup: BenchSetup, image: np.ndarray, predict: Callable, counter: ForwardCounter | None) -> int:
    """The run's batch size: the one given, else measured once per process on its first faithfulness image
    (each Ray worker measures on its own device) and announced."""
    if setup.cfg.batch_size is not None:
        if counter is not None:
            counter.batch_size = int(setup.cfg.batch_size)
        return int(setup.cfg.batch_size)
    if setup.batch_size is None:
        chosen, per_image, images_run = measure_batch_size(predict, image, setup.adapter.device)
        setup.batch_size = chosen
        times = ", ".join(f"{1000 * t:.1f} ms at {b}" for b, t in per_image.items())
        line = f"faithfulness batch size {chosen} (per image: {times}; give --batch-size to skip this)"
        log.info(line)
        if counter is not None:
            counter.tuning += images_run
            counter.batch_size = chosen
            if counter.bar is not None:
                counter.bar.say(line)
    return setup.batch_size


def image_faithfulness(setup: BenchSetup, image: np.ndarray, matched: Detections, maps: dict[str, Tensor],
                       counter: ForwardCounter | None = None) -> dict[str, Faithfulness]:
    """Deletion / insertion of every map kind of one image's matched detections in one batched run.

    ``maps``: each method's maps ``[T, H, W]`` of ``matched``; the baselines' maps are built here from the
    matched boxes, as the scores of :func:`dsxai.bench.score.score_baselines` are."""
    cfg = setup.cfg
    size = image.shape[:2]
    boxes = matched.boxes.to(setup.adapter.device)
    kinds = map_kinds(cfg.methods)
    stack = [maps[m] if m in maps else baseline_maps(m, boxes, size) for m in kinds]
    predict = partial(setup.adapter.predict, conf=FAITHFULNESS_CONF)
    batch_size = _batch_size(setup, image, predict, counter)
    t0 = time.perf_counter()
    results = deletion_insertion_batch(predict, image, matched, stack, cfg.steps, batch_size=batch_size,
                                       on_forward=counter, span=cfg.span)
    if counter is not None:
        counter.seconds += time.perf_counter() - t0
    return dict(zip(kinds, results))


def add_faithfulness(records: dict[str, list[dict[str, Any]]], faith: dict[str, Faithfulness]) -> None:
    """Write each kind's deletion / insertion AUCs into its per-pair score dicts (in place)."""
    for kind, rows in records.items():
        result = faith[kind]
        for row, deletion, insertion in zip(rows, result.deletion_auc.tolist(), result.insertion_auc.tolist()):
            row["deletion_auc"], row["insertion_auc"] = deletion, insertion
