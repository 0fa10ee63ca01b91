"""Benchmark of the iExec app (worker/): for ResNet101 and ResNet50 at 1024 and 512 px, random weights
(stamped files in matterport's naming, built once under .cache/worker/), on this machine's cores.

Per config: a fresh `python -m worker` iExec task (process start to computed.json) with its parts
(checks, imports, build, weights, detect, draw) and its peak RSS; then a warm process for `detect` median
and min-max over several runs and the drawing time. Run: `.venv/bin/python bench/worker.py`.
Targets (ResNet101, 1024 px, defaults, random weights, fresh process): task <= 7 s, warm detect <= 2.0 s
median, peak RSS < 2 GiB.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "worker"
RUNS = 5

WARM = r"""
import json, sys, time
import numpy as np
from PIL import Image
from worker.model import SegmentationModel
from worker.draw import draw
from worker.coco import CLASS_NAMES
img = np.asarray(Image.open(sys.argv[3]).convert("RGB"))
net = SegmentationModel(sys.argv[1], int(sys.argv[2]))
net.load_weights(sys.argv[4])
times, draws, n = [], [], 0
for _ in range(int(sys.argv[5]) + 1):
    t = time.perf_counter(); found = net.detect(img); times.append(time.perf_counter() - t)
    t = time.perf_counter(); draw(img, found, CLASS_NAMES, True); draws.append(time.perf_counter() - t)
    n = len(found)
print(json.dumps({"first": times[0], "warm": times[1:], "draw": draws[1:], "n": n}))
"""


def weights(backbone: str) -> Path:
    path = CACHE / f"random_{'r101' if backbone == 'resnet101' else 'r50'}_v1.h5"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "worker", "make-test-weights", str(path), "--backbone", backbone],
                       cwd=REPO, check=True, capture_output=True)
    return path


def task(backbone: str, dim: int, image: Path, wfile: Path, tmp: Path) -> dict:
    """One fresh iExec-mode process; returns its timings, wall time and peak RSS."""
    out = tmp / f"out_{backbone}_{dim}"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, IEXEC_OUT=str(out), IEXEC_IN=str(image.parent), IEXEC_INPUT_FILES_FOLDER=str(image.parent),
               IEXEC_INPUT_FILES_NUMBER="1", IEXEC_INPUT_FILE_NAME_1=image.name, IEXEC_DATASET_FILENAME="",
               MRCNN_WEIGHTS=str(wfile))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "worker", "--max-dim", str(dim), "--backbone", backbone],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert status == 0 and (out / "computed.json").exists(), proc.stderr.read().decode()[-2000:]
    doc = json.loads((out / "detections.json").read_text())
    return {"wall": wall, "rss_mib": usage.ru_maxrss / 1024, "t": doc["timings"], "n": doc["count"]}


def warm(backbone: str, dim: int, image: Path, wfile: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", WARM, backbone, str(dim), str(image), str(wfile), str(RUNS)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    import skimage.data
    from PIL import Image

    print(f"cores={os.cpu_count()} python={sys.version.split()[0]}")
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        image = tmp / "in" / "photo1024"
        image.parent.mkdir()
        Image.fromarray(skimage.data.astronaut()).resize((1024, 1024)).save(image, "JPEG", quality=92)
        for backbone, tag in (("resnet101", "r101"), ("resnet50", "r50")):
            wfile = weights(backbone)
            for dim in (1024, 512):
                fresh = task(backbone, dim, image, wfile, tmp)
                hot = warm(backbone, dim, image, wfile)
                t = fresh["t"]
                med = statistics.median(hot["warm"])
                print(f"{tag} @{dim}: task {fresh['wall']:.2f} s (in-process {t['total_s']:.2f}: checks "
                      f"{t['checks_s']:.2f} import {t['import_s']:.2f} build {t['build_s']:.2f} weights "
                      f"{t['weights_s']:.2f} detect(cold) {t['detect_s']:.2f} draw {t['draw_s']:.2f} save "
                      f"{t['save_s']:.2f}), ready {t['checks_s'] + t['import_s'] + t['build_s'] + t['weights_s']:.2f} s, "
                      f"peak RSS {fresh['rss_mib']:.0f} MiB, {fresh['n']} detections; warm detect median {med:.2f} s "
                      f"(min {min(hot['warm']):.2f} max {max(hot['warm']):.2f}, first {hot['first']:.2f}), "
                      f"draw median {statistics.median(hot['draw']) * 1000:.0f} ms", flush=True)
                key = f"{tag}_{dim}"
                result[f"{key}_task_s"] = fresh["wall"]
                result[f"{key}_detect_median_s"] = med
                result[f"{key}_peak_rss_mib"] = fresh["rss_mib"]
    print("RESULT " + " ".join(f"{k}={v:.2f}" if not k.endswith("mib") else f"{k}={v:.0f}"
                               for k, v in result.items()))


if __name__ == "__main__":
    main()
