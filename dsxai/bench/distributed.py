"""The benchmark's images on Ray workers: one adapter per worker, results journalled by the driver.

Why Ray (an existing engine, not a home-made pool): the same code runs N workers on one machine
(``ray.init(num_cpus=N)``) and joins a cluster (``ray start --head`` on one machine, ``ray start --address``
on the others; ``ray_address=`` here). Ray is imported only on that path (the ``scale`` extra).

Contract:

* Each worker resolves the model itself from its spec (a registered name or a checkpoint path, with ``arch``,
  ``imgsz``, ``trust``), so no live model crosses processes; CPU workers get ``cores // N`` torch threads,
  CUDA workers one GPU each (``num_gpus=1``).
* Every worker holds at most one image at a time; each finished record goes back to the driver, which
  appends it to the run's :class:`dsxai.runs.Journal` at once. So ``resume`` works across worker counts
  and a killed worker loses only its in-flight image.
* A worker that dies (killed, out of memory, node lost) leaves its in-flight image **recorded as failed**
  (``status: error``, not retried: an image that kills its worker would kill the next one too); Ray restarts
  the worker and the run goes on; ``resume=True`` reruns the failed images. When every worker is dead for
  good the run stops with an error naming ``resume``; the journal keeps every finished image.
* Records are aggregated in image-id order whatever the order they finished in, so ``results.json`` equals
  a 1-worker run's up to floating-point summation order.
"""
from __future__ import annotations

import logging
import os
import socket
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..groundtruth import load_coco
from .config import BenchConfig, BenchError
from .per_image import BenchSetup, load_bench_adapter, process_image

__all__ = ["SCALE_EXTRA", "uses_ray", "require_ray", "image_record", "check_scale", "BenchWorker", "run_on_ray"]

log = logging.getLogger("dsxai")

#: how to install Ray, named by every error about it missing
SCALE_EXTRA = "pip install 'dsxai[scale]'"
#: restarts Ray gives a dead worker before it is dropped from the run
MAX_RESTARTS = 3

#: the driver's callback for one finished image: ``(image_id, record)``
Finish = Callable[[int, dict[str, Any]], None]


def uses_ray(workers: int, ray_address: str | None) -> bool:
    """Whether a run goes through Ray: more than one worker, or a cluster to join."""
    return workers > 1 or bool(ray_address)


def require_ray(why: str = "workers > 1 or ray_address") -> Any:
    """The ``ray`` module; ImportError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"{why} needs Ray, which is not installed: {SCALE_EXTRA}") from None
    return ray


def image_record(setup: BenchSetup, image_id: int) -> dict[str, Any]:
    """The journal record of one image; a failing image gives an error record (the run goes on)."""
    try:
        return process_image(setup, image_id)
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        rec = {"image_id": image_id, "file_name": setup.gt.coco.imgs[image_id].get("file_name"),
               "status": "error", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=4)}
        log.warning("image %s failed: %s", image_id, rec["error"])
        return rec


class BenchWorker:
    """One Ray worker: loads its own adapter and ground truth once, then explains the images it is sent.

    A plain class, made a Ray actor by :func:`run_on_ray`, so this module imports without Ray.
    """

    def __init__(self, cfg: BenchConfig, class_to_cat: dict[int, int], device: str | None, threads: int):
        torch.set_num_threads(max(1, int(threads)))
        torch.manual_seed(cfg.seed)
        adapter = load_bench_adapter(cfg.model, arch=cfg.arch, device=device, imgsz=cfg.imgsz, trust=cfg.trust)
        gt = load_coco(cfg.annotations, cfg.images)
        self.setup = BenchSetup(cfg, adapter, gt, class_to_cat)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def whoami(self) -> str:
        """``host:pid`` of this worker's process (logged, and stored in each record it makes)."""
        return self.name

    def process(self, image_id: int) -> dict[str, Any]:
        """The journal record of ``image_id`` (see :func:`image_record`), tagged with this worker."""
        return {**image_record(self.setup, image_id), "worker": self.name}


@dataclass(frozen=True)
class Placement:
    """Where the workers run: how many, their torch threads, their device, and Ray's resources for each."""

    workers: int
    threads: int
    device: str | None
    gpus: int  # per worker: 0 or 1

    def options(self) -> dict[str, Any]:
        """Ray actor options of one worker."""
        return {"num_cpus": 1, "num_gpus": self.gpus, "max_restarts": MAX_RESTARTS, "max_task_retries": 0}


def _cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _wants_cuda(device: str | None) -> bool:
    return str(device).startswith("cuda") if device else torch.cuda.is_available()


