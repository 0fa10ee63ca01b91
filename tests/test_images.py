"""bot.images: every kind of bad input gets a clear message; good ones come out upright, RGB and clean."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bot.errors import ImageRejected, InputRejected
from bot.images import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_FRAMES_COUNTED,
    OUTPUT_FORMATS,
    CheckedImage,
    ImageLimits,
    check_image,
    identify,
)
from bot.settings import Settings
from tests.loop_stalls import loop_stalls


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def noisy(size: tuple[int, int] = (400, 300)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (the pixel data is not there)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def reject(data: bytes, limits: ImageLimits | Settings | None = None) -> str:
    with pytest.raises(ImageRejected) as info:
        check_image(data, limits)
    assert isinstance(info.value, InputRejected)  # the pipeline catches one type for all bad input
    return str(info.value)


# --- refused inputs ----------------------------------------------------------------------------------------


def test_empty_file() -> None:
    assert "empty" in reject(b"")


def test_text_named_jpg() -> None:
    assert "not an image I can read (text)" in reject(b"this is a shopping list, not cat.jpg\n")


def test_truncated_jpeg() -> None:
    data = encode(noisy(), "JPEG", quality=90)
    assert "damaged or incomplete" in reject(data[: len(data) * 6 // 10])


def test_truncated_png() -> None:
    data = encode(noisy(), "PNG")
    assert "damaged or incomplete" in reject(data[: len(data) // 2])


def test_png_header_declaring_100000_by_100000_is_refused_before_decoding() -> None:
    message = reject(png_with_header(100_000, 100_000))
    assert "too many pixels" in message


def test_pixel_limit_is_ours_not_pillows() -> None:
    """5001 x 5001 is under Pillow's own bomb threshold but over our 25 megapixels."""
    assert "too many pixels (5001x5001)" in reject(png_with_header(5001, 5001))
    assert "too many pixels" in reject(encode(noisy((64, 64)), "PNG"), ImageLimits(max_pixels=4000))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's process-wide setting is left alone


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"%PDF-1.7\n1 0 obj <<>> endobj\n", "PDF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"<!DOCTYPE html><html><body>a cat</body></html>", "web page"),
        (b"PK\x03\x04\x14\x00\x00\x00", "ZIP archive"),
    ],
)
def test_other_file_types_are_named(data: bytes, kind: str) -> None:
    message = reject(data)
    assert f"not an image I can read ({kind})" in message
    assert "JPEG, PNG, WebP, GIF or BMP" in message


def test_formats_outside_the_allow_list() -> None:
    assert "(TIFF)" in reject(encode(noisy((32, 32)), "TIFF"))
    assert "not an image I can read" in reject(encode(Image.new("RGB", (8, 8)), "ICO"))


def test_too_many_bytes() -> None:
    data = encode(noisy(), "PNG")
    assert "too large" in reject(data, ImageLimits(max_bytes=len(data) - 1))


def test_settings_give_the_limits() -> None:
    small = Settings(_env_file=None, max_image_bytes=1000, max_image_pixels=10_000_000)
    assert "too large" in reject(encode(noisy(), "PNG"), small)
    assert ImageLimits.from_settings(Settings(_env_file=None)) == ImageLimits.intake()  # the same defaults
    limits = ImageLimits.from_settings(
        Settings(_env_file=None, max_image_bytes=1000, max_image_pixels=2000, max_image_aspect=3, min_image_side=4)
    )
    assert limits == ImageLimits(max_bytes=1000, max_pixels=2000, max_aspect=3.0, min_side=4)
    assert ImageLimits.coerce(limits) is limits and ImageLimits.coerce(None) == ImageLimits.intake()


# --- accepted inputs: what comes out -----------------------------------------------------------------------


def reopen(checked: CheckedImage) -> Image.Image:
    im = Image.open(io.BytesIO(checked.data))
    assert im.format == checked.format and im.mode == "RGB"
    assert (im.width, im.height) == (checked.width, checked.height)
    assert checked.mime == {"JPEG": "image/jpeg", "PNG": "image/png"}[checked.format]
    return im


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_accepted_formats(fmt: str) -> None:
    checked = check_image(encode(noisy((120, 80)), fmt))
    assert checked.source_format == fmt
    assert (checked.width, checked.height) == (120, 80)
    reopen(checked)
    assert identify(encode(noisy((120, 80)), fmt)).format == fmt


