"""Bad input to the iExec app: each case ends with only computed.json holding a clear error-message, a
non-zero exit, a one-line message on stderr, and TensorFlow never imported (what makes a refusal cheap; the
subprocess timeout is the hang guard, no elapsed time is asserted)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.fixtures_worker import iexec_env

INPUT = "5e1c0e4c2a0b6a7b1f3f3a2d0e0c1b9a8f7e6d5c4b3a29180716253443526170"  # sha256(url) style name


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _assert_failed(run, *words: str) -> None:
    assert run.code != 0
    assert run.files == {"computed.json"}, run.files
    message = run.computed()["error-message"]
    for word in words:
        assert word.lower() in message.lower(), message
    assert "deterministic-output-path" not in run.computed()
    assert "Traceback" not in run.stderr
    assert f"error: {message}" in run.stderr
    assert not run.imported_tensorflow


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["empty"]),
        (b"hello, this is not a photo\n" * 10, ["not an image"]),
        (_jpeg()[:300], ["truncated or corrupt"]),
        (_png_declaring(100_000, 100_000), ["too many pixels", "40 megapixels"]),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', ["SVG"]),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>', ["SVG"]),
    ],
    ids=["empty", "text-as-jpg", "truncated-jpeg", "png-100000x100000", "svg-xml", "svg"],
)
def test_bad_input_file(tmp_path: Path, run_worker, content: bytes, words: list[str]) -> None:
    env = iexec_env(tmp_path, INPUT)
    (tmp_path / "iexec_in" / INPUT).write_bytes(content)
    _assert_failed(run_worker(["--random-weights"], env), *words)


def test_no_input_at_all(tmp_path: Path, run_worker) -> None:
    _assert_failed(run_worker(["--random-weights"], iexec_env(tmp_path)), "no input image")


def test_declared_input_file_missing(tmp_path: Path, run_worker) -> None:
    _assert_failed(run_worker(["--random-weights"], iexec_env(tmp_path, INPUT)), "does not exist")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-dim", "100"], ["--max-dim", "multiple of 64"]),
        (["--max-dim", "big"], ["--max-dim", "whole number"]),
        (["--min-confidence", "1.5"], ["--min-confidence", "0 to 1"]),
        (["--format", "gif"], ["--format"]),
        (["--classes", "person,unicorn"], ["unknown class", "unicorn"]),
        (["--backbone", "vgg16"], ["--backbone"]),
        (["--frobnicate"], ["unrecognized", "--frobnicate"]),
        (["ftp://example.org/x.jpg"], ["http://"]),
    ],
)
def test_bad_option(tmp_path: Path, run_worker, args: list[str], words: list[str]) -> None:
    env = iexec_env(tmp_path, INPUT)
    (tmp_path / "iexec_in" / INPUT).write_bytes(_jpeg())
    _assert_failed(run_worker([*args, "--random-weights"], env), *words)


def test_url_404(tmp_path: Path, run_worker, local_http) -> None:
    _assert_failed(run_worker(["--random-weights", f"{local_http.base}/missing.jpg"], iexec_env(tmp_path)), "HTTP 404")


def test_url_200_mb_declared(tmp_path: Path, run_worker, local_http) -> None:
    def stream(wfile) -> None:
        for _ in range(200):
            wfile.write(b"\0" * 1_000_000)

    local_http.routes["/big.jpg"] = (200, {"Content-Length": str(200_000_000), "Content-Type": "image/jpeg"}, stream)
    _assert_failed(
        run_worker(["--random-weights", "--url", f"{local_http.base}/big.jpg"], iexec_env(tmp_path)),
        "larger than 20 MB",
    )


def test_url_200_mb_undeclared(tmp_path: Path, run_worker, local_http) -> None:
    sent = [0]  # MB the server wrote before the worker hung up

    def stream(wfile) -> None:
        for _ in range(200):
            wfile.write(b"\xff" * 1_000_000)
            sent[0] += 1

    local_http.routes["/big.jpg"] = (200, {"Content-Type": "image/jpeg", "Connection": "close"}, stream)
    _assert_failed(
        run_worker(["--random-weights", f"{local_http.base}/big.jpg"], iexec_env(tmp_path)),
        "larger than 20 MB",
    )
    assert sent[0] < 100, sent  # it stopped reading past the limit (20 MB + socket buffers), not at the end


def test_url_redirect_to_other_scheme_refused(tmp_path: Path, run_worker, local_http) -> None:
    local_http.routes["/r.jpg"] = (302, {"Location": "file:///etc/passwd"}, b"")
    _assert_failed(run_worker(["--random-weights", f"{local_http.base}/r.jpg"], iexec_env(tmp_path)), "only http")


def test_url_private_address_refused_when_asked(tmp_path: Path, run_worker, local_http) -> None:
    local_http.routes["/a.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg())
    _assert_failed(
        run_worker(["--random-weights", "--block-private-urls", f"{local_http.base}/a.jpg"], iexec_env(tmp_path)),
        "private or local",
    )


def test_url_text_instead_of_image(tmp_path: Path, run_worker, local_http) -> None:
    local_http.routes["/page"] = (200, {"Content-Type": "text/html"}, b"<html><body>hi</body></html>")
    _assert_failed(run_worker(["--random-weights", f"{local_http.base}/page"], iexec_env(tmp_path)), "HTML")


def test_no_weights_is_a_clear_error_not_random(tmp_path: Path, run_worker) -> None:
    env = iexec_env(tmp_path, INPUT)
    (tmp_path / "iexec_in" / INPUT).write_bytes(_jpeg())
    _assert_failed(run_worker([], env), "no mask r-cnn weights", "fetch-weights")


def test_corrupt_weights_file(tmp_path: Path, run_worker) -> None:
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 40)
    env = iexec_env(tmp_path, INPUT, MRCNN_WEIGHTS=str(bad))
    (tmp_path / "iexec_in" / INPUT).write_bytes(_jpeg())
    _assert_failed(run_worker([], env), "corrupt")


def test_weights_of_another_model(tmp_path: Path, run_worker) -> None:
    other = tmp_path / "resnet.h5"
    with h5py.File(other, "w") as fh:
        fh.attrs["layer_names"] = [b"conv1", b"bn_conv1", b"fc1000"]
        fh.create_group("conv1").create_dataset("kernel", data=np.zeros((3, 3, 3, 8), np.float32))
    env = iexec_env(tmp_path, INPUT)
    (tmp_path / "iexec_in" / INPUT).write_bytes(_jpeg())
    _assert_failed(run_worker(["--weights", str(other)], env), "not mask r-cnn weights", "rpn_model")


def test_weights_from_dataset_missing(tmp_path: Path, run_worker) -> None:
    env = iexec_env(tmp_path, INPUT, IEXEC_DATASET_FILENAME="0xdataset")
    (tmp_path / "iexec_in" / INPUT).write_bytes(_jpeg())
    _assert_failed(run_worker([], env), "iexec dataset", "does not exist")


def test_help_does_not_import_tensorflow(tmp_path: Path, run_worker) -> None:
    run = run_worker(["--help"], iexec_env(tmp_path))
    assert run.code == 0
    for word in (
        "--max-dim",
        "--min-confidence",
        "--format",
        "--classes",
        "--backbone",
        "--random-weights",
        "fetch-weights",
        "segment",
    ):
        assert word in run.stdout
    assert not run.imported_tensorflow
    assert "| worker.options" in run.stderr  # importtime really listed our modules
