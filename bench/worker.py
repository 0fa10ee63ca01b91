"""Benchmark of the iExec app (worker/): for ResNet101 and ResNet50 at 1024 and 512 px, random weights
(stamped files in matterport's naming, built once under .cache/worker/), on this machine's cores.

Per config: fresh `python -m worker` iExec tasks (process start to computed.json) with their parts
(checks, imports, build or graph load, weights, detect, draw) and peak RSS, on the cold path (no graph
cache: Keras build + h5 load) and on the cached-graph path (`python -m worker build-graph` first),
interleaved (the machine is shared: compare the two within one run); then a warm process for `detect`
median and min-max over several runs and the drawing time. Prints the load average at start and end.
Run: `.venv/bin/python bench/worker.py`.
Targets (ResNet101, 1024 px, defaults, random weights, fresh process): task <= 7 s, warm detect <= 2.0 s
median, peak RSS < 2 GiB. The default precision is `auto` (bf16 where the CPU has it natively); the same
path in fp32 is measured beside it as the anchor, and the Keras model in fp32 (mrcnn's own predict).

Albums (issue 14): an album of 10 photos (1280 px JPEGs, as Telegram sends them) in one task process beside
the same 10 photos as 10 single tasks (10 processes), interleaved over two rounds, with the devnet's worker
arguments (`devnet.up.WORKER_ARGS`), its random ResNet50 test weights and its cached graph. Per photo:
process wall time / 10; the parts say what the album saves (interpreter start, TensorFlow import and graph
load once instead of 10 times, the first `detect`'s one-off set-up), and what it cannot (each photo's
detect, draw, save; the album detects two at a time and draws in a thread meanwhile, so its per-photo
figure is the wall time of that pipeline, while `detect` is each call's own time).
Target: album per photo at least 3x less than single. `--album` runs only this part.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "worker"
GRAPHS = CACHE / "graphs"
RUNS = 5
# run as a script, bench/ comes first on sys.path and bench/devnet.py would stand for the devnet package
sys.path[:] = [str(REPO) if Path(entry or ".").resolve() == REPO / "bench" else entry for entry in sys.path]

WARM = r"""
import json, sys, time
import numpy as np
from PIL import Image
from worker.draw import draw
from worker.coco import CLASS_NAMES
img = np.asarray(Image.open(sys.argv[3]).convert("RGB"))
if sys.argv[6] == "graph":
    from worker.graph import GraphModel
    net = GraphModel(sys.argv[7], int(sys.argv[2]))