def test_animated_gif_becomes_its_first_frame() -> None:
    frames = [Image.new("RGB", (48, 36), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert identify(data).frames == 3
    im = reopen(check_image(data))
    assert im.getpixel((20, 15)) == (255, 0, 0)


def hostile_gif(frames: int, side: int = 64, junk_blocks: int = 0) -> bytes:
    """A GIF of `frames` empty frames (a few bytes each), the first one followed by `junk_blocks` one-byte
    data blocks: megabytes that Pillow's frame count walks block by block."""
    head = b"GIF89a" + struct.pack("<HH", side, side) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"
    descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, side, side) + b"\0"
    frame = descriptor + b"\x02" + b"\x02\x4c\x01" + b"\x00"
    first = descriptor + b"\x02" + b"\x02\x4c\x01" + b"\x01\x00" * junk_blocks + b"\x00"
    return head + first + frame * (frames - 1) + b"\x3b"


@pytest.mark.slow  # over ~2 s
def test_frame_counting_is_bounded_on_hostile_gifs() -> None:
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(1200)]
    real = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert identify(real).frames == MAX_FRAMES_COUNTED  # counting stops: the bot uses the first frame

    many = hostile_gif(500_000)  # 8 MB, half a million frames
    with Image.open(io.BytesIO(many)) as im:
        assert im.n_frames == 500_000  # what Pillow walks, block by block (seconds of CPU)
    assert identify(many).frames == MAX_FRAMES_COUNTED
    blocks = hostile_gif(3, junk_blocks=3_000_000)  # 6 MB of one-byte blocks inside the first frame
    assert 1 <= identify(blocks).frames < 3  # the walk gave up before reaching the other frames


def test_a_gif_flooded_with_blocks_before_its_picture_is_refused() -> None:
    """Pillow walks every block before the first frame in Python when it opens a GIF (seconds for a few
    megabytes of empty comments): such a file is refused by a bounded walk before Pillow sees it."""
    side = 64
    head = b"GIF89a" + struct.pack("<HH", side, side) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, side, side) + b"\0" + b"\x02\x02\x4c\x01\x00"
    flooded = head + b"\x21\xfe\x00" * 3_000_000 + frame + b"\x3b"  # 9 MB of empty comments
    assert "GIF file is built oddly" in reject(flooded)
    commented = head + b"\x21\xfe\x05hello\x00" * 20 + frame + b"\x3b"  # a few comments are fine
    assert identify(commented).frames == 1


# --- pictures that could not be sent back, or are too small to be worth a task ----------------------------


@pytest.mark.parametrize(
    ("width", "height", "shape"),
    [(4000, 150, "too wide and short"), (150, 4000, "too tall and narrow"), (641, 32, "too wide and short")],
)
def test_long_thin_pictures_are_refused_from_the_header(width: int, height: int, shape: str) -> None:
    message = reject(png_with_header(width, height))  # refused before any pixel is decoded
    assert f"This picture is {width}×{height}: {shape} to send back (at most 20:1)" in message
    assert "Crop it" in message


def test_the_aspect_limit_is_the_one_telegram_takes() -> None:
    for size in ((640, 32), (32, 640)):  # exactly 20:1
        checked = check_image(encode(noisy(size), "PNG"))
        assert (checked.width, checked.height) == size


@pytest.mark.parametrize(("width", "height"), [(1, 1), (31, 400), (400, 31), (16, 16)])
def test_tiny_pictures_are_refused(width: int, height: int) -> None:
    message = reject(encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG"))
    assert f"This picture is {width}×{height}: too small" in message
    assert "at least 32 pixels" in message


def test_the_shape_is_said_as_the_person_sees_it() -> None:
    stored = Image.new("RGB", (2100, 100), (0, 0, 255))  # stored wide, EXIF says: turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    message = reject(encode(stored, "JPEG", exif=exif.tobytes()))
    assert "This picture is 100×2100: too tall and narrow" in message


def test_shape_limits_come_from_the_settings() -> None:
    strict = Settings(_env_file=None, min_image_side=64, max_image_aspect=4)
    assert "at least 64 pixels" in reject(encode(noisy((48, 48)), "PNG"), strict)
    assert "(at most 4:1)" in reject(encode(noisy((300, 64)), "PNG"), strict)
    assert check_image(encode(noisy((256, 64)), "PNG"), strict).width == 256
    with pytest.raises(ValueError):
        Settings(_env_file=None, max_image_aspect=25)  # Telegram would refuse what the bot accepted


def test_a_result_check_judges_no_shape() -> None:
    """`ImageLimits()` (the result check) leaves the shape to the sender: a worker's rounding must not
    refund a delivered task."""
    checked = check_image(encode(noisy((2048, 101)), "PNG"), ImageLimits())
    assert (checked.width, checked.height) == (2048, 101)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (50, 50), (0, 255, 255, 0))  # pure red ink
    checked = check_image(encode(cmyk, "JPEG", quality=95))
    r, g, b = reopen(checked).getpixel((25, 25))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    im = reopen(check_image(data))
    mid = im.getpixel((128, 8))
    assert 110 < mid[0] < 145 and mid[0] == mid[1] == mid[2]  # 0x8080 -> ~128, not clipped to 255


def test_transparent_png_lands_on_white() -> None:
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 15, 40))
    im = reopen(check_image(encode(rgba, "PNG")))
    assert im.getpixel((25, 15)) == (255, 255, 255)
    assert im.getpixel((5, 15)) == (200, 0, 0)


