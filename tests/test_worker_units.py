"""Worker parts without TensorFlow: image normalisation, options, COCO RLE, drawing, downloads and
fetch-weights against a 127.0.0.1 server."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker import DownloadError, InputError, OptionError, limits, rle
from worker.draw import draw, paint_masks
from worker.fetch import download_image, fetch_weights
from worker.images import load_image_bytes
from worker.options import parse_task


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_become_rgb() -> None:
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # red in CMYK
    assert tuple(load_image_bytes(_encode(cmyk, "JPEG")).pixels[5, 5]) == pytest.approx((255, 0, 0), abs=8)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))  # fully transparent -> white background
    assert tuple(load_image_bytes(_encode(rgba, "PNG")).pixels[0, 0]) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16))
    loaded = load_image_bytes(_encode(grey16, "PNG"))
    assert loaded.pixels.shape == (6, 6, 3) and loaded.pixels.dtype == np.uint8 and loaded.pixels.max() == 255


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    loaded = load_image_bytes(_encode(img, "JPEG", exif=exif))
    assert loaded.pixels.shape == (40, 20, 3) and loaded.source_size == (40, 20)


def test_animation_keeps_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(load_image_bytes(data).pixels[0, 0]) == (255, 0, 0)


def test_large_image_scaled_to_output_limit_and_other_formats_refused() -> None:
    big = load_image_bytes(_encode(Image.new("RGB", (4096, 1024)), "PNG"))
    assert big.pixels.shape == (512, 2048, 3)
    with pytest.raises(InputError, match="ICO format"):
        load_image_bytes(_encode(Image.new("RGB", (16, 16)), "ICO"))
    with pytest.raises(InputError, match="20 MB"):
        load_image_bytes(b"\xff" * (limits.MAX_IMAGE_BYTES + 1))


def test_options_words() -> None:
    opts = parse_task(
        [
            "--max-dim",
            "512",
            "--min-confidence",
            "0.5",
            "--format",
            "JPEG",
            "--classes",
            "person,traffic_light,Dog",
            "--backbone",
            "resnet50",
            "https://example.org/a.jpg",
        ]
    )
    assert (opts.max_dim, opts.min_confidence, opts.fmt, opts.backbone) == (512, 0.5, "jpeg", "resnet50")
    assert opts.classes == (1, 10, 17) and opts.url == "https://example.org/a.jpg"
    assert parse_task(["segment", "x.png", "--out", "d"]).image == "x.png"
    with pytest.raises(OptionError, match="once"):
        parse_task(["--url", "http://a/b.jpg", "http://a/c.jpg"])


def test_rle_matches_full_mask_encoding() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        height, width = rng.integers(1, 25, 2)
        y1, y2 = sorted(rng.integers(0, height + 1, 2))
        x1, x2 = sorted(rng.integers(0, width + 1, 2))
        crop = rng.random((y2 - y1, x2 - x1)) < rng.random()
        full = np.zeros((height, width), bool)
        full[y1:y2, x1:x2] = crop
        encoded = rle.encode_box_mask(crop, (y1, x1, y2, x2), (height, width))
        assert encoded == rle.encode(full)
        assert sum(encoded["counts"]) == height * width
        assert np.array_equal(rle.decode(encoded), full)
    assert rle.encode(np.array([[0, 1], [1, 1]], bool))["counts"] == [1, 3]


@dataclass(frozen=True)
class _Inst:
    class_id: int
    score: float
    box: tuple[int, int, int, int]
    mask: np.ndarray


def test_paint_changes_masked_pixels_only() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:25] = True
    inst = _Inst(1, 0.9, (10, 20, 30, 50), mask)
    out = paint_masks(pixels, [inst], [(255, 0, 0)], line=1)
    full = np.zeros((60, 80), bool)
    full[10:30, 20:50] = mask
    assert np.array_equal(out[~full], pixels[~full])
    assert (out[full] != pixels[full]).any(axis=-1).mean() > 0.95
    assert (out[15, 25] == (255, 0, 0)).all()  # outline pixel in full colour


@pytest.mark.parametrize("size", [(64, 48), (2048, 1536)])
def test_draw_boxes_labels_and_stamp(size: tuple[int, int]) -> None:
    width, height = size
    pixels = np.full((height, width, 3), 128, np.uint8)
    box = (height // 4, width // 4, height // 2, width // 2)
    inst = _Inst(17, 0.87, box, np.ones((box[2] - box[0], box[3] - box[1]), bool))
    plain = np.asarray(draw(pixels, [inst], ["BG"] + ["x"] * 16 + ["dog"], random_weights=False))
    stamped = np.asarray(draw(pixels, [inst], ["BG"] + ["x"] * 16 + ["dog"], random_weights=True))
    assert plain.shape == pixels.shape
    assert (plain[: box[0] - 1, width * 3 // 4 :] == 128).all()  # far from the box: untouched
    changed = (stamped != plain).any(axis=-1)
    assert changed[height // 2 :].any()  # the RANDOM WEIGHTS stamp is at the bottom
    assert (plain[box[0] : box[2], box[1] : box[3]] != 128).any()


def test_download_limits(local_http) -> None:
    local_http.routes["/ok.png"] = (200, {"Content-Type": "image/png"}, b"x" * 1000)
    assert download_image(f"{local_http.base}/ok.png") == b"x" * 1000
    with pytest.raises(DownloadError, match="larger than"):
        download_image(f"{local_http.base}/ok.png", max_bytes=999)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_image(f"{local_http.base}/nope")
    with pytest.raises(DownloadError, match="user name or password"):
        download_image("http://user:pw@127.0.0.1:1/a.jpg")


def test_fetch_weights_progress_sha256_atomic(tmp_path: Path, local_http, capsys: pytest.CaptureFixture) -> None:
    body = bytes(range(256)) * 12_000  # about 3 MB
    local_http.routes["/w.h5"] = (200, {"Content-Type": "application/octet-stream"}, body)
    dest = tmp_path / "cache" / "mask_rcnn_coco.h5"
    good = hashlib.sha256(body).hexdigest()
    with pytest.raises(DownloadError, match="sha256"):
        fetch_weights(f"{local_http.base}/w.h5", str(dest), "00" * 32, progress=sys.stderr)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-written left
    assert fetch_weights(f"{local_http.base}/w.h5", str(dest), good, progress=sys.stderr) == str(dest)
    assert dest.read_bytes() == body
    err = capsys.readouterr().err
    assert "100%" in err and "#" * 30 in err and good in err
    local_http.routes.clear()  # present already: no second download
    fetch_weights(f"{local_http.base}/w.h5", str(dest), good, progress=sys.stderr)
    assert "already present" in capsys.readouterr().err


def test_precision_auto_follows_the_cpu(tmp_path) -> None:
    from worker import precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    )
    flags = precision.cpu_flags(str(cpuinfo))
    assert "amx_bf16" in flags and "avx2" in flags
    assert precision.resolve("auto", flags) == "bf16"
    assert precision.resolve("auto", {"avx512_bf16"}) == "bf16"  # Cooper Lake, Zen 4: no AMX, native bf16
    assert precision.resolve("auto", {"avx2", "avx512f"}) == "fp32"  # bf16 would be emulated there
    assert precision.resolve("auto", precision.cpu_flags(str(tmp_path / "absent"))) == "fp32"
    assert precision.resolve("bf16", set()) == "bf16" and precision.resolve("fp32", {"amx_bf16"}) == "fp32"
    with pytest.raises(ValueError):
        precision.resolve("fp16", set())


def test_precision_option() -> None:
    from worker.errors import OptionError
    from worker.options import parse_task

    assert parse_task(["--precision", "BF16", "x.jpg"]).precision == "bf16"
    assert parse_task(["x.jpg"]).precision == "auto"
    with pytest.raises(OptionError, match="precision"):
        parse_task(["--precision", "fp16", "x.jpg"])


def test_weights_digest_is_remembered_until_the_file_changes(tmp_path) -> None:
    import hashlib
    import os

    from worker import graph

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"a" * 1000)
    root = tmp_path / "cache"
    assert graph.weights_sha256(str(weights), str(root)) == hashlib.sha256(b"a" * 1000).hexdigest()
    memo = root / graph.DIGESTS_FILE
    assert memo.exists()
    # a remembered digest is used as long as size and mtime match (proved by a planted value)
    doc = json.loads(memo.read_text())
    doc[str(weights.resolve())]["sha256"] = "f" * 64
    memo.write_text(json.dumps(doc))
    assert graph.weights_sha256(str(weights), str(root)) == "f" * 64
    # another file put in its place, same size and same mtime (cp -p, tar): the samples tell, it is hashed again
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert graph.weights_sha256(str(weights), str(root)) == hashlib.sha256(b"b" * 1000).hexdigest()
    # an unreadable memo or read-only cache only means hashing again
    memo.write_text("{not json")
    assert graph.weights_sha256(str(weights), str(root)) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert graph.weights_sha256(str(weights), "/proc/no-such-dir") == hashlib.sha256(b"b" * 1000).hexdigest()
