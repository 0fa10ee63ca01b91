"""Image checks: decide with Pillow whether an input is an image the worker can segment, and clean it.

What it is for: `check_image(data, limits)` runs before any money moves. It accepts a small allow-list of
formats, reads the pixel count from the header BEFORE decoding anything (decompression bombs), decodes the
first frame fully (truncated files are refused), applies the EXIF orientation, converts every colour mode
to 8-bit RGB and re-encodes the result (JPEG q=92, or PNG for small lossless inputs). The worker therefore
receives a clean, metadata-free file: no EXIF (no GPS position), no comments, no colour profile (converted to
sRGB first when the file carries one).

Limits: the bot's defaults are at least as strict as the worker's (`worker/limits.py`; a test compares them,
the bot does not import the worker). The accepted input formats are a subset of the worker's, and the file
sent on is JPEG or PNG, both of which the worker accepts.

What it must never do: let Pillow try a format outside the allow-list (no EPS, no PSD, ...), decode an image
before its size was checked, change Pillow's process-wide settings, or pass the input's metadata on.
"""
from __future__ import annotations

import asyncio
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.intake import InputRejected

log = logging.getLogger(__name__)

#: defaults, at most the worker's MAX_IMAGE_BYTES / MAX_IMAGE_PIXELS (tests/test_images.py checks it)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000
#: Pillow format names accepted as input (MPO, the multi-picture JPEG of cameras, is read as JPEG)
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
#: formats of the cleaned file handed to the worker
OUTPUT_FORMATS = frozenset({"JPEG", "PNG"})
JPEG_QUALITY = 92
#: lossless inputs up to this many pixels are passed on as PNG, larger ones as JPEG
PNG_MAX_PIXELS = 4_000_000

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"


class ImageRejected(InputRejected):
    """The bytes are not an image the bot accepts; str(exc) is a message for the user."""


@dataclass(frozen=True)
class ImageLimits:
    """What the bot accepts as input. `ImageLimits()` holds the built-in defaults."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = ACCEPTED_FORMATS

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("image limits must be positive")
        unknown = set(self.formats) - ACCEPTED_FORMATS
        if unknown:
            raise ValueError(f"formats outside the allow-list: {', '.join(sorted(unknown))}")

    @classmethod
    def coerce(cls, limits: Any = None) -> ImageLimits:
        """`limits` itself, the defaults for None, or the limits read (duck-typed) from a settings object."""
        if isinstance(limits, cls):
            return limits
        if limits is None:
            return cls()
        return cls(
            max_bytes=getattr(limits, "max_image_bytes", None) or DEFAULT_MAX_BYTES,
            max_pixels=getattr(limits, "max_image_pixels", None) or DEFAULT_MAX_PIXELS,
        )


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before anything is decoded."""

    format: str
    width: int
    height: int
    frames: int


@dataclass(frozen=True)
class CheckedImage:
    """A clean image ready to publish: `data` is a re-encoded, metadata-free `format` file of `mime` type."""

    data: bytes
    format: str
    width: int
    height: int
    mime: str
    source_format: str


def identify(data: bytes, limits: Any = None) -> ImageInfo:
    """Format, size and frame count from the header only. Raises ImageRejected (empty, too big, not an
    accepted image, too many pixels)."""
    limits = ImageLimits.coerce(limits)
    with _open(data, limits) as im:
        return ImageInfo(_format_of(im), im.width, im.height, int(getattr(im, "n_frames", 1) or 1))


def check_image(data: bytes, limits: Any = None) -> CheckedImage:
    """Check `data` and return the cleaned image (first frame, upright, RGB, re-encoded, no metadata).

    `limits` is an ImageLimits, a settings object (`max_image_bytes`, `max_image_pixels`) or None for the
    defaults. Raises ImageRejected with a message for the user.
    """
    limits = ImageLimits.coerce(limits)
    with _open(data, limits) as im:
        source_format = _format_of(im)
        try:
            im.seek(0)
            im.load()  # the whole first frame: a truncated file fails here
            upright = ImageOps.exif_transpose(im)
            rgb = _to_rgb(upright if upright is not None else im)
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError):
            raise ImageRejected(
                f"That {_display(source_format)} file is damaged or incomplete. Please send it again."
            ) from None
    payload, out_format = _encode(rgb, source_format, limits)
    log.info(
        "image checked source=%s format=%s size=%dx%d bytes=%d",
        source_format, out_format, rgb.width, rgb.height, len(payload),
    )
    return CheckedImage(payload, out_format, rgb.width, rgb.height, _MIME[out_format], source_format)


