"""One segmentation run, as an iExec task (`IEXEC_OUT` set) or for a person (`segment IMAGE`).

A task with several input files is an album: every picture is segmented in this one process, the model
loaded once (output layout in `worker/album.py`). With one input file the layout is the single one.

Order matters for speed: options, input and weights are checked before TensorFlow is imported, so bad
input fails in well under a second. On any failure `computed.json` carries an `error-message` (iExec
mode), nothing else is left in the output folder, and the exit code is non-zero.
It must never print a traceback as the only explanation, and never write outside its output folder.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker import album
from worker.decrypt import input_key
from worker.errors import InputError, ModelError, OptionError, WeightsError, WorkerError
from worker.images import LoadedImage, read_input_file
from worker.inputs import decode_input, input_count, input_path
from worker.options import TaskOptions, parse_task
from worker.weights import WeightsInfo, resolve_weights

if TYPE_CHECKING:
    from worker.molding import Detection

RESULT_STEM = "result"


@dataclass(frozen=True)
class Outcome:
    """What a successful run wrote."""

    out_dir: str
    image_path: str
    detections_path: str
    count: int
    pictures: int = 1  # an album: how many pictures, and how many of them failed
    failed: int = 0


def _input_path(opts: TaskOptions, env: Mapping[str, str]) -> str | None:
    """The task's first input file, if the task has one."""
    return input_path(env, 1) if input_count(env) >= 1 else None


def album_size(opts: TaskOptions, env: Mapping[str, str]) -> int:
    """How many input files an iExec task without an URL has (an album when 2 or more); 0 otherwise."""
    if "IEXEC_OUT" not in env or opts.url or opts.image:
        return 0
    return input_count(env)


def _input_bytes(opts: TaskOptions, env: Mapping[str, str], max_bytes: int) -> bytes:
    """The input's bytes as given (at most `max_bytes` + 1 of a file). Raises InputError / DownloadError."""
    if opts.url:
        from worker.fetch import download_image

        return download_image(opts.url, max_bytes=max_bytes, block_private=opts.block_private_urls)
    path = opts.image or (_input_path(opts, env) if "IEXEC_OUT" in env else None)
    if path:
        return read_input_file(path, max_bytes)
    raise InputError(
        "No input image: give the task an input file, or an image URL in its arguments (--url https://... )."
    )


def load_input(opts: TaskOptions, env: Mapping[str, str]) -> LoadedImage:
    """Find, fetch, decrypt (a TDX task given an input key) and check the input image.

    With `IEXEC_REQUESTER_SECRET_1` set, the input is decrypted before any other check of it, in memory.
    Raises InputError (DecryptionError) / DownloadError.
    """
    return decode_input(lambda max_bytes: _input_bytes(opts, env, max_bytes), input_key(env))


def _hash_in_background(path: str | None, env: Mapping[str, str]) -> tuple[threading.Thread | None, dict[str, str]]:
    box: dict[str, str] = {}
    if path is None:
        return None, box

    def work() -> None:
        from worker import graph

        box["sha256"] = graph.weights_sha256(path, graph.cache_root(env))

    thread = threading.Thread(target=work, name="weights-sha256", daemon=True)
    thread.start()
    return thread, box


