"""COCO-style run-length encoding of binary masks (uncompressed RLE: {"size": [H, W], "counts": [...]},
column-major, counts alternate zeros and ones starting with zeros), computed from a mask that covers only
its box so that encoding never builds a full-size image per instance.

Pure numpy; must never import TensorFlow.
"""

from __future__ import annotations

import numpy as np


def encode_box_mask(mask: np.ndarray, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> dict:
    """RLE of a full (H, W) mask that is `mask` inside `box` (y1, x1, y2, x2) and zero elsewhere."""
    height, width = image_hw
    y1, x1, _, _ = box
    h, w = mask.shape
    padded = np.zeros((h + 2, w), dtype=np.int8)
    padded[1:-1] = mask
    flat = padded.T.ravel()  # column-major, each column separated by zero padding
    change = np.flatnonzero(np.diff(flat))
    if change.size == 0:
        return {"size": [int(height), int(width)], "counts": [int(height * width)]}
    col, row = np.divmod(change + 1, h + 2)
    linear = (x1 + col) * height + (y1 + row - 1)  # position in the full image, column-major
    starts, ends = linear[0::2], linear[1::2]
    # a run reaching the bottom of a column continues at the top of the next one in the full image
    keep = np.ones(starts.size, dtype=bool)
    keep[1:] = starts[1:] != ends[:-1]
    starts = starts[keep]
    ends = ends[np.append(keep[1:], True)]
    bounds = np.empty(starts.size * 2 + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if counts[-1] == 0:  # the mask reaches the last pixel: COCO ends on the ones run
        counts.pop()
    return {"size": [int(height), int(width)], "counts": counts}


def encode(mask: np.ndarray) -> dict:
    """RLE of a full (H, W) boolean mask."""
    return encode_box_mask(mask, (0, 0, mask.shape[0], mask.shape[1]), mask.shape)


def decode(rle: dict) -> np.ndarray:
    """The (H, W) boolean mask of an RLE dict."""
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for count in rle["counts"]:
        if value:
            flat[pos : pos + count] = True
        pos += count
        value = not value
    return flat.reshape(width, height).T
