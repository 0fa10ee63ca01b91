"""Command-line and `iexec_args` parsing for the worker. The same words work in both places.

Parsing must stay cheap (no TensorFlow, no Pillow) and must never exit the process by itself: every
problem is an `OptionError` with a message the requester can act on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from worker import limits
from worker.coco import CLASS_NAMES, class_id
from worker.errors import OptionError
from worker.precision import CHOICES as PRECISIONS

COMMANDS = ("segment", "fetch-weights", "make-test-weights", "build-graph")


@dataclass(frozen=True)
class TaskOptions:
    """What one segmentation run should do."""

    image: str | None = None  # local path (segment) or None
    url: str | None = None  # image URL (iExec mode)
    out: str | None = None  # output directory (segment mode)
    max_dim: int = limits.DEFAULT_MAX_DIM
    min_confidence: float = limits.DEFAULT_MIN_CONFIDENCE
    fmt: str = "png"
    classes: tuple[int, ...] = ()  # empty: every class
    backbone: str | None = None  # None: the weights file's backbone, else resnet101
    random_weights: bool = False
    weights: str | None = None
    threads: int | None = None
    block_private_urls: bool = False
    graph_cache: bool = True  # use the cached inference graph when there is one
    precision: str = "auto"  # auto | fp32 | bf16 (see worker.precision)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit(2)
        raise OptionError(f"Bad option: {message}. Run `python -m worker --help` for the options.")


def _max_dim(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-dim must be a whole number, not {text!r}") from None
    if not limits.MIN_MAX_DIM <= value <= limits.MAX_MAX_DIM or value % 64:
        raise argparse.ArgumentTypeError(
            f"--max-dim must be a multiple of 64 between {limits.MIN_MAX_DIM} and {limits.MAX_MAX_DIM}"
            f" (e.g. 512 or 1024), not {text}"
        )
    return value


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min-confidence must be a number from 0 to 1, not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--min-confidence must be from 0 to 1, not {text}")
    return value


def _classes(text: str) -> tuple[int, ...]:
    ids = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        cid = class_id(name)
        if cid is None:
            raise argparse.ArgumentTypeError(
                f"unknown class {name!r} in --classes; known classes: {', '.join(CLASS_NAMES[1:])}"
            )
        ids.append(cid)
    if not ids:
        raise argparse.ArgumentTypeError("--classes needs at least one class name, e.g. person,dog")
    return tuple(sorted(set(ids)))


def _threads(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number from 1 to 256, not {text!r}")
    return int(text)


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-dim",
        type=_max_dim,
        default=limits.DEFAULT_MAX_DIM,
        help="longest side the network sees, multiple of 64 (default 1024; 512 is faster)",
    )
    p.add_argument(
        "--min-confidence",
        type=_confidence,
        default=limits.DEFAULT_MIN_CONFIDENCE,
        help="drop detections scored below this, 0 to 1 (default 0.7)",
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=limits.OUTPUT_FORMATS,
        type=str.lower,
        default="png",
        help="result image format (default png)",
    )
    p.add_argument("--classes", type=_classes, default=(), help="keep only these COCO classes, e.g. person,dog")
    p.add_argument(
        "--backbone",
        choices=limits.BACKBONES,
        type=str.lower,
        default=None,
        help="network backbone (default: the weights file's, else resnet101)",
    )
    p.add_argument(
        "--random-weights", action="store_true", help="use random weights (tests and demos only; stamped on the output)"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="Mask R-CNN COCO weights .h5 (else $MRCNN_WEIGHTS, the iExec dataset, then the fetch-weights cache)",
    )
    p.add_argument("--threads", type=_threads, default=None, help="TensorFlow threads (default: one per core)")
    p.add_argument(
        "--block-private-urls", action="store_true", help="refuse image URLs that resolve to loopback/private addresses"
    )
    p.add_argument(
        "--no-graph-cache",
        dest="graph_cache",
        action="store_false",
        help="build the Keras model even when a cached inference graph exists",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        type=str.lower,
        default="auto",
        help="arithmetic: bf16 is about 3x faster where the CPU has it natively (AMX/AVX512-BF16), "
        "fp32 is exact; auto (default) takes bf16 only on such CPUs",
    )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (also used for --help)."""
    p = _Parser(
        prog="python -m worker",
        description=(
            "Mask R-CNN (COCO) segmentation as an iExec app. With IEXEC_OUT set, the arguments are the task's "
            "iexec_args: the input is the task's input file (several: an album, one result each), or an image URL "
            "(--url URL or a bare URL)."
        ),
        epilog="commands: segment IMAGE [--out DIR] | fetch-weights [--url U] [--sha256 H] [--dest F] | "
        "make-test-weights PATH [--backbone B] | build-graph [--weights F] [--max-dim N ...]",
    )
    p.add_argument("--url", default=None, help="image URL to download (iExec mode)")
    p.add_argument("source", nargs="?", default=None, help="an image URL or a local image path")
    _add_task_options(p)
    return p