def _load_model(
    opts: TaskOptions,
    weights: WeightsInfo,
    sha256: str | None,
    env: Mapping[str, str],
    timings: dict[str, float],
    precision: str,
) -> tuple[Any, dict[str, Any] | None, str, str]:
    """(model, graph key, cache status, precision): the cached graph when there is a valid one, else the
    Keras model.

    status: "hit", "miss", "stale", "broken" (an entry that failed to load) or "off". With --precision auto
    on a bf16 CPU, a cached fp32 graph is still faster than building the Keras model in bf16.
    """
    key = None
    status = "off"
    if sha256 and opts.graph_cache:
        from worker import graph

        root = graph.cache_root(env)
        tries = [precision] + (["fp32"] if opts.precision == "auto" and precision != "fp32" else [])
        for number, candidate in enumerate(tries):
            wanted = graph.graph_key(sha256, weights.backbone, opts.max_dim, opts.min_confidence, candidate)
            folder, found = graph.lookup(root, wanted)
            if number == 0:
                key, status = wanted, found
            if folder:
                try:
                    net = graph.GraphModel(folder, opts.max_dim)
                except ModelError as exc:
                    print(f"warning: {exc}", file=sys.stderr)
                    status = "broken" if number == 0 else status
                    continue
                timings["build_s"], timings["weights_s"] = net.build_s, 0.0
                return net, key, "hit", candidate
        if status == "broken":
            print("warning: building the model instead.", file=sys.stderr)
    from worker import compat

    compat.install(opts.threads)
    from worker.graphopt import configure_grappler

    configure_grappler(bf16=precision == "bf16")
    from worker.model import SegmentationModel

    keras_net = SegmentationModel(weights.backbone, opts.max_dim, opts.min_confidence)
    timings["build_s"] = keras_net.build_s
    mark = time.perf_counter()
    if weights.path:
        keras_net.load_weights(weights.path)
    timings["weights_s"] = time.perf_counter() - mark
    return keras_net, key, status, precision


@dataclass(frozen=True)
class Loaded:
    """The model, ready to detect, and what the outputs say about it."""

    net: Any
    weights: WeightsInfo
    sha256: str | None
    key: dict[str, Any] | None  # the graph cache key (for SEGBOT_GRAPH_AUTOBUILD)
    status: str  # graph cache: hit, miss, stale, broken, off
    precision: str


def prepare_model(opts: TaskOptions, env: Mapping[str, str], started: float, timings: dict[str, float]) -> Loaded:
    """Find the weights, import TensorFlow and load the model (the cached graph when valid)."""
    weights = resolve_weights(opts.weights, opts.backbone, opts.random_weights, env)
    from worker.precision import resolve as resolve_precision

    precision = resolve_precision(opts.precision)
    timings["checks_s"] = time.perf_counter() - started
    hasher, digest = _hash_in_background(weights.path, env)  # overlaps the TensorFlow import
    mark = time.perf_counter()
    from worker.tfsetup import import_tensorflow

    import_tensorflow(opts.threads)  # TensorFlow is imported here, and only here
    if hasher:
        hasher.join()
    timings["import_s"] = time.perf_counter() - mark
    net, key, status, precision = _load_model(opts, weights, digest.get("sha256"), env, timings, precision)
    return Loaded(net, weights, digest.get("sha256"), key, status, precision)


def segment(opts: TaskOptions, env: Mapping[str, str], out_dir: str, started: float) -> Outcome:
    """Check everything cheap, then load the model, detect, draw and write the outputs."""
    count = album_size(opts, env)
    if count >= 2:
        return segment_album(opts, env, out_dir, started, count)
    timings: dict[str, float] = {}
    loaded = load_input(opts, env)
    model = prepare_model(opts, env, started, timings)
    mark = time.perf_counter()
    found = model.net.detect(loaded.pixels, opts.classes)
    timings["detect_s"] = time.perf_counter() - mark
    outcome = write_outputs(
        out_dir, opts, loaded, found, model.weights, model.sha256, timings, started, model.status, model.precision
    )
    _maybe_autobuild(model, env)
    return outcome


