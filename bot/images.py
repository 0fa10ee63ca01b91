"""Image checks: decide with Pillow whether an input is an image the worker can segment, and clean it.

What it is for: `check_image(data, limits)` runs before any money moves. It accepts a small allow-list of
formats, reads the pixel count from the header BEFORE decoding anything (decompression bombs), decodes the
first frame fully (truncated files are refused), applies the EXIF orientation, converts every colour mode
to 8-bit RGB and re-encodes the result (JPEG q=92, or PNG for small lossless inputs). The worker therefore
receives a clean, metadata-free file: no EXIF (no GPS position), no comments, no colour profile (converted to
sRGB first when the file carries one).

Limits: the bot's defaults are at least as strict as the worker's (`worker/limits.py`; a test compares them,
the bot does not import the worker). The accepted input formats are a subset of the worker's, and the file
sent on is JPEG or PNG, both of which the worker accepts. At intake (`ImageLimits.intake()`, or
`ImageLimits.from_settings(settings)`) a picture must also be deliverable and worth a task: at most 20:1
(Telegram refuses longer photos with PHOTO_INVALID_DIMENSIONS) and at least 32 pixels on its short side; both
are judged from the header, before anything is decoded, so such a picture costs nothing.

Threads: everything here is synchronous CPU work (a 12-megapixel decode is about half a second). Async code
calls it through `check_image_async` / `identify_async`, which run it on a small pool of its own
(`IMAGE_WORKERS` threads: bounded CPU and memory however many pictures arrive at once), never on the event
loop. Frame counting is bounded too: a hostile GIF of a million empty frames is walked for at most
`MAX_FRAMES_COUNTED` frames and `MAX_GIF_BLOCKS` data blocks (Pillow's own `n_frames` walks all of it).

What it must never do: let Pillow try a format outside the allow-list (no EPS, no PSD, ...), decode an image
before its size was checked, change Pillow's process-wide settings, or pass the input's metadata on.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import ImageRejected
from bot.settings import Settings

log = logging.getLogger(__name__)

#: defaults, at most the worker's MAX_IMAGE_BYTES / MAX_IMAGE_PIXELS (tests/test_images.py checks it)
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000
#: intake defaults: Telegram refuses photos longer than 20:1; fewer than 32 pixels on a side is not a picture
#: worth a task (settings MAX_IMAGE_ASPECT / MIN_IMAGE_SIDE)
DEFAULT_MAX_ASPECT = 20.0
DEFAULT_MIN_SIDE = 32
#: frame counting stops here (the count is then "at least this many"); the bot only uses the first frame
MAX_FRAMES_COUNTED = 1000
#: and after walking this many GIF data blocks (about 20 ms of Python), whatever the frame count
MAX_GIF_BLOCKS = 100_000
#: threads that check images: at most this many pictures are decoded at once
IMAGE_WORKERS = 2
#: Pillow format names accepted as input (MPO, the multi-picture JPEG of cameras, is read as JPEG)
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
#: formats of the cleaned file handed to the worker
OUTPUT_FORMATS = frozenset({"JPEG", "PNG"})
JPEG_QUALITY = 92
#: lossless inputs up to this many pixels are passed on as PNG, larger ones as JPEG
PNG_MAX_PIXELS = 4_000_000

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"


@dataclass(frozen=True)
class ImageLimits:
    """What the bot accepts. `ImageLimits()` checks bytes, pixels and format only (e.g. a result);
    `ImageLimits.intake()` adds the intake's shape rules (aspect ratio, short side)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = ACCEPTED_FORMATS
    #: longest side / shortest side at most this (0: not checked)
    max_aspect: float = 0.0
    #: shortest side at least this many pixels
    min_side: int = 1

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("image limits must be positive")
        if self.min_side < 1 or (self.max_aspect and self.max_aspect < 1):
            raise ValueError("min_side must be at least 1 and max_aspect at least 1 (or 0: unchecked)")
        unknown = set(self.formats) - ACCEPTED_FORMATS
        if unknown:
            raise ValueError(f"formats outside the allow-list: {', '.join(sorted(unknown))}")

    @classmethod
    def intake(cls, **overrides: Any) -> ImageLimits:
        """The defaults for a user's picture: deliverable (at most 20:1) and not tiny."""
        values: dict[str, Any] = {"max_aspect": DEFAULT_MAX_ASPECT, "min_side": DEFAULT_MIN_SIDE}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The intake limits of the settings (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_ASPECT,
        MIN_IMAGE_SIDE; their defaults are `intake()`'s)."""
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_aspect=settings.max_image_aspect,
            min_side=settings.min_image_side,
        )

    @classmethod
    def coerce(cls, limits: ImageLimits | Settings | None = None) -> ImageLimits:
        """`limits` itself, the intake defaults for None, or the intake limits of the settings."""
        if isinstance(limits, ImageLimits):
            return limits
        if limits is None:
            return cls.intake()
        return cls.from_settings(limits)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before anything is decoded. `frames` is counted up to MAX_FRAMES_COUNTED
    (a GIF's blocks are walked at most MAX_GIF_BLOCKS far: the count is then the frames seen so far)."""

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


def identify(data: bytes, limits: ImageLimits | Settings | None = None) -> ImageInfo:
    """Format, size and frame count from the header only. Raises ImageRejected (empty, too big, not an
    accepted image, too many pixels)."""
    limits = ImageLimits.coerce(limits)
    with _open(data, limits) as im:
        fmt = _format_of(im)
        if fmt == "GIF":
            frames = _count_gif_frames(data)
        else:  # JPEG/BMP: one; PNG (acTL) and WebP (ANIM) declare the count in a header chunk
            frames = min(int(getattr(im, "n_frames", 1) or 1), MAX_FRAMES_COUNTED)
        return ImageInfo(fmt, im.width, im.height, max(frames, 1))


async def identify_async(data: bytes, limits: ImageLimits | Settings | None = None) -> ImageInfo:
    """`identify` on the image threads (never on the event loop)."""
    return await _in_thread(identify, data, limits)


def check_image(data: bytes, limits: ImageLimits | Settings | None = None) -> CheckedImage:
    """Check `data` and return the cleaned image (first frame, upright, RGB, re-encoded, no metadata).

    `limits` is an ImageLimits, the bot's Settings (`ImageLimits.from_settings`) or None for the
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
    log.debug(  # the caller logs it with its job id
        "event=image_checked source=%s format=%s size=%dx%d bytes=%d",
        source_format,
        out_format,
        rgb.width,
        rgb.height,
        len(payload),
    )
    return CheckedImage(payload, out_format, rgb.width, rgb.height, _MIME[out_format], source_format)


async def check_image_async(data: bytes, limits: ImageLimits | Settings | None = None) -> CheckedImage:
    """`check_image` on the image threads: decoding a 12-megapixel photo takes about half a second of CPU,
    which must not stall the bot's event loop. At most IMAGE_WORKERS pictures are decoded at once; the
    others wait their turn without blocking anything."""
    return await _in_thread(check_image, data, limits)


_executor: ThreadPoolExecutor | None = None


async def _in_thread(func: Any, *args: Any) -> Any:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="image-check")
    return await asyncio.get_running_loop().run_in_executor(_executor, func, *args)


# --- opening -----------------------------------------------------------------------------------------------


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise ImageRejected("That file is empty. Please send a photo.")
    if len(data) > limits.max_bytes:
        raise _too_large_bytes(limits)
    plugins = sorted({"JPEG" if f == "MPO" else f for f in limits.formats})
    if data.startswith((b"GIF87a", b"GIF89a")) and "GIF" in limits.formats:
        _check_gif_blocks(data)
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
    shape = _shape_refusal(im, limits)
    if shape is not None:
        im.close()
        raise shape
    return im


def _shape_refusal(im: Image.Image, limits: ImageLimits) -> ImageRejected | None:
    """A picture too long and thin to send back, or too small to be worth a task (header size only)."""
    width, height = im.size
    if _format_of(im) == "JPEG" and _exif_orientation(im) in (5, 6, 7, 8):
        width, height = height, width  # say it as the person sees it
    long_side, short_side = max(width, height), min(width, height)
    if short_side < limits.min_side:
        return ImageRejected(
            f"This picture is {width}×{height}: too small to find anything in "
            f"(at least {limits.min_side} pixels on each side). Send a bigger one."
        )
    if limits.max_aspect and long_side > limits.max_aspect * short_side:
        shape = "too wide and short" if width > height else "too tall and narrow"
        return ImageRejected(
            f"This picture is {width}×{height}: {shape} to send back (at most {limits.max_aspect:g}:1). "
            "Crop it and send it again."
        )
    return None


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)  # a JPEG's EXIF is parsed with its header
    except Exception:  # noqa: BLE001 - a broken EXIF block only costs the order of width and height
        return 1


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
    return ImageRejected(f"That file is not an image I can read{what}. Please send a photo in {_FORMAT_NAMES} format.")


# --- frame counting ----------------------------------------------------------------------------------------


def _count_gif_frames(data: bytes) -> int:
    """Image descriptors in a GIF, walking its blocks without decoding anything; stops at
    MAX_FRAMES_COUNTED frames or MAX_GIF_BLOCKS data blocks (or at the first malformed block)."""
    return max(_walk_gif(data, MAX_FRAMES_COUNTED)[0], 1)


def _walk_gif(data: bytes, max_frames: int) -> tuple[int, bool]:
    """(frames seen, whether the MAX_GIF_BLOCKS budget ran out) walking at most `max_frames` frames."""
    size = len(data)
    pos = 13  # header (6) and logical screen descriptor (7)
    if size < pos:
        return 0, False
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 0x07) + 1)  # the global colour table
    frames = blocks = 0
    while pos < size and frames < max_frames:
        kind = data[pos]
        if kind == 0x2C:  # image descriptor
            if pos + 10 > size:
                break
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 << ((flags & 0x07) + 1)  # a local colour table
            pos += 1  # LZW minimum code size
            frames += 1
        elif kind == 0x21:  # extension: label, then data blocks
            pos += 2
        else:  # 0x3B trailer, or garbage: what was counted stands
            break
        while pos < size and blocks < MAX_GIF_BLOCKS:  # data sub-blocks, ended by an empty one
            length = data[pos]
            pos += 1 + length
            blocks += 1
            if length == 0:
                break
        if blocks >= MAX_GIF_BLOCKS:
            return frames, True
    return frames, False


def _check_gif_blocks(data: bytes) -> None:
    """Refuse a GIF whose first picture comes after more than MAX_GIF_BLOCKS blocks: Pillow walks them all
    in Python when it opens the file (seconds for a few megabytes of empty extensions)."""
    frames, exhausted = _walk_gif(data, 1)
    if exhausted and frames == 0:
        raise ImageRejected(
            "That GIF file is built oddly (a huge number of empty blocks before its picture), so I will "
            "not read it. Send the picture as a JPEG or PNG."
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
