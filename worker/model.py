"""Mask R-CNN (matterport `mrcnn` 0.2 on TF 2.21 through `worker.compat`): COCO configuration, building
the inference model, loading weights by layer name, and detection with compact per-box masks.

This module imports TensorFlow: import it only after the input has been checked. It must never run in a
process that uses Keras 3 (the compat aliasing is process-wide) and never download weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker import compat
from worker.coco import NUM_CLASSES
from worker.errors import ModelError, WeightsError

compat.install()

from mrcnn import config as mrcnn_config  # noqa: E402  (needs compat.install() first)
from mrcnn import model as modellib  # noqa: E402
from PIL import Image  # noqa: E402


@dataclass(frozen=True)
class Detection:
    """One detected instance; `mask` covers only the box (y1:y2, x1:x2) of the image."""

    class_id: int
    score: float
    box: tuple[int, int, int, int]    # y1, x1, y2, x2 in image pixels, y2/x2 exclusive
    mask: np.ndarray = field(repr=False)  # (y2-y1, x2-x1) bool

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())


def coco_config(backbone: str = "resnet101", max_dim: int = 1024, min_confidence: float = 0.7) -> Any:
    """matterport's COCO inference configuration, for one image at a time."""

    class CocoInference(mrcnn_config.Config):  # type: ignore[misc, name-defined]
        NAME = "coco"
        NUM_CLASSES = 81
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        BACKBONE = backbone
        IMAGE_MAX_DIM = max_dim
        IMAGE_MIN_DIM = min(800, max_dim)
        DETECTION_MIN_CONFIDENCE = min_confidence

    assert CocoInference.NUM_CLASSES == NUM_CLASSES
    return CocoInference()


class SegmentationModel:
    """A built inference model, ready for `detect`. Build once per process (2-3 s)."""

    def __init__(self, backbone: str = "resnet101", max_dim: int = 1024, min_confidence: float = 0.7,
                 model_dir: str = "/tmp/segbot-mrcnn") -> None:
        self.config = coco_config(backbone, max_dim, min_confidence)
        started = time.perf_counter()
        try:
            self.mrcnn = modellib.MaskRCNN(mode="inference", config=self.config, model_dir=model_dir)
        except Exception as exc:  # noqa: BLE001 - report in words, the traceback is in the log
            raise ModelError(f"The Mask R-CNN model could not be built ({type(exc).__name__}: {exc}).") from exc
        km = self.mrcnn.keras_model
        # only the two outputs post-processing uses: avoids copying the others out of the graph
        import tf_keras
        self._net = tf_keras.Model(km.inputs, [km.outputs[0], km.outputs[3]])
        self.build_s = time.perf_counter() - started
        self._anchors: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def keras_model(self) -> Any:
        return self.mrcnn.keras_model

    def weighted_layer_names(self) -> list[str]:
        """Names of the layers that carry weights (what a weights file must provide)."""
        return [layer.name for layer in self.keras_model.layers if layer.weights]

    def load_weights(self, path: str) -> int:
        """Load a weights file by layer name; returns the number of weighted layers restored.

        Raises WeightsError when the file does not fit this model.
        """
        try:
            self.keras_model.load_weights(path, by_name=True)
        except (ValueError, OSError, KeyError) as exc:
            raise WeightsError(f"The weights file does not fit the model ({str(exc)[:160]}).") from None
        import h5py
        with h5py.File(path, "r") as fh:
            group = fh["model_weights"] if "layer_names" not in fh.attrs and "model_weights" in fh else fh
            in_file = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]}
        wanted = self.weighted_layer_names()
        missing = [n for n in wanted if n not in in_file]
        if missing:
            raise WeightsError(f"The weights file lacks {len(missing)} layers of the model (e.g. {missing[0]}).")
        return len(wanted)

    def detect(self, image: np.ndarray, classes: tuple[int, ...] = ()) -> list[Detection]:
        """Detect instances in an (H, W, 3) uint8 image; `classes` keeps only those class ids."""
        molded, metas, windows = self.mrcnn.mold_inputs([image])
        shape = molded[0].shape
        if shape not in self._anchors:
            self._anchors[shape] = self.mrcnn.get_anchors(shape)[np.newaxis]
        try:
            # predict_on_batch runs one traced tf.function; calling the model eagerly is ~5x slower
            # (mrcnn's per-image loops run op by op)
            detections, masks = self._net.predict_on_batch([molded, metas, self._anchors[shape]])
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"Inference failed ({type(exc).__name__}: {str(exc)[:160]}).") from exc
        return unmold(np.asarray(detections[0]), np.asarray(masks[0]), image.shape[:2], shape[:2],
                      windows[0], classes)


def unmold(detections: np.ndarray, masks: np.ndarray, image_hw: tuple[int, int], molded_hw: tuple[int, int],
           window: np.ndarray, classes: tuple[int, ...] = ()) -> list[Detection]:
    """Network output -> Detections in image pixels, each mask resized into its box only.

    Same arithmetic as mrcnn's `unmold_detections`, without building one full-size mask per instance
    (100 masks of a 2048 px image would be 400 MB of booleans).
    """
    count = int(np.argmax(detections[:, 4] == 0)) if (detections[:, 4] == 0).any() else len(detections)
    height, width = image_hw
    mh, mw = molded_hw[0] - 1, molded_hw[1] - 1
    wy1, wx1, wy2, wx2 = np.asarray(window, dtype=np.float64)
    wy1, wx1, wy2, wx2 = wy1 / mh, wx1 / mw, (wy2 - 1) / mh, (wx2 - 1) / mw  # mrcnn's norm_boxes
    result = []
    for i in range(count):
        class_id = int(detections[i, 4])
        if classes and class_id not in classes:
            continue
        y1, x1, y2, x2 = detections[i, :4]
        ny = (np.array([y1, y2]) - wy1) / (wy2 - wy1)
        nx = (np.array([x1, x2]) - wx1) / (wx2 - wx1)
        by1, by2 = np.around(ny * (height - 1) + [0, 1]).astype(int)
        bx1, bx2 = np.around(nx * (width - 1) + [0, 1]).astype(int)
        by1, bx1 = max(by1, 0), max(bx1, 0)
        by2, bx2 = min(by2, height), min(bx2, width)
        if by2 <= by1 or bx2 <= bx1:
            continue
        small = Image.fromarray(np.ascontiguousarray(masks[i, :, :, class_id], dtype=np.float32), mode="F")
        crop = np.asarray(small.resize((bx2 - bx1, by2 - by1), Image.Resampling.BILINEAR)) >= 0.5
        result.append(Detection(class_id=class_id, score=float(detections[i, 5]),
                                box=(int(by1), int(bx1), int(by2), int(bx2)), mask=crop))
    return result