def segment_album(opts: TaskOptions, env: Mapping[str, str], out_dir: str, started: float, count: int) -> Outcome:
    """Every input file of the task, the model loaded once; a picture that fails fails alone."""
    album.check_size(count)
    pictures = album.load_pictures(env, count, input_key(env))
    if all(p.error for p in pictures):
        raise album.all_failed(pictures)  # before TensorFlow: refused inputs cost no model load
    shared: dict[str, float] = {}
    model = prepare_model(opts, env, started, shared)
    _segment_pictures(pictures, opts, model, out_dir, shared, started)
    if all(p.error for p in pictures):
        raise album.all_failed(pictures)
    manifest = album.manifest(pictures, model.weights.random)
    manifest_path = os.path.join(out_dir, album.MANIFEST)
    _write_json(manifest_path, manifest)
    _write_json(os.path.join(out_dir, "computed.json"), {"deterministic-output-path": manifest_path})
    _maybe_autobuild(model, env)
    return Outcome(
        out_dir=out_dir,
        image_path=manifest_path,
        detections_path=manifest_path,
        count=sum(p.entry["count"] for p in pictures if p.entry),
        pictures=count,
        failed=manifest["failed"],
    )


#: album pictures detected at once (the cached graph is safe to call from threads). One `detect` keeps the
#: 2 cores of the development machine ~1.85 busy (serial parts: proposal and detection NMS, ROI align, the
#: small ops between convolutions); two at once fill the gaps: 1.66-1.68 s a photo instead of 1.83-1.97 s
#: in a bare loop over the bench's photos, alternated 4 rounds (load 1.3-1.9), CPU time per photo 3.3 vs
#: 3.4 s, outputs identical; for +250 MiB peak RSS (1.6 GiB for an album of 10). Under heavy load from
#: other processes the gaps are taken by them and the two come out even.
DETECTORS = 2


def _segment_pictures(
    pictures: list[album.Picture],
    opts: TaskOptions,
    model: Loaded,
    out_dir: str,
    shared: dict[str, float],
    started: float,
) -> None:
    """Detect the loaded pictures (DETECTORS at a time with the cached graph) and draw and write each in a
    thread meanwhile (Pillow and numpy release the GIL). An error marks only its picture failed."""
    at_once = DETECTORS if model.status == "hit" else 1  # the cached graph is safe to call from threads
    with (
        ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="album-detect") as detector,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="album-writer") as writer,
    ):
        detecting = [(p, detector.submit(_detect, p, opts, model, shared)) for p in pictures if p.loaded is not None]
        pending = []
        for picture, job in detecting:
            try:
                found, timings = job.result()
            except Exception as exc:  # noqa: BLE001 - one picture's failure is reported in its entry
                _picture_failed(picture, exc)
                continue
            pending.append(
                (
                    picture,
                    writer.submit(
                        _write_picture, picture, len(pictures), found, opts, model, out_dir, timings, started
                    ),
                )
            )
        for picture, job in pending:
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - one picture's failure is reported in its entry
                _picture_failed(picture, exc)
    for picture in pictures:
        state = f"{picture.entry['count']} instances" if picture.entry else f"failed ({picture.error})"
        print(f"picture {picture.index}: {state}", file=sys.stderr)


def _detect(
    picture: album.Picture, opts: TaskOptions, model: Loaded, shared: dict[str, float]
) -> tuple[Sequence[Detection], dict[str, float]]:
    """One album picture's detections, and its timings (the shared ones plus its own detect_s)."""
    assert picture.loaded is not None
    timings = dict(shared)
    mark = time.perf_counter()
    found = model.net.detect(picture.loaded.pixels, opts.classes)
    timings["detect_s"] = time.perf_counter() - mark
    return found, timings


def _write_picture(
    picture: album.Picture,
    total: int,
    found: Sequence[Detection],
    opts: TaskOptions,
    model: Loaded,
    out_dir: str,
    timings: dict[str, float],
    started: float,
) -> None:
    """Draw and write one album picture, then make its manifest entry."""
    loaded = picture.loaded
    assert loaded is not None
    image_name = album.result_name(picture.index, opts.fmt)
    written = write_outputs(
        out_dir,
        opts,
        loaded,
        found,
        model.weights,
        model.sha256,
        timings,
        started,
        model.status,
        model.precision,
        image_name=image_name,
        detections_name=album.detections_name(picture.index),
        extra={"album": {"index": picture.index, "total": total}},
        computed=False,
    )
    height, width = loaded.pixels.shape[:2]
    with open(written.image_path, "rb") as fh:
        picture.entry = album.ok_entry(
            picture, image_name, album.detections_name(picture.index), written.count, width, height, fh.read()
        )
    picture.loaded = None