else:
    from worker.model import SegmentationModel
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
        subprocess.run(
            [sys.executable, "-m", "worker", "make-test-weights", str(path), "--backbone", backbone],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    return path


def graph_entry(backbone: str, dim: int, wfile: Path, precision: str = "auto") -> Path:
    """Export (or reuse) the cached inference graph for this config."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "build-graph",
            "--weights",
            str(wfile),
            "--backbone",
            backbone,
            "--max-dim",
            str(dim),
            "--cache-dir",
            str(GRAPHS),
            "--precision",
            precision,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(proc.stderr.strip().splitlines()[-1].split(": ", 1)[1])


def task(backbone: str, dim: int, image: Path, wfile: Path, tmp: Path, cached: bool, precision: str = "auto") -> dict:
    """One fresh iExec-mode process; returns its timings, wall time and peak RSS."""
    out = tmp / f"out_{backbone}_{dim}_{cached}_{precision}"
    out.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        IEXEC_OUT=str(out),
        IEXEC_IN=str(image.parent),
        IEXEC_INPUT_FILES_FOLDER=str(image.parent),
        IEXEC_INPUT_FILES_NUMBER="1",
        IEXEC_INPUT_FILE_NAME_1=image.name,
        IEXEC_DATASET_FILENAME="",
        MRCNN_WEIGHTS=str(wfile),
        SEGBOT_GRAPH_CACHE=str(GRAPHS),
    )
    args = ["--max-dim", str(dim), "--backbone", backbone, "--precision", precision] + (
        [] if cached else ["--no-graph-cache"]
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert status == 0 and (out / "computed.json").exists(), proc.stderr.read().decode()[-2000:]
    doc = json.loads((out / "detections.json").read_text())
    assert doc["model"]["graph_cache"] == ("hit" if cached else "off"), doc["model"]
    return {
        "wall": wall,
        "rss_mib": usage.ru_maxrss / 1024,
        "t": doc["timings"],
        "n": doc["count"],
        "precision": doc["model"]["precision"],
    }


def warm(backbone: str, dim: int, image: Path, wfile: Path, entry: Path | None) -> dict:
    mode = ["graph", str(entry)] if entry else ["keras", ""]
    proc = subprocess.run(
        [sys.executable, "-c", WARM, backbone, str(dim), str(image), str(wfile), str(RUNS), *mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(label: str, runs: list[dict]) -> str:
    best = min(runs, key=lambda r: r["wall"])
    t = best["t"]
    walls = ", ".join(f"{r['wall']:.2f}" for r in runs)
    return (
        f"  {label}: task {statistics.median(r['wall'] for r in runs):.2f} s median of [{walls}] (fastest: "
        f"in-process {t['total_s']:.2f} = checks {t['checks_s']:.2f} import {t['import_s']:.2f} "
        f"build/load {t['build_s']:.2f} weights {t['weights_s']:.2f} detect(cold) {t['detect_s']:.2f} "
        f"draw {t['draw_s']:.2f} save {t['save_s']:.2f}), peak RSS {max(r['rss_mib'] for r in runs):.0f} MiB, "
        f"{best['n']} detections, {best['precision']}"
    )


ALBUM = 10
ROUNDS = 2


def album_photos(folder: Path) -> list[str]:
    """10 distinct photos, 1280 px on the longest side (Telegram's largest photo size), JPEG."""
    import skimage.data
    from PIL import Image, ImageOps

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry"]
    images = [Image.fromarray(getattr(skimage.data, n)()) for n in names]
    images += [ImageOps.mirror(im) for im in images[: ALBUM - len(images)]]
    files = []
    for n, im in enumerate(images, 1):
        scale = 1280 / max(im.size)
        im = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)))
        name = f"{n:02d}" + "ab" * 31  # sha256(url)-like names, as iExec gives them
        im.save(folder / name, "JPEG", quality=90)
        files.append(name)
    return files


def album_task(names: list[str], folder: Path, out: Path, wfile: Path, args: list[str]) -> dict:
    """One `python -m worker` process over `names` (an album when 2 or more); wall time and its parts."""
    out.mkdir(parents=True)
    env = dict(
        os.environ,
        IEXEC_OUT=str(out),
        IEXEC_IN=str(folder),
        IEXEC_INPUT_FILES_FOLDER=str(folder),
        IEXEC_INPUT_FILES_NUMBER=str(len(names)),
        IEXEC_DATASET_FILENAME="",
        MRCNN_WEIGHTS=str(wfile),
        SEGBOT_GRAPH_CACHE=str(GRAPHS),
    )
    env.update({f"IEXEC_INPUT_FILE_NAME_{n}": name for n, name in enumerate(names, 1)})
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)  # its CPU time: what the task costs, whatever the machine's load
    wall = time.perf_counter() - started
    assert status == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]  # stderr=PIPE: a stream
    docs = [json.loads(p.read_text()) for p in out.glob("detections*.json")]
    assert len(docs) == len(names), sorted(p.name for p in out.iterdir())
    docs.sort(key=lambda d: d.get("album", {}).get("index", 1))  # the last one written last
    assert all(d["model"]["precision"] == docs[0]["model"]["precision"] for d in docs)
    assert all(d["model"]["graph_cache"] == "hit" for d in docs), docs[0]["model"]
    t = docs[-1]["timings"]
    work = t["total_s"] - t["checks_s"] - t["import_s"] - t["build_s"] - t["weights_s"]  # all pictures, written
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "in_process": t["total_s"],
        "checks": t["checks_s"],
        "import": t["import_s"],
        "load": t["build_s"],
        "pictures": work,
        "detect": sum(d["timings"]["detect_s"] for d in docs),
        "precision": docs[0]["model"]["precision"],
    }


