"""Mask R-CNN (matterport `mrcnn` 0.2 on TF 2.21 through `worker.compat`): COCO configuration, building
the inference model, loading weights by layer name, and detection with compact per-box masks.

This module imports TensorFlow: import it only after the input has been checked. It must never run in a
process that uses Keras 3 (the compat aliasing is process-wide) and never download weights.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from worker import compat
from worker.coco import NUM_CLASSES
from worker.errors import ModelError, WeightsError
from worker.molding import META_SIZE, Detection, mold, unmold

compat.install()

from mrcnn import config as mrcnn_config  # noqa: E402 - needs compat.install() first
from mrcnn import model as modellib  # noqa: E402 - needs compat.install() first


def coco_config(backbone: str = "resnet101", max_dim: int = 1024, min_confidence: float = 0.7) -> Any:
    """matterport's COCO inference configuration, for one image at a time."""

    class CocoInference(mrcnn_config.Config):  # type: ignore[misc, name-defined]  # mrcnn ships no types
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

    def __init__(
        self,
        backbone: str = "resnet101",
        max_dim: int = 1024,
        min_confidence: float = 0.7,
        model_dir: str = "/tmp/segbot-mrcnn",
    ) -> None:
        self.config = coco_config(backbone, max_dim, min_confidence)
        started = time.perf_counter()
        try:
            self.mrcnn = modellib.MaskRCNN(mode="inference", config=self.config, model_dir=model_dir)
        except Exception as exc:
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
        molded = mold(image, self.config.IMAGE_MAX_DIM)
        shape = molded.images.shape[1:]
        if shape not in self._anchors:
            self._anchors[shape] = self.mrcnn.get_anchors(shape)[np.newaxis]
        try:
            # predict_on_batch runs one traced tf.function; calling the model eagerly is ~5x slower
            # (mrcnn's per-image loops run op by op)
            detections, masks = self._net.predict_on_batch([molded.images, molded.metas, self._anchors[shape]])
        except Exception as exc:
            raise ModelError(f"Inference failed ({type(exc).__name__}: {str(exc)[:160]}).") from exc
        return unmold(
            np.asarray(detections[0]), np.asarray(masks[0]), image.shape[:2], shape[:2], molded.window, classes
        )

    def export_graph(self, path: str, precision: str = "fp32") -> None:
        """Save the inference graph (fixed input size, anchors baked in, weights as variables, already
        optimised by grappler for `precision`) as a SavedModel at `path`, for `worker.graph.GraphModel`."""
        import tensorflow as tf

        from worker.graphopt import optimize_function

        dim = self.config.IMAGE_MAX_DIM
        anchors = self.mrcnn.get_anchors((dim, dim, 3))[np.newaxis].astype(np.float32)
        front, mask_head = self._detections_then_masks()
        signature = [
            tf.TensorSpec([1, dim, dim, 3], tf.float32, name="images"),
            tf.TensorSpec([1, META_SIZE], tf.float32, name="metas"),
        ]

        @tf.function(input_signature=signature)
        def traced(images: Any, metas: Any) -> Any:
            detections, *pyramid = front([images, metas, tf.constant(anchors)], training=False)
            # the detections come first, zero padding after them: the mask head runs on those only (at
            # least one row, so that no layer sees an empty batch); the padding's masks were never used
            found = tf.reduce_sum(tf.cast(detections[0, :, 4] > 0, tf.int32))
            boxes = detections[:, : tf.maximum(found, 1), :4]
            return detections, mask_head(boxes, metas, pyramid)

        module = tf.Module()
        # only variables are tracked: no per-layer functions to restore
        module.infer, module.weights = optimize_function(
            traced.get_concrete_function(), list(self._net.variables), signature, precision
        )
        # no signature and no saver ops: each would be one more copy of the graph to rebuild at load time
        tf.saved_model.save(
            module, path, signatures={}, options=tf.saved_model.SaveOptions(experimental_skip_saver=True)
        )

    def _detections_then_masks(self) -> tuple[Any, Any]:
        """(front, mask_head): matterport's inference model split where the mask head starts.

        `front([images, metas, anchors])` gives the detections (1, DETECTION_MAX_INSTANCES, 6) and the
        feature pyramid P2-P5; `mask_head(boxes, metas, pyramid)` runs mrcnn's mask branch (its own layers
        and weights, in its order: ROI align, 4 x conv + frozen batch norm + ReLU, deconvolution, sigmoid
        1x1 conv) on (1, n, 4) boxes for any n. mrcnn's own model runs that branch on all 100 detection
        slots, padding included: about 0.5 GMAC per slot, a sixth of the work at 1024 px when a photo has
        a few instances.
        """
        import tensorflow as tf
        import tf_keras

        km = self.keras_model
        pyramid = [km.get_layer(f"fpn_p{level}").output for level in (2, 3, 4, 5)]
        front = tf_keras.Model(km.inputs, [km.outputs[0], *pyramid])
        layer = km.get_layer

        def mask_head(boxes: Any, metas: Any, features: list[Any]) -> Any:
            x = layer("roi_align_mask")([boxes, metas, *features])
            for n in (1, 2, 3, 4):
                x = layer(f"mrcnn_mask_conv{n}")(x)
                x = tf.nn.relu(layer(f"mrcnn_mask_bn{n}")(x, training=False))
            return layer("mrcnn_mask")(layer("mrcnn_mask_deconv")(x))

        return front, mask_head


__all__ = ["Detection", "SegmentationModel", "coco_config", "unmold"]