def _segment_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m worker segment", description="Segment one local image.")
    p.add_argument("image", help="path of the image")
    p.add_argument("--out", default=None, help="output directory (default: ./<image name>_segmented)")
    _add_task_options(p)
    return p


def fetch_weights_parser() -> argparse.ArgumentParser:
    """Parser of `python -m worker fetch-weights`."""
    p = _Parser(prog="python -m worker fetch-weights", description="Download the COCO weights into the cache.")
    p.add_argument("--url", default=None, help="where to download from (default: matterport's release)")
    p.add_argument("--sha256", default=None, help="expected sha256 of the file (hex)")
    p.add_argument("--dest", default=None, help="destination file (default: the cache)")
    p.add_argument("--force", action="store_true", help="download even if the file is present")
    return p


def make_weights_parser() -> argparse.ArgumentParser:
    """Parser of `python -m worker make-test-weights`."""
    p = _Parser(
        prog="python -m worker make-test-weights",
        description="Write a random-weights file in matterport's layer naming (stamped as random).",
    )
    p.add_argument("path")
    p.add_argument("--backbone", choices=limits.BACKBONES, type=str.lower, default="resnet50")
    return p


def build_graph_parser() -> argparse.ArgumentParser:
    """Parser of `python -m worker build-graph` (export the inference graph into the cache)."""
    p = _Parser(
        prog="python -m worker build-graph",
        description="Build the model once and cache its inference graph, so that tasks start faster.",
    )
    p.add_argument("--weights", default=None, help="weights file (default: found as a task finds it)")
    p.add_argument("--backbone", choices=limits.BACKBONES, type=str.lower, default=None)
    p.add_argument("--max-dim", type=_max_dim, nargs="+", default=[limits.DEFAULT_MAX_DIM])
    p.add_argument("--min-confidence", type=_confidence, default=limits.DEFAULT_MIN_CONFIDENCE)
    p.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $SEGBOT_GRAPH_CACHE or $SEGBOT_CACHE/graphs)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        type=str.lower,
        nargs="+",
        default=["auto"],
        help="one entry per precision (default: auto, this CPU's choice); a Docker image whose "
        "workers are unknown bakes both: --precision fp32 bf16",
    )
    return p


def _is_url(text: str | None) -> bool:
    return text is not None and text.lower().startswith(("http://", "https://"))


def parse_task(argv: Sequence[str]) -> TaskOptions:
    """Parse `segment ...` or iExec-mode arguments into TaskOptions. Raises OptionError."""
    segment = bool(argv) and argv[0] == "segment"
    ns = (_segment_parser() if segment else build_parser()).parse_args(list(argv[1:] if segment else argv))
    url = getattr(ns, "url", None)
    image = getattr(ns, "image", None)
    source = getattr(ns, "source", None)
    if source is not None:
        if url is not None:
            raise OptionError("Give the image once: either --url URL or a bare URL/path, not both.")
        if _is_url(source):
            url = source
        elif "://" in source:
            raise OptionError(f"Only http:// and https:// image URLs are accepted, not {source.split(':')[0]}://")
        else:
            image = source
    if url is not None and not _is_url(url):
        raise OptionError("Only http:// and https:// image URLs are accepted.")
    return TaskOptions(
        image=image,
        url=url,
        out=getattr(ns, "out", None),
        max_dim=ns.max_dim,
        min_confidence=ns.min_confidence,
        fmt=ns.fmt,
        classes=ns.classes,
        backbone=ns.backbone,
        random_weights=ns.random_weights,
        weights=ns.weights,
        threads=ns.threads,
        block_private_urls=ns.block_private_urls,
        graph_cache=ns.graph_cache,
        precision=ns.precision,
    )
