"""The cached inference graph (worker.graph): it gives the same detections as building the Keras model, a
task uses it when it fits and falls back to the Keras model when the entry is missing, stale or broken.
TensorFlow runs only in subprocesses (the keras aliasing is process-wide)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from tests.fixtures_worker import REPO, iexec_env
from worker import graph

_SAME_SCRIPT = r"""
import json, sys, tempfile
import numpy as np, skimage.data
from worker import graph
from worker.model import SegmentationModel
from worker.molding import mold
net = SegmentationModel("resnet50", 256, 0.5)
net.load_weights(sys.argv[1])
out = {"photos": {}}
img = skimage.data.astronaut()
images, metas, windows = net.mrcnn.mold_inputs([img])
ours = mold(img, 256)
out["meta_equal"] = bool(np.array_equal(metas, ours.metas) and np.array_equal(windows[0], ours.window))
out["pixel_diff"] = float(np.abs(images - ours.images).mean())
key = graph.graph_key("00" * 32, "resnet50", 256, 0.5)
folder = graph.export(net, sys.argv[2], key)
out["lookup"] = graph.lookup(sys.argv[2], key)[1]
cached = graph.GraphModel(folder, 256)
for name in ("astronaut", "coffee", "chelsea"):
    photo = getattr(skimage.data, name)()
    a, b = net.detect(photo), cached.detect(photo)
    out["photos"][name] = {
        "count": [len(a), len(b)], "boxes": [d.box for d in a] == [d.box for d in b],
        "classes": [d.class_id for d in a] == [d.class_id for d in b],
        "score_diff": max((abs(x.score - y.score) for x, y in zip(a, b)), default=0.0),
        "masks": all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))}
print(json.dumps(out))
"""


def test_cached_graph_gives_the_same_detections_as_keras(tmp_path: Path, worker_weights_r50: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _SAME_SCRIPT, str(worker_weights_r50), str(tmp_path / "graphs")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["meta_equal"]  # same scale, window and image meta as mrcnn's mold_inputs
    assert report["pixel_diff"] < 3.0  # only the interpolation differs (Pillow vs scikit-image)
    assert report["lookup"] == "hit"
    for name, photo in report["photos"].items():
        assert photo["count"][0] == photo["count"][1] > 0, name
        assert photo["boxes"] and photo["classes"] and photo["masks"], name
        assert photo["score_diff"] < 1e-4, name


def test_lookup_misses_and_flags_stale_entries(tmp_path: Path) -> None:
    key = graph.graph_key("11" * 32, "resnet101", 1024, 0.7)
    assert graph.lookup(str(tmp_path), key) == (None, "miss")
    folder = Path(graph.entry_dir(str(tmp_path), key))
    folder.mkdir(parents=True)
    (folder / graph.KEY_FILE).write_text(json.dumps(dict(key, tensorflow="0.0.1")))
    assert graph.lookup(str(tmp_path), key) == (None, "stale")  # same folder name, another key inside
    (folder / graph.KEY_FILE).write_text("{not json")
    assert graph.lookup(str(tmp_path), key) == (None, "stale")
    (folder / graph.KEY_FILE).write_text(json.dumps(key))
    assert graph.lookup(str(tmp_path), key) == (str(folder), "hit")
    # other weights, size or confidence: another entry
    for other in (graph.graph_key("22" * 32, "resnet101", 1024, 0.7), graph.graph_key("11" * 32, "resnet101", 512, 0.7),
                  graph.graph_key("11" * 32, "resnet101", 1024, 0.5)):
        assert graph.entry_dir(str(tmp_path), other) != str(folder)
        assert graph.lookup(str(tmp_path), other) == (None, "miss")


def test_cache_dir_from_environment() -> None:
    assert graph.cache_root({"SEGBOT_GRAPH_CACHE": "/g"}) == "/g"
    assert graph.cache_root({"SEGBOT_CACHE": "/c"}) == "/c/graphs"


@pytest.fixture
def task(tmp_path: Path, run_worker, worker_weights_r50: Path):
    name = "5" * 64
    cache = tmp_path / "graphs"

    def run(tag: str, *args: str, **env: str) -> tuple[dict, bytes]:
        base = tmp_path / tag
        base.mkdir()
        environment = iexec_env(base, name, MRCNN_WEIGHTS=str(worker_weights_r50), SEGBOT_GRAPH_CACHE=str(cache),
                                **env)
        Image.fromarray(skimage.data.chelsea()).save(base / "iexec_in" / name, "PNG")
        result = run_worker(["--max-dim", "256", *args], environment)
        assert result.code == 0, result.stderr[-2000:]
        assert result.files == {"computed.json", "detections.json", "result.png"}
        assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr
        doc = json.loads((result.out / "detections.json").read_text())
        return doc, (result.out / "result.png").read_bytes()
    run.cache = cache  # type: ignore[attr-defined]
    return run


def test_task_builds_uses_and_repairs_the_cache(task) -> None:
    first, first_png = task("miss", SEGBOT_GRAPH_AUTOBUILD="1")
    assert first["model"]["graph_cache"] == "miss"
    entries = [p for p in task.cache.iterdir()]
    assert len(entries) == 1 and (entries[0] / graph.KEY_FILE).exists()

    second, second_png = task("hit")
    assert second["model"]["graph_cache"] == "hit"
    assert second["detections"] == first["detections"] and second_png == first_png
    assert second["timings"]["weights_s"] == 0.0

    # a broken entry (damaged graph, right key) is reported, skipped, and rebuilt when allowed
    (entries[0] / "saved_model.pb").write_bytes(b"\0" * 64)
    third, third_png = task("broken", SEGBOT_GRAPH_AUTOBUILD="1")
    assert third["model"]["graph_cache"] == "broken"
    assert third["detections"] == first["detections"] and third_png == first_png
    fourth, _ = task("rebuilt", "--no-graph-cache")
    assert fourth["model"]["graph_cache"] == "off" and fourth["detections"] == first["detections"]
    assert graph.lookup(str(task.cache), json.loads((entries[0] / graph.KEY_FILE).read_text()))[1] == "hit"
