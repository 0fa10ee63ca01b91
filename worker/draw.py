"""Drawing the segmentation: translucent coloured masks, outlines, boxes and "label score" tags, with a
"RANDOM WEIGHTS" stamp when the weights are random. Pillow and numpy only, work limited to each box.

Sizes (line width, font) scale with the image so that the drawing is legible from 100 px to 2048 px.
It must never change a pixel outside the masks, outlines, boxes, tags and stamp.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_ALPHA = 0.45


class Instance(Protocol):
    """What drawing needs of a detection (worker.molding.Detection, a frozen dataclass, fits: read only)."""

    @property
    def class_id(self) -> int: ...

    @property
    def score(self) -> float: ...

    @property
    def box(self) -> tuple[int, int, int, int]: ...

    @property
    def mask(self) -> np.ndarray: ...


def instance_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated colours (hues spread by the golden ratio)."""
    colours = []
    for i in range(count):
        hue = (0.07 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95 if i % 2 == 0 else 0.8)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border (mask minus its erosion)."""
    eroded = mask.copy()
    for _ in range(width):
        inner = np.zeros_like(eroded)
        inner[1:-1, 1:-1] = (
            eroded[1:-1, 1:-1] & eroded[:-2, 1:-1] & eroded[2:, 1:-1] & eroded[1:-1, :-2] & eroded[1:-1, 2:]
        )
        eroded = inner
    return mask & ~eroded


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def paint_masks(
    pixels: np.ndarray, instances: Sequence[Instance], colours: Sequence[tuple[int, int, int]], line: int
) -> np.ndarray:
    """A copy of `pixels` with each mask blended in its colour and outlined; other pixels unchanged."""
    out = pixels.astype(np.float32)
    for inst, colour in zip(instances, colours, strict=True):
        y1, x1, y2, x2 = inst.box
        region = out[y1:y2, x1:x2]
        mask = inst.mask
        rgb = np.asarray(colour, dtype=np.float32)
        region[mask] = region[mask] * (1.0 - MASK_ALPHA) + rgb * MASK_ALPHA
        region[_outline(mask, line)] = rgb
    return np.rint(out).astype(np.uint8)


def draw(
    pixels: np.ndarray, instances: Sequence[Instance], class_names: Sequence[str], random_weights: bool = False
) -> Image.Image:
    """The segmented image: masks, outlines, boxes, labels with scores, and the random-weights stamp."""
    height, width = pixels.shape[:2]
    scale = max(height, width)
    line = max(1, round(scale / 500))
    colours = instance_colours(len(instances))
    image = Image.fromarray(paint_masks(pixels, instances, colours, line))
    canvas = ImageDraw.Draw(image)
    font = _font(max(10, round(scale / 45)))
    for inst, colour in zip(instances, colours, strict=True):
        y1, x1, y2, x2 = inst.box
        canvas.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=line)
    for inst, colour in zip(instances, colours, strict=True):  # tags last, so boxes never cross them
        _tag(canvas, font, inst, colour, class_names, (width, height))
    if random_weights:
        _stamp(canvas, (width, height))
    return image


def _tag(
    canvas: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    inst: Instance,
    colour: tuple[int, int, int],
    class_names: Sequence[str],
    size: tuple[int, int],
) -> None:
    y1, x1, _, _ = inst.box
    name = class_names[inst.class_id] if 0 <= inst.class_id < len(class_names) else str(inst.class_id)
    text = f"{name} {inst.score:.2f}"
    left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    tx = min(max(x1, 0), max(size[0] - tw, 0))
    ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
    canvas.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    canvas.text((tx + pad - left, ty + pad - top), text, font=font, fill=ink)


def _stamp(canvas: ImageDraw.ImageDraw, size: tuple[int, int]) -> None:
    text = "RANDOM WEIGHTS"
    font = _font(max(12, round(min(size) / 14)))
    left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 4)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = max((size[0] - tw) // 2, 0), max(size[1] - th - 2 * pad, 0)
    canvas.rectangle((x, y, x + tw, y + th), fill=(200, 0, 0))
    canvas.text((x + pad - left, y + pad - top), text, font=font, fill=(255, 255, 255))
