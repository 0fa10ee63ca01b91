"""Importing TensorFlow once, quietly, with the worker's thread settings.

TF 2.21 writes absl/oneDNN info lines straight to file descriptor 2 while it loads, whatever
TF_CPP_MIN_LOG_LEVEL says; they would end up in every task's stderr. `import_tensorflow()` sends fd 2 to a
temporary file during the import and replays only the lines that are not that known noise.
It must never hide a real error line, and is the only place of the worker that imports TensorFlow first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

# lines TF prints at import on every CPU run
_NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)


def _is_noise(line: str) -> bool:
    return not line.strip() or any(part in line for part in _NOISE)


def import_tensorflow(threads: int | None = None) -> Any:
    """`import tensorflow` without its start-up chatter; sets the thread counts (None: one per core)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            if threads:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            tf.constant(0)  # the runtime prints its own info lines on first use
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        kept = [line for line in sink.read().decode(errors="replace").splitlines() if not _is_noise(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    tf.get_logger().setLevel("ERROR")
    return tf


__all__ = ["import_tensorflow"]
