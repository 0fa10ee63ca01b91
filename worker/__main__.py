"""Entry point: `python -m worker [options]` (iExec mode), `python -m worker segment IMAGE [--out DIR]`,
`python -m worker fetch-weights`, `python -m worker make-test-weights PATH`,
`python -m worker build-graph [--max-dim N ...]`.

Must never import TensorFlow for `--help` or for a bad option.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from worker.errors import WorkerError


def _fetch_weights(argv: Sequence[str]) -> int:
    from worker.fetch import WEIGHTS_URL, fetch_weights
    from worker.options import fetch_weights_parser

    ns = fetch_weights_parser().parse_args(list(argv))
    fetch_weights(ns.url or WEIGHTS_URL, ns.dest, ns.sha256, force=ns.force)
    return 0


def _make_test_weights(argv: Sequence[str]) -> int:
    from worker.options import make_weights_parser

    ns = make_weights_parser().parse_args(list(argv))
    from worker.testing import make_weights

    make_weights(ns.path, backbone=ns.backbone)
    print(f"random test weights written: {ns.path} ({ns.backbone})", file=sys.stderr)
    return 0


def _build_graph(argv: Sequence[str]) -> int:
    import os

    from worker.options import build_graph_parser
    from worker.weights import resolve_weights

    ns = build_graph_parser().parse_args(list(argv))
    weights = resolve_weights(ns.weights, ns.backbone, False, os.environ)
    from worker.app import build_graphs

    for folder in build_graphs(weights, ns.max_dim, ns.min_confidence, ns.cache_dir, ns.precision):
        print(f"inference graph cached: {folder}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the command line; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args[:1]) or args == ["help"]:
        from worker.options import build_parser

        build_parser().print_help()
        return 0
    command = args[0] if args else None
    try:
        if command == "fetch-weights":
            return _fetch_weights(args[1:])
        if command == "make-test-weights":
            return _make_test_weights(args[1:])
        if command == "build-graph":
            return _build_graph(args[1:])
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    from worker.app import run_task

    return run_task(args)


def _exit(code: int) -> None:
    """Exit; once TensorFlow is loaded, skip the interpreter's teardown (0.6-0.9 s of freeing the model,
    nothing left to save: every output file is closed and the streams are flushed here)."""
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
