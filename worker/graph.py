"""The cached inference graph: Mask R-CNN exported once as a TensorFlow SavedModel, so that a task loads
it (~1.5-2 s) instead of building the Keras model in Python and reading the h5 file (~3.5 s, and mrcnn,
tf_keras and scikit-image are never imported).

One cache entry per (weights sha256, backbone, max_dim, min_confidence, precision, versions of TF / tf-keras /
mrcnn / this format): the folder name carries a hash of that key and `segbot-graph.json` inside holds the key
itself, written last (an entry without it is incomplete). A missing, stale or unreadable entry is never an
error: the caller falls back to building the Keras model. The Docker image bakes entries at build time
(`python -m worker build-graph`); elsewhere `SEGBOT_GRAPH_AUTOBUILD=1` exports one after a task.
This module must never import mrcnn or tf_keras (exporting takes an already built SegmentationModel).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import numpy as np

from worker import __version__
from worker.errors import ModelError
from worker.molding import Detection, mold, unmold

GRAPH_FORMAT = 3  # 2: optimised at export (grappler off at load), precision in the key; 3: the mask head
# runs on the detections only, not on all 100 slots
KEY_FILE = "segbot-graph.json"
#: remembered sha256 of weights files, by real path, size and modification time
DIGESTS_FILE = "weights-sha256.json"
_SAMPLE = 1 << 20


def cache_root(env: Mapping[str, str]) -> str:
    """Folder of the graph cache: $SEGBOT_GRAPH_CACHE, else <$SEGBOT_CACHE or ~/.cache/segbot>/graphs."""
    if env.get("SEGBOT_GRAPH_CACHE"):
        return env["SEGBOT_GRAPH_CACHE"]
    base = env.get("SEGBOT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "segbot")
    return os.path.join(base, "graphs")


def _sample_digest(fh: Any, size: int) -> str:
    """sha256 of three 1 MiB samples (start, middle, end): tells apart files of one size and one mtime."""
    digest = hashlib.sha256()
    for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
        fh.seek(offset)
        digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def weights_sha256(path: str, root: str) -> str:
    """sha256 of a weights file, remembered in the cache folder `root` under the file's real path, size,
    modification time (whole seconds: image layers keep no more) and a digest of three samples of it, so
    that another file put in its place is hashed again. Hashing 257 MB costs a core ~0.3 s of every task
    otherwise. A cache that cannot be read or written only means hashing again."""
    from worker.fetch import sha256_file

    real = os.path.realpath(path)
    with open(real, "rb") as fh:
        stat = os.fstat(fh.fileno())
        stamp = {"size": stat.st_size, "mtime_s": int(stat.st_mtime), "sample": _sample_digest(fh, stat.st_size)}
    memo_path = os.path.join(root, DIGESTS_FILE)
    try:
        with open(memo_path) as fh:
            memo = json.load(fh)
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    known = memo.get(real)
    if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()):
        digest = known.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    digest = sha256_file(real)
    memo[real] = {**stamp, "sha256": digest}
    try:
        os.makedirs(root, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=root, prefix=f".{DIGESTS_FILE}.")
        with os.fdopen(handle, "w") as out:
            json.dump(memo, out, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return digest


def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def graph_key(
    weights_sha256: str, backbone: str, max_dim: int, min_confidence: float, precision: str = "fp32"
) -> dict[str, Any]:
    """Everything the exported graph depends on (`precision`: "fp32" or "bf16", see worker.precision)."""
    return {
        "format": GRAPH_FORMAT,
        "worker": __version__,
        "weights_sha256": weights_sha256,
        "backbone": backbone,
        "max_dim": max_dim,
        "min_confidence": round(float(min_confidence), 6),
        "precision": precision,
        "tensorflow": _version("tensorflow-cpu", "tensorflow"),
        "tf_keras": _version("tf-keras", "tf_keras"),
        "mrcnn": _version("mrcnn"),
        "numpy": _version("numpy").split(".")[0],
    }


def entry_dir(root: str, key: Mapping[str, Any]) -> str:
    """Where the entry of `key` lives (the name is readable, plus a hash of the whole key)."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(root, f"{key['backbone']}-{key['max_dim']}-{key['precision']}-{digest}")


def lookup(root: str, key: Mapping[str, Any]) -> tuple[str | None, str]:
    """(folder, "hit") when a complete entry for `key` exists, else (None, "miss" or "stale")."""
    folder = entry_dir(root, key)
    try:
        with open(os.path.join(folder, KEY_FILE)) as fh:
            stored = json.load(fh)
    except FileNotFoundError:
        return None, "miss"
    except (OSError, ValueError):
        return None, "stale"
    return (folder, "hit") if stored == dict(key) else (None, "stale")


def _format_of(folder: str) -> Any:
    """The format number an entry was written in (None when it has no readable key)."""
    try:
        with open(os.path.join(folder, KEY_FILE)) as fh:
            return json.load(fh).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def export(net: Any, root: str, key: Mapping[str, Any]) -> str:
    """Export a built, weight-loaded SegmentationModel as the entry of `key` (atomically); returns its folder.

    Other entries of the same backbone, size and precision (stale ones) and entries of older formats are
    removed.
    """
    folder = entry_dir(root, key)
    os.makedirs(root, exist_ok=True)
    tmp = f"{folder}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    net.export_graph(tmp, key["precision"])
    with open(os.path.join(tmp, KEY_FILE), "w") as fh:
        json.dump(dict(key), fh, sort_keys=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    prefix = f"{key['backbone']}-{key['max_dim']}-{key['precision']}-"
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if path == folder or ".tmp" in name or not os.path.isdir(path):
            continue
        if name.startswith(prefix) or _format_of(path) != GRAPH_FORMAT:
            shutil.rmtree(path, ignore_errors=True)
    return folder


class GraphModel:
    """A cached inference graph, ready for `detect` (same interface and results as SegmentationModel)."""

    def __init__(self, folder: str, max_dim: int) -> None:
        from worker.tfsetup import import_tensorflow

        tf = import_tensorflow()
        started = time.perf_counter()
        try:
            self._module = tf.saved_model.load(folder)
            self._infer = self._module.infer
        except Exception as exc:
            raise ModelError(f"The cached graph {folder} could not be loaded ({type(exc).__name__}).") from exc
        from worker.graphopt import disable_runtime_optimizer

        disable_runtime_optimizer()  # optimised at export; running grappler again would cost ~1 s
        self.max_dim = max_dim
        self.build_s = time.perf_counter() - started

    def detect(self, image: np.ndarray, classes: tuple[int, ...] = ()) -> list[Detection]:
        """Detect instances in an (H, W, 3) uint8 image; `classes` keeps only those class ids."""
        molded = mold(image, self.max_dim)
        try:
            detections, masks = self._infer(molded.images, molded.metas)
        except Exception as exc:
            raise ModelError(f"Inference failed ({type(exc).__name__}: {str(exc)[:160]}).") from exc
        return unmold(
            np.asarray(detections[0]),
            np.asarray(masks[0]),
            image.shape[:2],
            molded.images.shape[1:3],
            molded.window,
            classes,
        )


__all__ = [
    "DIGESTS_FILE",
    "GRAPH_FORMAT",
    "KEY_FILE",
    "GraphModel",
    "cache_root",
    "entry_dir",
    "export",
    "graph_key",
    "lookup",
    "weights_sha256",
]
