"""Compatibility layer that lets matterport's `mrcnn` 0.2, unmodified, build and run inference on
tensorflow-cpu 2.21 with tf-keras 2.21.

`install()` must run before `mrcnn.model` is imported. It makes `keras` resolve to `tf_keras` in this
process (`sys.modules`), provides a stand-in `keras.engine` whose `Layer` sets static output shapes from
`compute_output_shape()` as Keras 2.0.8 did, and puts back the TF 1.x names mrcnn calls. The aliasing is
process-wide: only call it in the worker's own process, never in a process that uses Keras 3.
It must never edit files on disk.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

_installed = False


def _set_static_shapes(outputs: Any, shapes: Any) -> None:
    """Give symbolic outputs the static shape Keras 2.0.8 would have taken from compute_output_shape."""
    if isinstance(outputs, (list, tuple)):
        if not isinstance(shapes, list) or len(shapes) != len(outputs):
            return
        for out, shape in zip(outputs, shapes, strict=True):
            _set_static_shapes(out, shape)
        return
    if hasattr(outputs, "set_shape") and shapes is not None:
        with contextlib.suppress(ValueError, TypeError):  # the traced shape is more precise: keep it
            outputs.set_shape(tuple(shapes))


def _make_engine(tf_keras: Any) -> types.ModuleType:
    """A stand-in for the `keras.engine` module that mrcnn's custom layers subclass."""
    import tensorflow as tf

    class Layer(tf_keras.layers.Layer):  # type: ignore[misc, name-defined]  # tf_keras ships no types
        """tf_keras Layer that, in functional construction, trusts compute_output_shape()."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            outputs = super().__call__(*args, **kwargs)
            if tf.executing_eagerly() and not _is_symbolic(outputs):
                return outputs
            inputs = args[0] if args else kwargs.get("inputs")
            try:
                in_shapes = tf.nest.map_structure(lambda t: tuple(t.shape), inputs)
                declared = self.compute_output_shape(in_shapes)
            except Exception:  # noqa: BLE001 - no declared shape: keep the traced one
                return outputs
            _set_static_shapes(outputs, _as_list(declared))
            return outputs

    engine = types.ModuleType("keras.engine")
    engine.Layer = Layer  # type: ignore[attr-defined]  # a module built here: its names are set one by one
    engine.InputSpec = tf_keras.layers.InputSpec  # type: ignore[attr-defined]  # as engine.Layer
    return engine


def _is_symbolic(outputs: Any) -> bool:
    first = outputs[0] if isinstance(outputs, (list, tuple)) and outputs else outputs
    return type(first).__name__ == "KerasTensor"


def _as_list(shape: Any) -> Any:
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        return [tuple(s) for s in shape]
    if isinstance(shape, list) and shape and hasattr(shape[0], "as_list"):
        return [tuple(s.as_list()) for s in shape]
    if hasattr(shape, "as_list"):
        return tuple(shape.as_list())
    return shape


def _patch_tf(tf: Any) -> None:
    """Put back the TensorFlow 1.x names mrcnn 0.2 calls."""
    tf.log = tf.math.log
    tf.to_float = lambda x, name="ToFloat": tf.cast(x, tf.float32, name=name)
    tf.random_shuffle = tf.random.shuffle
    tf.sparse_tensor_to_dense = tf.sparse.to_dense
    tf.sets.set_intersection = tf.sets.intersection


def _patch_distutils() -> None:
    """distutils is gone in Python 3.12: give mrcnn a LooseVersion that compares release numbers."""
    try:
        import distutils.version  # noqa: F401 - only whether it imports matters

        return
    except ImportError:
        pass

    class LooseVersion:
        def __init__(self, text: str) -> None:
            self.parts = tuple(int(p) if p.isdigit() else 0 for p in text.split(".")[:3])

        def __ge__(self, other: LooseVersion) -> bool:
            return self.parts >= other.parts

    pkg = types.ModuleType("distutils")
    version = types.ModuleType("distutils.version")
    version.LooseVersion = LooseVersion  # type: ignore[attr-defined]  # a module built here, as in _make_engine
    pkg.version = version  # type: ignore[attr-defined]  # a module built here, as in _make_engine
    sys.modules.setdefault("distutils", pkg)
    sys.modules.setdefault("distutils.version", version)


def install(threads: int | None = None) -> None:
    """Alias keras -> tf_keras in this process and patch TF so that `import mrcnn.model` works.

    threads: TF intra-op thread count (None keeps TF's default, one per core).
    """
    global _installed
    if _installed:
        return
    from worker.tfsetup import import_tensorflow

    tf = import_tensorflow(threads)  # quiet; also silences mrcnn's TF1-era deprecation warnings
    import tf_keras

    _patch_tf(tf)
    _patch_distutils()
    utils_mod = types.ModuleType("keras.utils.data_utils")
    utils_mod.get_file = tf_keras.utils.get_file  # type: ignore[attr-defined]  # a module built here
    sys.modules["keras"] = tf_keras
    sys.modules["keras.backend"] = tf_keras.backend
    sys.modules["keras.layers"] = tf_keras.layers
    sys.modules["keras.models"] = tf_keras.models
    sys.modules["keras.utils"] = tf_keras.utils
    sys.modules["keras.utils.data_utils"] = utils_mod
    engine = _make_engine(tf_keras)
    sys.modules["keras.engine"] = engine
    tf_keras.engine = engine
    _installed = True