async def check_image_async(data: bytes, limits: Any = None) -> CheckedImage:
    """`check_image` in a worker thread: decoding a 12-megapixel photo takes about half a second of CPU,
    which must not stall the bot's event loop."""
    return await asyncio.to_thread(check_image, data, limits)


# --- opening -----------------------------------------------------------------------------------------------


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise ImageRejected("That file is empty. Please send a photo.")
    if len(data) > limits.max_bytes:
        raise _too_large_bytes(limits)
    plugins = sorted({"JPEG" if f == "MPO" else f for f in limits.formats})
    try:
        with warnings.catch_warnings():
            # our own pixel limit below is stricter than Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=plugins)
    except Image.DecompressionBombError:
        raise _too_many_pixels(limits) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError):
        raise _not_an_image(data) from None
    if _format_of(im) not in limits.formats:
        im.close()
        raise _not_an_image(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise _not_an_image(data)
    if width * height > limits.max_pixels:
        im.close()
        raise _too_many_pixels(limits, width, height)
    return im


def _format_of(im: Image.Image) -> str:
    return "JPEG" if im.format == "MPO" else str(im.format)


def _display(fmt: str) -> str:
    return {"WEBP": "WebP"}.get(fmt, fmt)


def _too_large_bytes(limits: ImageLimits) -> ImageRejected:
    return ImageRejected(
        f"That image is too large: the limit is {limits.max_bytes // (1024 * 1024)} MB. Send a smaller one."
    )


def _too_many_pixels(limits: ImageLimits, width: int = 0, height: int = 0) -> ImageRejected:
    size = f" ({width}x{height})" if width and height else ""
    return ImageRejected(
        f"That image has too many pixels{size}: the limit is {limits.max_pixels // 1_000_000} megapixels. "
        "Send a smaller one."
    )


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "Photoshop"),
    (b"\x1f\x8b", "gzip archive"),
    (b"RIFF", "RIFF audio/video"),
)


def _sniff(data: bytes) -> str | None:
    """A name for a known non-accepted file type, for the user's message."""
    head = data[:1024]
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heif", b"hevc"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "video"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "web page"
    if text.startswith(b"<"):
        return "XML/HTML text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text"


_ACCEPTED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")


def _not_an_image(data: bytes) -> ImageRejected:
    if data.startswith(_ACCEPTED_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return ImageRejected("That image file is damaged or incomplete. Please send it again.")
    kind = _sniff(data)
    what = f" ({kind})" if kind else ""
    return ImageRejected(
        f"That file is not an image I can read{what}. Please send a photo in {_FORMAT_NAMES} format."
    )


# --- conversion and encoding -------------------------------------------------------------------------------


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB, transparent areas on white, wide colour profiles converted to sRGB, info dropped."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        rgb = Image.fromarray(_to_8bit(np.asarray(im)), "L").convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = im.convert("RGB")
    rgb = _to_srgb(rgb, im.info.get("icc_profile"))
    rgb.info = {}
    return rgb


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit or float image scaled to 0..255 (not clipped, as Pillow would)."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        scaled = arr / top * 255.0 if top > 0 else arr
        return np.clip(scaled, 0, 255).astype(np.uint8)
    wide = arr.astype(np.int64)
    if wide.size and int(wide.max()) > 255:
        return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(wide, 0, 255).astype(np.uint8)


def _to_srgb(rgb: Image.Image, icc: bytes | None) -> Image.Image:
    if not icc:
        return rgb
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(rgb, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken profile only costs colour accuracy
        return rgb
    return converted if converted is not None else rgb


def _encode(rgb: Image.Image, source_format: str, limits: ImageLimits) -> tuple[bytes, str]:
    """PNG for small lossless inputs, else JPEG q=92 (q=80 when needed to fit the byte limit)."""
    attempts: list[tuple[str, dict[str, Any]]] = []
    if source_format in ("PNG", "GIF", "BMP") and rgb.width * rgb.height <= PNG_MAX_PIXELS:
        attempts.append(("PNG", {"compress_level": 6}))
    attempts += [("JPEG", {"quality": JPEG_QUALITY}), ("JPEG", {"quality": 80})]
    for fmt, options in attempts:
        buf = io.BytesIO()
        rgb.save(buf, format=fmt, **options)
        if buf.tell() <= limits.max_bytes:
            return buf.getvalue(), fmt
    raise _too_large_bytes(limits)