def album_bench(tmp: Path, result: dict[str, float]) -> None:
    """Album of 10 in one process beside 10 single tasks, interleaved; adds album_* figures to `result`."""
    from devnet.up import WORKER_ARGS, graph_arguments
    from worker.app import DETECTORS

    wfile = weights("resnet50")  # the devnet's random test weights are ResNet50
    subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "build-graph",
            "--weights",
            str(wfile),
            "--cache-dir",
            str(GRAPHS),
            *graph_arguments(WORKER_ARGS),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    folder = tmp / "album_in"
    folder.mkdir()
    names = album_photos(folder)
    args = shlex.split(WORKER_ARGS)
    albums: list[dict] = []
    singles: list[dict] = []
    for round_no in range(ROUNDS):  # interleaved, order swapped each round: the machine is shared
        steps = ["album", "singles"] if round_no % 2 == 0 else ["singles", "album"]
        for step in steps:
            if step == "album":
                albums.append(album_task(names, folder, tmp / f"album_{round_no}", wfile, args))
            else:
                singles += [
                    album_task([name], folder, tmp / f"single_{round_no}_{n}", wfile, args)
                    for n, name in enumerate(names)
                ]
    album_pp = sum(a["wall"] for a in albums) / (ALBUM * len(albums))
    single_pp = sum(s["wall"] for s in singles) / len(singles)
    album_cpu = sum(a["cpu"] for a in albums) / (ALBUM * len(albums))
    single_cpu = sum(s["cpu"] for s in singles) / len(singles)

    def mean(runs: list[dict], part: str) -> float:
        return statistics.mean(r[part] for r in runs)

    def walls(runs: list[dict]) -> str:
        return ", ".join(f"{r['wall']:.1f}" for r in runs)

    outside = mean(singles, "wall") - mean(singles, "in_process")
    fixed = outside + mean(singles, "checks") + mean(singles, "import") + mean(singles, "load")
    print(
        f"album of {ALBUM} vs {ALBUM} single tasks (resnet50 random weights, {WORKER_ARGS}, "
        f"{albums[0]['precision']}, "
        f"{ROUNDS} rounds, load average {os.getloadavg()[0]:.2f}):"
    )
    print(
        f"  single task: {single_pp:.2f} s per photo (wall of [{walls(singles)}] s) "
        f"= interpreter start/exit {outside:.2f} + checks {mean(singles, 'checks'):.2f} + TF import "
        f"{mean(singles, 'import'):.2f} + graph load {mean(singles, 'load'):.2f} + detect "
        f"{mean(singles, 'detect'):.2f} + draw/RLE/save {mean(singles, 'pictures') - mean(singles, 'detect'):.2f}"
    )
    print(
        f"  album of {ALBUM}: {album_pp:.2f} s per photo (wall of [{walls(albums)}] s)"
        f" = once: start/exit {mean(albums, 'wall') - mean(albums, 'in_process'):.2f} + checks "
        f"{mean(albums, 'checks'):.2f} + TF import {mean(albums, 'import'):.2f} + graph load "
        f"{mean(albums, 'load'):.2f}; per photo: {mean(albums, 'pictures') / ALBUM:.2f} (detect, draw, RLE, "
        f"save, overlapped; each detect call {mean(albums, 'detect') / ALBUM:.2f}, {DETECTORS} at a time)"
    )
    print(
        f"  CPU time per photo (user+sys, less sensitive to a shared machine's load): single {single_cpu:.2f} s, "
        f"album {album_cpu:.2f} s: {single_cpu / album_cpu:.2f}x; peak RSS single "
        f"{max(r['rss_mib'] for r in singles):.0f} MiB, album {max(r['rss_mib'] for r in albums):.0f} MiB"
    )
    per_photo_work = mean(albums, "pictures") / ALBUM
    print(
        f"  speedup per photo {single_pp / album_pp:.2f}x (target >= 3x); a single task's fixed part "
        f"(start, import, load) is {fixed:.2f} s of {single_pp:.2f} s, the per-photo work "
        f"{per_photo_work:.2f} s, so no album can beat {single_pp / per_photo_work:.2f}x here"
    )
    result["album_per_photo_s"] = album_pp
    result["single_per_photo_s"] = single_pp
    result["album_speedup"] = single_pp / album_pp
    result["album_cpu_per_photo_s"] = album_cpu
    result["single_cpu_per_photo_s"] = single_cpu
    result["album_cpu_speedup"] = single_cpu / album_cpu
    result["album_peak_rss_mib"] = max(r["rss_mib"] for r in albums)
    result["album_fixed_s"] = fixed
    result["album_work_per_photo_s"] = per_photo_work


