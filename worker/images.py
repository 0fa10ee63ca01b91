"""Checking and normalising the input image with Pillow, before TensorFlow is ever imported.

Accepts only the formats of `limits.ALLOWED_FORMATS`, refuses more than `limits.MAX_IMAGE_PIXELS` pixels
(checked from the header, before decoding), truncated or corrupt files; applies the EXIF orientation, keeps
the first frame of animations, and turns grey, palette, CMYK, alpha and 16-bit images into 8-bit RGB.
It must never decode an image whose header declares too many pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker import limits
from worker.errors import InputError, NotAnImageError

_ACCEPTED = "JPEG, PNG, WEBP, GIF, BMP or TIFF"


@dataclass(frozen=True)
class LoadedImage:
    """An input image ready for the network: RGB uint8 pixels plus what it was."""

    pixels: np.ndarray  # (H, W, 3) uint8
    source_format: str  # Pillow's format name
    source_size: tuple[int, int]  # (width, height) as stored, before orientation and scaling


def load_image_bytes(data: bytes) -> LoadedImage:
    """Check and normalise an image given as bytes. Raises InputError with a message for the requester."""
    if not data:
        raise InputError("The image file is empty.")
    if len(data) > limits.MAX_IMAGE_BYTES:
        raise InputError(
            f"The image is too large ({len(data) // 1_000_000} MB); "
            f"the limit is {limits.MAX_IMAGE_BYTES // 1_000_000} MB."
        )
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")):
        raise InputError(f"This is an SVG/XML/HTML document, not a photo. Send a {_ACCEPTED} image.")
    Image.MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            return _normalise(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(_too_many_pixels_message()) from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"The file is not an image that can be read. Send a {_ACCEPTED} image.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"The image is truncated or corrupt ({_short(exc)}).") from None


def read_input_file(path: str, max_bytes: int = limits.MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an input file, at most `max_bytes` + 1 of them (more means too large). Raises InputError."""
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"The input file {path} does not exist.") from None
    except IsADirectoryError:
        raise InputError(f"The input {path} is a folder, not an image file.") from None
    except OSError as exc:
        raise InputError(f"The input file could not be read ({exc.strerror}).") from None


def _too_many_pixels_message(size: tuple[int, int] | None = None) -> str:
    what = f" ({size[0]}x{size[1]})" if size else ""
    return f"The image has too many pixels{what}; the limit is {limits.MAX_IMAGE_PIXELS // 1_000_000} megapixels."


def _normalise(img: Image.Image) -> LoadedImage:
    fmt = img.format or "?"
    if fmt not in limits.ALLOWED_FORMATS:
        raise InputError(f"Images in {fmt} format are not accepted. Send a {_ACCEPTED} image.")
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError("The image has no pixels.")
    if width * height > limits.MAX_IMAGE_PIXELS:
        raise InputError(_too_many_pixels_message((width, height)))
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if fmt == "JPEG":
        # decode at a reduced scale when the result would be shrunk anyway (much faster for big photos)
        img.draft("RGB", (limits.MAX_OUTPUT_DIM, limits.MAX_OUTPUT_DIM))
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"The image is truncated or corrupt ({_short(exc)}).") from None
    rgb = _to_rgb(img)
    if max(rgb.size) > limits.MAX_OUTPUT_DIM:
        rgb.thumbnail((limits.MAX_OUTPUT_DIM, limits.MAX_OUTPUT_DIM), Image.Resampling.LANCZOS)
    return LoadedImage(pixels=np.asarray(rgb, dtype=np.uint8), source_format=fmt, source_size=(width, height))


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:120]


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparency is composited on white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB") if img.mode != "RGB" else img
