"""Test and demo helpers: writing a random-weights file in matterport's layer naming.

`make_weights` builds the model in the calling process (it imports TensorFlow and aliases keras to
tf_keras there): call it in a worker process or a subprocess (`python -m worker make-test-weights PATH`).
The file is stamped as random so that every output made with it says so. Never ship such a file.
"""

from __future__ import annotations

import os


def make_weights(path: str, backbone: str = "resnet50", max_dim: int = 256, seed: int = 0) -> str:
    """Write random Mask R-CNN COCO weights for `backbone` to `path` (atomically); returns the path.

    The weights do not depend on max_dim (the model is fully convolutional up to the fixed-size heads),
    so a small one keeps the build quick.
    """
    import h5py

    from worker import compat

    compat.install()
    import tensorflow as tf

    from worker.model import SegmentationModel
    from worker.weights import RANDOM_STAMP_ATTR

    tf.random.set_seed(seed)
    net = SegmentationModel(backbone, max_dim)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.h5"
    net.keras_model.save_weights(tmp)
    with h5py.File(tmp, "a") as fh:
        fh.attrs[RANDOM_STAMP_ATTR] = True
    os.replace(tmp, path)
    return path