def test_palette_and_grey_become_rgb() -> None:
    assert reopen(check_image(encode(noisy((64, 64)).convert("P"), "PNG"))).mode == "RGB"
    assert reopen(check_image(encode(noisy((64, 64)).convert("L"), "JPEG"))).mode == "RGB"
    assert reopen(check_image(encode(noisy((64, 64)).convert("1"), "BMP"))).mode == "RGB"


def exif_rotated_jpeg() -> bytes:
    """A 60x40 landscape JPEG whose EXIF says 'rotate 90 clockwise to view', with a GPS position."""
    im = Image.new("RGB", (60, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 10))  # a red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    exif[0x010F] = "SpyCam"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_applied_and_metadata_stripped() -> None:
    data = exif_rotated_jpeg()
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    checked = check_image(data)
    im = reopen(checked)
    assert (im.width, im.height) == (40, 60)  # upright: portrait
    r, _g, b = im.getpixel((35, 5))  # the stored top-left corner is now top-right
    assert r > 200 and b < 60
    assert len(im.getexif()) == 0 and "exif" not in im.info and "icc_profile" not in im.info
    assert b"SpyCam" not in checked.data and b"Exif" not in checked.data


def test_large_lossless_input_goes_out_as_jpeg_small_as_png() -> None:
    assert check_image(encode(noisy((100, 100)), "PNG")).format == "PNG"
    assert check_image(encode(noisy((100, 100)), "JPEG")).format == "JPEG"
    ramp = np.tile(np.linspace(0, 255, 2100).astype(np.uint8), (2000, 1))
    big = check_image(encode(Image.fromarray(ramp).convert("RGB"), "PNG"))  # 4.2 megapixels
    assert big.format == "JPEG" and (big.width, big.height) == (2100, 2000)


# --- limits against the worker's ---------------------------------------------------------------------------


def test_bot_limits_are_at_least_as_strict_as_the_workers() -> None:
    worker_limits = pytest.importorskip("worker.limits")
    assert DEFAULT_MAX_BYTES <= worker_limits.MAX_IMAGE_BYTES
    assert DEFAULT_MAX_PIXELS <= worker_limits.MAX_IMAGE_PIXELS
    assert set(worker_limits.ALLOWED_FORMATS) >= ACCEPTED_FORMATS
    assert set(worker_limits.ALLOWED_FORMATS) >= OUTPUT_FORMATS
    settings_mod = pytest.importorskip("bot.settings")
    defaults = settings_mod.Settings(_env_file=None)
    assert defaults.max_image_bytes <= worker_limits.MAX_IMAGE_BYTES
    assert defaults.max_image_pixels <= worker_limits.MAX_IMAGE_PIXELS
    assert defaults.url_max_redirects <= worker_limits.URL_MAX_REDIRECTS


async def test_async_variant_runs_the_same_checks() -> None:
    from bot.images import check_image_async

    checked = await check_image_async(encode(noisy((64, 48)), "JPEG"))
    assert (checked.width, checked.height, checked.format) == (64, 48, "JPEG")
    with pytest.raises(ImageRejected, match="empty"):
        await check_image_async(b"")
    with pytest.raises(ImageRejected, match="1×1"):
        await check_image_async(encode(Image.new("RGB", (1, 1)), "PNG"))


async def test_image_work_never_stalls_the_event_loop() -> None:
    """Several big photos and hostile GIFs checked at once: a ticking coroutine keeps ticking (the loop's
    longest stall stays far below what one decode takes)."""
    import asyncio

    from bot.images import check_image_async, identify_async

    photo = encode(noisy((3000, 3000)), "JPEG", quality=90)  # 9 megapixels
    gif = hostile_gif(500_000)
    started = time.perf_counter()
    check_image(photo)  # what one decode holds its thread for, on this machine under its present load
    one_decode_s = time.perf_counter() - started
    async with loop_stalls() as stalls:
        results = await asyncio.gather(
            *(check_image_async(photo) for _ in range(3)), *(identify_async(gif) for _ in range(3))
        )
    assert [r.width for r in results[:3]] == [3000] * 3
    assert [r.frames for r in results[3:]] == [MAX_FRAMES_COUNTED] * 3
    # a decode on the loop would stall it for a whole decode: the bound is half of one, measured just above
    assert len(stalls) > 3 and max(stalls) < one_decode_s / 2, (max(stalls), one_decode_s)


def test_help_names_exactly_the_formats_intake_accepts() -> None:
    """/help promises what intake takes: a format listed there and refused (TIFF once was) costs a user a try."""
    import re

    from bot import texts
    from bot.images import ACCEPTED_FORMATS

    listed = re.search(r"an image file \(([^;)]*)", texts.HELP)
    assert listed is not None
    assert {f.strip() for f in listed.group(1).split(",")} == set(ACCEPTED_FORMATS)
