"""Preparing one image for the network ("molding"), in numpy and Pillow: the same arithmetic as matterport's
`MaskRCNN.mold_inputs` for the COCO inference configuration (square mode), without importing mrcnn,
Keras or scikit-image, so that the cached-graph path needs none of them.

The resize is Pillow's bilinear filter (matterport's uses scikit-image's order-1 resize; the difference is
interpolation only: same scale, window, padding and image meta). It must never import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

#: matterport's Config.MEAN_PIXEL (RGB)
MEAN_PIXEL = np.array([123.7, 116.8, 103.9], dtype=np.float32)
META_SIZE = 1 + 3 + 3 + 4 + 1 + 81  # image id, original shape, molded shape, window, scale, active classes


@dataclass(frozen=True)
class Molded:
    """The network's inputs for one image (batch of one)."""

    images: np.ndarray  # (1, max_dim, max_dim, 3) float32, mean pixel subtracted
    metas: np.ndarray  # (1, META_SIZE) float32
    window: np.ndarray  # (4,) int: y1, x1, y2, x2 of the image inside the padded square


def min_dim_for(max_dim: int) -> int:
    """IMAGE_MIN_DIM of the worker's COCO configuration."""
    return min(800, max_dim)


def mold(image: np.ndarray, max_dim: int) -> Molded:
    """Scale an (H, W, 3) uint8 image as mrcnn's square mode does, pad it to max_dim², subtract the mean."""
    height, width = image.shape[:2]
    scale = max(1.0, min_dim_for(max_dim) / min(height, width))
    if round(max(height, width) * scale) > max_dim:
        scale = max_dim / max(height, width)
    if scale != 1:
        size = (round(width * scale), round(height * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    h, w = image.shape[:2]
    top, left = (max_dim - h) // 2, (max_dim - w) // 2
    square = np.zeros((max_dim, max_dim, 3), dtype=np.float32)
    square[...] = -MEAN_PIXEL
    square[top : top + h, left : left + w] = image.astype(np.float32) - MEAN_PIXEL
    window = np.array([top, left, top + h, left + w])
    meta = np.zeros((1, META_SIZE), dtype=np.float32)
    meta[0, :12] = [0, height, width, 3, max_dim, max_dim, 3, *window, scale]
    return Molded(images=square[np.newaxis], metas=meta, window=window)


@dataclass(frozen=True)
class Detection:
    """One detected instance; `mask` covers only the box (y1:y2, x1:x2) of the image."""

    class_id: int
    score: float
    box: tuple[int, int, int, int]  # y1, x1, y2, x2 in image pixels, y2/x2 exclusive
    mask: np.ndarray = field(repr=False)  # (y2-y1, x2-x1) bool

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())


def unmold(
    detections: np.ndarray,
    masks: np.ndarray,
    image_hw: tuple[int, int],
    molded_hw: tuple[int, int],
    window: np.ndarray,
    classes: tuple[int, ...] = (),
) -> list[Detection]:
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
        result.append(
            Detection(
                class_id=class_id,
                score=float(detections[i, 5]),
                box=(int(by1), int(bx1), int(by2), int(bx2)),
                mask=crop,
            )
        )
    return result


__all__ = ["MEAN_PIXEL", "META_SIZE", "Detection", "Molded", "min_dim_for", "mold", "unmold"]