def _picture_failed(picture: album.Picture, exc: Exception) -> None:
    """Mark an album picture failed with a message for the person who sent it."""
    if isinstance(exc, WorkerError):
        picture.failed(str(exc), album.error_kind(exc), exc.exit_code)
    elif isinstance(exc, MemoryError):
        picture.failed(album.MEMORY_MESSAGE, "memory", 7)
    else:  # a bug: the traceback is for the operator, the words for the requester
        traceback.print_exception(exc)
        picture.failed(f"Internal error of the segmentation app ({type(exc).__name__}) on this picture.", "internal", 8)


def _maybe_autobuild(model: Loaded, env: Mapping[str, str]) -> None:
    if model.key is not None and model.status != "hit" and env.get("SEGBOT_GRAPH_AUTOBUILD") == "1":
        _autobuild(model.net, model.key, env)


def _autobuild(net: Any, key: dict[str, Any], env: Mapping[str, str]) -> None:
    """Export the graph after the outputs are written (opt-in: it costs a few seconds once)."""
    from worker import graph

    try:
        folder = graph.export(net, graph.cache_root(env), key)
    except Exception as exc:  # noqa: BLE001 - the task itself succeeded; the cache is optional
        print(f"warning: the inference graph could not be cached ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    print(f"inference graph cached: {folder}", file=sys.stderr)


def build_graphs(
    weights: WeightsInfo,
    max_dims: Sequence[int],
    min_confidence: float,
    root: str | None = None,
    precisions: Sequence[str] = ("auto",),
) -> list[str]:
    """Export the inference graph of `weights` for each max_dim and precision into the cache (operator
    command)."""
    from worker import compat

    compat.install()
    from worker import graph
    from worker.model import SegmentationModel

    if weights.path is None:
        raise WeightsError("build-graph needs a weights file (random weights are not cached).")
    from worker.precision import resolve as resolve_precision

    root = root or graph.cache_root(os.environ)
    sha256 = graph.weights_sha256(weights.path, root)
    wanted = list(dict.fromkeys(resolve_precision(p) for p in precisions))
    folders = []
    for dim in max_dims:
        net = SegmentationModel(weights.backbone, dim, min_confidence)
        net.load_weights(weights.path)
        for precision in wanted:
            key = graph.graph_key(sha256, weights.backbone, dim, min_confidence, precision)
            folders.append(graph.export(net, root, key))
    return folders


def write_outputs(
    out_dir: str,
    opts: TaskOptions,
    loaded: LoadedImage,
    found: Sequence[Detection],
    weights: WeightsInfo,
    sha256: str | None,
    timings: dict[str, float],
    started: float,
    graph_cache: str = "off",
    precision: str = "fp32",
    *,
    image_name: str | None = None,
    detections_name: str = "detections.json",
    extra: dict[str, Any] | None = None,
    computed: bool = True,
) -> Outcome:
    """Draw and write the result image, detections.json (plus `extra` keys) and (last, unless `computed` is
    false: an album writes its own) computed.json."""
    from worker import rle
    from worker.coco import CLASS_NAMES
    from worker.draw import draw

    os.makedirs(out_dir, exist_ok=True)
    mark = time.perf_counter()
    picture = draw(loaded.pixels, found, CLASS_NAMES, weights.random)
    timings["draw_s"] = time.perf_counter() - mark
    ext = "png" if opts.fmt == "png" else "jpg"
    image_path = os.path.join(out_dir, image_name or f"{RESULT_STEM}.{ext}")
    mark = time.perf_counter()
    if ext == "png":
        picture.save(image_path, "PNG", compress_level=1)
    else:
        picture.save(image_path, "JPEG", quality=90)
    timings["save_s"] = time.perf_counter() - mark
    height, width = loaded.pixels.shape[:2]
    items = [
        {
            "class_id": d.class_id,
            "class_name": CLASS_NAMES[d.class_id],
            "score": round(float(d.score), 4),
            "box": list(d.box),
            "mask_area": d.mask_area,
            "mask": rle.encode_box_mask(d.mask, d.box, (height, width)),
        }
        for d in found
    ]
    timings["total_s"] = time.perf_counter() - started
    doc = {
        "image": {
            "width": width,
            "height": height,
            "source_format": loaded.source_format,
            "source_width": loaded.source_size[0],
            "source_height": loaded.source_size[1],
        },
        "model": {
            "name": "Mask R-CNN (matterport) COCO",
            "backbone": weights.backbone,
            "max_dim": opts.max_dim,
            "min_confidence": opts.min_confidence,
            "weights_source": weights.source,
            "weights_sha256": sha256,
            "random_weights": weights.random,
            "graph_cache": graph_cache,
            "precision": precision,
        },
        "count": len(items),
        "detections": items,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        **(extra or {}),
    }
    det_path = os.path.join(out_dir, detections_name)
    with open(det_path, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    # the image is the deterministic part (detections.json carries timings)
    if computed:
        _write_json(os.path.join(out_dir, "computed.json"), {"deterministic-output-path": image_path})
    return Outcome(out_dir=out_dir, image_path=image_path, detections_path=det_path, count=len(items))


def _write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def fail(out_dir: str | None, message: str) -> None:
    """Leave only computed.json with the error message in the output folder."""
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    ours = [f"{RESULT_STEM}.png", f"{RESULT_STEM}.jpg", "detections.json"]
    ours += [name for name in os.listdir(out_dir) if album.OUTPUT_NAME.match(name)]
    for name in ours:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.unlink(path)
    _write_json(os.path.join(out_dir, "computed.json"), {"error-message": message})


def _out_dir(argv: Sequence[str], opts: TaskOptions | None, env: Mapping[str, str]) -> str | None:
    if env.get("IEXEC_OUT"):
        return env["IEXEC_OUT"]
    if opts and opts.out:
        return opts.out
    if opts and opts.image:
        stem = os.path.splitext(os.path.basename(opts.image))[0] or "image"
        return f"{stem}_segmented"
    return None


def run_task(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run one segmentation; returns the exit code. Errors are reported, never raised."""
    started = time.perf_counter()
    env = os.environ if env is None else env
    opts: TaskOptions | None = None
    out_dir = env.get("IEXEC_OUT") or None
    try:
        opts = parse_task(argv)
        out_dir = _out_dir(argv, opts, env)
        if out_dir is None:
            raise OptionError("Nothing to do: give `segment IMAGE`, or run as an iExec task (IEXEC_OUT set).")
        outcome = segment(opts, env, out_dir, started)
    except WorkerError as exc:
        fail(out_dir if "IEXEC_OUT" in env else None, str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        message = "The image needs more memory than the task has."
        fail(out_dir if "IEXEC_OUT" in env else None, message)
        print(f"error: {message}", file=sys.stderr)
        return 7
    except Exception as exc:  # noqa: BLE001 - a bug: say so in words, keep the traceback for the operator
        traceback.print_exc()
        message = f"Internal error of the segmentation app ({type(exc).__name__}); the task failed."
        fail(out_dir if "IEXEC_OUT" in env else None, message)
        print(f"error: {message}", file=sys.stderr)
        return 8
    pictures = f"{outcome.pictures} pictures ({outcome.failed} failed), " if outcome.pictures > 1 else ""
    print(
        f"segmented: {pictures}{outcome.count} instances -> {outcome.image_path} "
        f"({time.perf_counter() - started:.2f} s)",
        file=sys.stderr,
    )
    return 0


__all__ = [
    "Loaded",
    "Outcome",
    "album_size",
    "build_graphs",
    "load_input",
    "prepare_model",
    "run_task",
    "segment",
    "segment_album",
    "write_outputs",
]