def main() -> None:
    import skimage.data
    from PIL import Image

    print(f"cores={os.cpu_count()} python={sys.version.split()[0]} load average at start {os.getloadavg()}")
    result: dict[str, float] = {}
    only_album = "--album" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        album_bench(tmp, result)
        if only_album:
            print(f"load average at end {os.getloadavg()}")
            print(
                "RESULT "
                + " ".join(f"{k}={v:.2f}" if not k.endswith("mib") else f"{k}={v:.0f}" for k, v in result.items())
            )
            return
        image = tmp / "in" / "photo1024"
        image.parent.mkdir()
        Image.fromarray(skimage.data.astronaut()).resize((1024, 1024)).save(image, "JPEG", quality=92)
        for backbone, tag in (("resnet101", "r101"), ("resnet50", "r50")):
            wfile = weights(backbone)
            for dim in (1024, 512):
                entry = graph_entry(backbone, dim, wfile)
                pairs = 3 if (tag, dim) == ("r101", 1024) else 1
                cold, hot = [], []
                for _ in range(pairs):  # interleaved: the machine is shared
                    cold.append(task(backbone, dim, image, wfile, tmp, cached=False))
                    hot.append(task(backbone, dim, image, wfile, tmp, cached=True))
                warm_graph = warm(backbone, dim, image, wfile, entry)
                med = statistics.median(warm_graph["warm"])
                print(f"{tag} @{dim} (load average {os.getloadavg()[0]:.2f}):", flush=True)
                print(describe("cold (Keras build + h5)", cold))
                print(describe("cached graph", hot))
                print(
                    f"  warm detect (cached graph) median {med:.2f} s (min {min(warm_graph['warm']):.2f} max "
                    f"{max(warm_graph['warm']):.2f}, first {warm_graph['first']:.2f}), draw median "
                    f"{statistics.median(warm_graph['draw']) * 1000:.0f} ms",
                    flush=True,
                )
                key = f"{tag}_{dim}"
                if (tag, dim) == ("r101", 1024):
                    # anchor: the same cached-graph path in fp32 (exact arithmetic), interleaved
                    fp32_entry = graph_entry(backbone, dim, wfile, "fp32")
                    fp32 = []
                    for _ in range(pairs):
                        fp32.append(task(backbone, dim, image, wfile, tmp, cached=True, precision="fp32"))
                    warm_fp32 = warm(backbone, dim, image, wfile, fp32_entry)
                    print(describe("cached graph, fp32 anchor", fp32))
                    med32 = statistics.median(warm_fp32["warm"])
                    print(
                        f"  warm detect (cached graph, fp32) median {med32:.2f} s (min {min(warm_fp32['warm']):.2f} "
                        f"max {max(warm_fp32['warm']):.2f})",
                        flush=True,
                    )
                    result[f"{key}_fp32_task_s"] = statistics.median(r["wall"] for r in fp32)
                    result[f"{key}_fp32_detect_median_s"] = med32
                    result[f"{key}_bf16"] = float(hot[0]["precision"] == "bf16")
                    warm_keras = warm(backbone, dim, image, wfile, None)
                    result[f"{key}_detect_keras_median_s"] = statistics.median(warm_keras["warm"])
                    print(
                        f"  warm detect (Keras model, fp32) median {result[f'{key}_detect_keras_median_s']:.2f} s "
                        f"(min {min(warm_keras['warm']):.2f} max {max(warm_keras['warm']):.2f})",
                        flush=True,
                    )
                result[f"{key}_task_s"] = statistics.median(r["wall"] for r in hot)
                result[f"{key}_task_cold_s"] = statistics.median(r["wall"] for r in cold)
                result[f"{key}_detect_median_s"] = med
                result[f"{key}_peak_rss_mib"] = max(r["rss_mib"] for r in hot + cold)
    print(f"load average at end {os.getloadavg()}")
    print(
        "RESULT "
        + " ".join(f"{k}={v:.2f}" if not k.endswith(("mib", "bf16")) else f"{k}={v:.0f}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
