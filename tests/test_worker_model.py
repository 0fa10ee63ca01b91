"""The real model: built with mrcnn 0.2 on TF 2.21 through worker.compat, weights loaded by layer name from
a file in matterport's naming, detect on photos that ship with scikit-image, and the iExec task end to end
as a subprocess. TensorFlow runs only in subprocesses (the keras aliasing is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures_worker import REPO, iexec_env

_MODEL_SCRIPT = r"""
import json, sys
import h5py, numpy as np, skimage.data
from worker.model import SegmentationModel
net = SegmentationModel("resnet50", 256, 0.7)
restored = net.load_weights(sys.argv[1])
with h5py.File(sys.argv[1], "r") as fh:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in fh.attrs["layer_names"]]
    kernel = fh["mrcnn_mask"]["mrcnn_mask"]["kernel:0"][()]
layer = net.keras_model.get_layer("mrcnn_mask")
out = {"restored": restored, "weighted": net.weighted_layer_names(), "in_file": names,
       "params": int(net.keras_model.count_params()),
       "kernel_equal": bool(np.array_equal(layer.get_weights()[0], kernel)), "photos": {}}
for name in ("astronaut", "coffee", "chelsea"):
    img = getattr(skimage.data, name)()
    found = net.detect(img)
    again = net.detect(img)
    out["photos"][name] = {"shape": list(img.shape), "same_twice": [d.box for d in found] == [d.box for d in again],
        "dets": [{"class_id": d.class_id, "score": d.score, "box": list(d.box), "mask_shape": list(d.mask.shape),
                  "area": d.mask_area} for d in found]}
    only = net.detect(img, classes=(1,))
    out["photos"][name]["filtered"] = sorted({d.class_id for d in only})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def model_report(worker_weights_r50: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _MODEL_SCRIPT, str(worker_weights_r50)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_builds_and_loads_every_weighted_layer_by_name(model_report: dict) -> None:
    assert model_report["params"] == 45_088_120  # matterport's ResNet50 Mask R-CNN
    assert model_report["restored"] == len(model_report["weighted"]) > 100
    assert set(model_report["weighted"]) <= set(model_report["in_file"])
    assert {"rpn_model", "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask", "fpn_p2", "res4f_branch2c"} <= set(
        model_report["in_file"]
    )
    assert model_report["kernel_equal"]


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_detect_on_real_photos(model_report: dict, photo: str) -> None:
    report = model_report["photos"][photo]
    height, width = report["shape"][:2]
    dets = report["dets"]
    assert 0 < len(dets) <= 100  # random weights give many confident detections
    for det in dets:
        y1, x1, y2, x2 = det["box"]
        assert 0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width
        assert det["mask_shape"] == [y2 - y1, x2 - x1]
        assert 0 <= det["area"] <= (y2 - y1) * (x2 - x1)
        assert 0.7 <= det["score"] <= 1.0 and 1 <= det["class_id"] <= 80
    assert report["same_twice"]
    assert report["filtered"] in ([], [1])


def _rle_decode(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    pos = 0
    for i, count in enumerate(rle["counts"]):
        if i % 2:
            flat[pos : pos + count] = True
        pos += count
    assert pos == height * width
    return flat.reshape(width, height).T


def test_iexec_task_end_to_end(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    import skimage.data

    name = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    env = iexec_env(tmp_path, name, MRCNN_WEIGHTS=str(worker_weights_r50))
    photo = skimage.data.chelsea()
    Image.fromarray(photo).save(tmp_path / "iexec_in" / name, "JPEG", quality=95)
    run = run_worker(["--max-dim", "256", "--format", "jpeg", "--min-confidence", "0.5"], env)
    assert run.code == 0, run.stderr[-2000:]
    out = Path(env["IEXEC_OUT"])
    assert run.files == {"computed.json", "detections.json", "result.jpg"}
    assert run.computed() == {"deterministic-output-path": f"{out}/result.jpg"}
    doc = json.loads((out / "detections.json").read_text())
    assert doc["image"]["width"] == photo.shape[1] and doc["image"]["height"] == photo.shape[0]
    assert doc["model"]["backbone"] == "resnet50" and doc["model"]["random_weights"] is True
    assert doc["model"]["weights_source"] == "env" and len(doc["model"]["weights_sha256"]) == 64
    assert doc["count"] == len(doc["detections"]) > 0
    for det in doc["detections"]:
        assert set(det) == {"class_id", "class_name", "score", "box", "mask_area", "mask"}
        mask = _rle_decode(det["mask"])
        y1, _x1, _y2, x2 = det["box"]
        assert mask.sum() == det["mask_area"] and not mask[:y1].any() and not mask[:, x2:].any()
        assert det["score"] >= 0.5
    for key in ("import_s", "build_s", "weights_s", "detect_s", "draw_s", "total_s"):
        assert doc["timings"][key] >= 0
    result = Image.open(out / "result.jpg")
    assert result.format == "JPEG" and result.size == (photo.shape[1], photo.shape[0])
    # the drawing changed the picture where the masks are
    drawn = np.asarray(result.convert("RGB"), dtype=np.int16)
    assert np.abs(drawn - photo.astype(np.int16)).mean() > 5


def test_segment_command_for_people(tmp_path: Path, worker_weights_r50: Path) -> None:
    import skimage.data

    src = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "segment",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--max-dim",
            "256",
            "--weights",
            str(worker_weights_r50),
            "--classes",
            "cup,person",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "segmented:" in proc.stderr
    doc = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert {d["class_name"] for d in doc["detections"]} <= {"cup", "person"}
    assert Image.open(tmp_path / "o" / "result.png").size == (600, 400)