def connect(ray: Any, cfg: BenchConfig) -> tuple[Placement, bool]:
    """Start (or join) Ray and place the workers; returns the placement and whether we started Ray here.

    Local: ``ray.init(num_cpus=N)`` (and the GPUs on CUDA, one worker each). Cluster (``ray_address``):
    ``workers`` workers, or by default one per GPU (CUDA) or per CPU of the cluster.
    """
    cuda = _wants_cuda(cfg.device)
    started = False
    if cfg.ray_address:
        if not ray.is_initialized():
            try:
                ray.init(address=cfg.ray_address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as exc:  # noqa: BLE001 - Ray raises several kinds, all with long texts
                raise BenchError(f"cannot join the Ray cluster at {cfg.ray_address} ({_cause(exc)}); start it "
                                 "with `ray start --head` and pass the address it prints") from None
            started = True
        total = ray.cluster_resources()
        n = cfg.workers if cfg.workers > 1 else int(total.get("GPU" if cuda else "CPU", 1))
        threads = max(1, int(total.get("CPU", 1)) // max(n, 1))
    else:
        n = cfg.workers
        gpus = torch.cuda.device_count() if cuda else 0
        if cuda and n > gpus:
            raise BenchError(f"workers={n} on CUDA needs one GPU per worker but {gpus} are visible; "
                             f"pass workers={max(gpus, 1)} or fewer (or device='cpu')")
        if not ray.is_initialized():
            ray.init(num_cpus=n, num_gpus=gpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
            started = True
        threads = max(1, _cores() // n)
    if n < 1:
        raise BenchError(f"the Ray cluster at {cfg.ray_address} offers no {'GPU' if cuda else 'CPU'}; "
                         "pass workers=N or start its nodes with resources")
    return Placement(n, threads, "cuda" if cuda else cfg.device, 1 if cuda else 0), started


def check_scale(cfg: BenchConfig) -> None:
    """Before any work, when the run goes through Ray: BenchError unless Ray is installed and every worker
    can load the model itself (a name or a path, no live module)."""
    if not uses_ray(cfg.workers, cfg.ray_address):
        return
    try:
        require_ray()
    except ImportError as exc:
        raise BenchError(str(exc)) from None
    if not isinstance(cfg.model, (str, Path)):
        raise BenchError(f"workers > 1 and ray_address need the model as a registered name or a checkpoint path "
                         f"(each worker loads its own copy), not a {type(cfg.model).__name__} object")
    if cfg.explain_model is not None:
        raise BenchError("explain_model (a live module) cannot be sent to Ray workers; run it with workers=1")


def run_on_ray(setup: BenchSetup, image_ids: Sequence[int], finish: Finish) -> None:
    """Process ``image_ids`` on Ray workers, calling ``finish(image_id, record)`` in the driver as each
    image finishes (in completion order). BenchError when Ray is missing, the model cannot be sent, a worker
    cannot start, or every worker died before the images were done."""
    cfg = setup.cfg
    check_scale(cfg)
    ray = require_ray()
    placement, started = connect(ray, cfg)
    try:
        actors = start_workers(ray, setup, placement)
        names = {i: setup.gt.coco.imgs[i].get("file_name") for i in image_ids}

        def journal(image_id: int, record: dict[str, Any]) -> None:
            if record.get("status") != "ok":  # the worker's own log does not reach the driver
                log.warning("image %s failed: %s", image_id, record.get("error"))
            finish(image_id, {**record, "file_name": names[image_id]})

        dispatch(ray, actors, list(image_ids), journal)
    finally:
        if started:
            ray.shutdown()


def start_workers(ray: Any, setup: BenchSetup, placement: Placement) -> list[Any]:
    """The placed workers, each with its model loaded (BenchError with the first worker's failure)."""
    remote = ray.remote(BenchWorker).options(**placement.options())
    actors = [remote.remote(setup.cfg, setup.class_to_cat, placement.device, placement.threads)
              for _ in range(placement.workers)]
    try:
        names = ray.get([a.whoami.remote() for a in actors])
    except ray.exceptions.RayError as exc:
        raise BenchError(f"a Ray worker could not load {setup.cfg.model}: {_cause(exc)}") from None
    log.info("benchmark on %d Ray workers (%d torch threads each, device %s): %s", len(actors),
             placement.threads, placement.device or "default", ", ".join(names))
    return actors


def dispatch(ray: Any, actors: list[Any], image_ids: list[int], finish: Finish) -> None:
    """Keep one image in flight on each live worker until every image has a record.

    A worker's death records its in-flight image as failed; after ``MAX_RESTARTS`` restarts it is dropped.
    """
    queue, running = deque(image_ids), {}
    deaths = [0] * len(actors)

    def submit(i: int) -> None:
        if queue and deaths[i] <= MAX_RESTARTS:
            image_id = queue.popleft()
            running[actors[i].process.remote(image_id)] = (i, image_id)

    for i in range(len(actors)):
        submit(i)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        i, image_id = running.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            died = isinstance(exc, ray.exceptions.RayActorError)
            deaths[i] += died
            record = _lost(image_id, exc, died)
        finish(image_id, record)
        submit(i)
    if queue:
        raise BenchError(f"every Ray worker died; {len(queue)} images were not processed (the journal keeps the "
                         "finished ones): rerun with resume=True")


def _lost(image_id: int, exc: BaseException, died: bool) -> dict[str, Any]:
    """The failed record of an image whose worker died (or whose call failed inside Ray)."""
    what = "Ray worker died while processing this image" if died else "Ray call failed"
    return {"image_id": image_id, "file_name": None, "status": "error",
            "error": f"{what} ({_cause(exc)}); resume reruns it"}


def _cause(exc: BaseException) -> str:
    """The first line of a Ray error, which otherwise carries a whole remote traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()
