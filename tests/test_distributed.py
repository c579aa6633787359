"""``dsxai bench --workers N``: the benchmark on Ray workers equals the 1-worker run, a killed worker loses only
its in-flight image, and ``--resume`` (with another worker count) finishes the run to the same results."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dsxai import bench
from dsxai.cli import main

SCENES = 4
METHODS = ["eigencam"]
#: float32 round-off of a metric: each is a ratio of sums over at most H*W = 256*256 pixels (pairwise summation
#: errs by <= log2(n) ulps per sum), a few sums chained; then averaged over pairs in any order
TOL = 8 * math.log2(256 * 256) * float(np.finfo(np.float32).eps)

needs_ray = pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None,
    reason="ray is not installed (pip install 'dsxai[scale]'); the Ray runs are not tested")


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return bench.write_synthetic_coco(tmp_path_factory.mktemp("shapes"), scenes=SCENES)


def _run(shapes_set, out, **options):
    return bench.run_benchmark("shapes-yolo", *shapes_set, out, methods=METHODS, faithfulness=False, gallery=0,
                               progress=False, **options)


@pytest.fixture(scope="module")
def one_worker(shapes_set, tmp_path_factory):
    """The uninterrupted 1-worker run, with the 1 torch thread each of two workers gets on two cores (so
    the maps themselves are computed alike and only the aggregation order may differ)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("one")
        _run(shapes_set, out)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / bench.RESULTS).read_text())


def _items(out):
    lines = [json.loads(line) for line in (out / bench.JOURNAL).read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("kind") == "item"]


def assert_same_results(a, b, where="results"):
    """Equal structure and strings; numbers equal within TOL (relative to the larger, at least 1)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            assert_same_results(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_results(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert abs(a - b) <= TOL * max(1.0, abs(a), abs(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@needs_ray
def test_two_workers_give_the_one_worker_results(shapes_set, one_worker, tmp_path):
    out = tmp_path / "two"
    _run(shapes_set, out, workers=2)
    items = _items(out)
    assert len(items) == SCENES and all(r["ok"] for r in items)
    assert len({r["worker"] for r in items}) == 2  # both workers did images
    assert one_worker["counts"]["matched"] > 0 and one_worker["methods"]["eigencam"]["energy_box"]["n"] > 0
    assert_same_results(one_worker, json.loads((out / bench.RESULTS).read_text()))
    # records aggregate in image-id order, whatever order they finished in: a reversed journal, resumed
    # (nothing left to run), gives the same results (its bootstrap CIs depend on the order of the values)
    lines = (out / bench.JOURNAL).read_text().splitlines()
    (out / bench.JOURNAL).write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert_same_results(one_worker, _run(shapes_set, out, resume=True))


def _kill_first_worker(journal, killed: dict) -> None:
    """Watch the journal; kill -9 the worker of its first record at once, while it holds its next image."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if journal.is_file():
            for line in journal.read_text().splitlines():
                if '"worker"' in line:
                    pid = int(json.loads(line)["worker"].rsplit(":", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
        time.sleep(0.01)


@needs_ray
def test_a_killed_worker_loses_one_image_and_resume_finishes_the_run(shapes_set, one_worker, tmp_path):
    out = tmp_path / "killed"
    killed: dict = {}
    watcher = threading.Thread(target=_kill_first_worker, args=(out / bench.JOURNAL, killed), daemon=True)
    watcher.start()
    first = _run(shapes_set, out, workers=2)
    watcher.join(5)
    assert "pid" in killed
    failed = [r for r in _items(out) if not r["ok"]]
    assert len(failed) == 1 and "Ray worker died" in failed[0]["error"], failed  # only its in-flight image
    assert first["counts"]["images_failed"] == 1 and first["counts"]["images_ok"] == SCENES - 1
    # resumed with another worker count: only the lost image runs again, and the results are the whole run's
    resumed = _run(shapes_set, out, resume=True)
    assert [r["image_id"] for r in _items(out) if "worker" not in r] == [failed[0]["image_id"]]
    assert_same_results(one_worker, resumed)


def test_without_ray_the_error_names_the_extra(shapes_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    with pytest.raises(bench.BenchError, match=r"pip install 'dsxai\[scale\]'"):
        _run(shapes_set, tmp_path / "py", workers=2)
    assert not (tmp_path / "py").exists()  # refused before any output
    assert main(["bench", "--synthetic", "--scenes", "1", "--workers", "2", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "--workers 2 needs Ray" in err and "dsxai[scale]" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


def test_workers_get_a_model_spec_not_a_live_model(shapes_set, tmp_path):
    pytest.importorskip("ray", reason="the model check follows the Ray check")
    adapter = bench.load_bench_adapter("shapes-yolo")
    with pytest.raises(bench.BenchError, match="registered name or a checkpoint path"):
        bench.run_benchmark(adapter, *shapes_set, tmp_path / "o", methods=METHODS, workers=2, progress=False)
    with pytest.raises(bench.BenchError, match="workers must be a whole number >= 1"):
        _run(shapes_set, tmp_path / "o", workers=0)


def test_workers_refuse_a_custom_model_in_flag_words(shapes_set, tmp_path, capsys):
    pytest.importorskip("ray", reason="the model check follows the Ray check")
    factory = tmp_path / "factory.py"
    factory.write_text("import dsxai.adapters\n\ndef zoo(model):\n    return dsxai.adapters.resolve(model)\n")
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"\x08\x01")
    for argv, words in ((["shapes-yolo", "--adapter", f"{factory}:zoo"], "--workers 2 cannot run --adapter"),
                        ([str(onnx), "--task", "segment"], f"--workers 2 cannot run the ONNX model {onnx}")):
        code = main(["bench", *argv, "--coco", str(shapes_set[0]), "--images", str(shapes_set[1]), "--workers", "2",
                     "--out", str(tmp_path / "cli")])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "--workers 1" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cli").exists()
