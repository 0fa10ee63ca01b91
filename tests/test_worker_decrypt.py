"""A TDX task's encrypted input: with `IEXEC_REQUESTER_SECRET_1` set, the app decrypts its input (iExec's
dataset encryption, as the SDK's `dataset.encrypt` writes it) before any check of it. A wrong key, a plain
input or a malformed key ends with only computed.json holding a clear error, fast (no TensorFlow), and the key
is never printed. The format is checked against the official SDK (node), and a decrypted photo is segmented.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from PIL import Image

from tests.fixtures_worker import REPO, iexec_env
from worker.decrypt import decrypt_input
from worker.errors import DecryptionError

INPUT = "3f" * 32  # sha256(url) style name, as the iExec worker names downloaded input files
KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
SDK = REPO / "devnet/node_modules/iexec/dist/esm/lib/index.js"


def _encrypt(data: bytes, key: bytes, iv: bytes = b"\x07" * 16) -> bytes:
    """The SDK's format written independently of the worker: IV, then AES-256-CBC with PKCS#7 padding."""
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _secret(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _task(tmp_path: Path, content: bytes, secret: str | None) -> dict[str, str]:
    extra = {} if secret is None else {"IEXEC_REQUESTER_SECRET_1": secret}
    env = iexec_env(tmp_path, INPUT, **extra)
    (tmp_path / "iexec_in" / INPUT).write_bytes(content)
    return env


def _assert_failed(run, *words: str, secret: str | None = None) -> str:
    assert run.code != 0
    assert run.files == {"computed.json"}, run.files
    message = run.computed()["error-message"]
    for word in words:
        assert word.lower() in message.lower(), message
    assert "Traceback" not in run.stderr
    assert f"error: {message}" in run.stderr
    assert not run.imported_tensorflow  # what makes the refusal fast; no elapsed time asserted
    if secret:
        everything = run.stdout + run.stderr + (run.out / "computed.json").read_text()
        assert secret not in everything
        assert secret.strip() not in everything
    return message


def _wrong_key_with_bad_padding(blob: bytes) -> bytes:
    """A key that is not KEY and under which `blob` does not even unpad (the usual case: 255 in 256)."""
    for n in range(1, 1000):
        key = bytes([n % 256, n // 256]) * 16
        try:
            decrypt_input(blob, key)
        except DecryptionError:
            return key
    raise AssertionError("no key with bad padding found")


def _wrong_key_with_good_padding(blob: bytes) -> bytes:
    """A wrong key under which `blob` happens to unpad (about 1 key in 256): garbage comes out."""
    for n in range(1, 20000):
        key = n.to_bytes(4, "big") * 8
        try:
            decrypt_input(blob, key)
        except DecryptionError:
            continue
        return key
    raise AssertionError("no key with good padding found")


def test_wrong_key_is_a_clear_error_without_the_key(tmp_path: Path, run_worker) -> None:
    blob = _encrypt(_jpeg(), KEY)
    secret = _secret(_wrong_key_with_bad_padding(blob))
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, blob, secret)),
        "could not be decrypted with the key given in IEXEC_REQUESTER_SECRET_1",
        secret=secret,
    )


def test_wrong_key_that_unpads_by_chance_is_still_a_key_error(tmp_path: Path, run_worker) -> None:
    blob = _encrypt(_jpeg(), KEY)
    secret = _secret(_wrong_key_with_good_padding(blob))
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, blob, secret)),
        "decrypted with the key given in IEXEC_REQUESTER_SECRET_1",
        "not an image",
        "key",
        secret=secret,
    )


@pytest.mark.parametrize("content", [_jpeg(), _jpeg((80, 80))[:1024]], ids=["jpeg", "jpeg-1024-bytes"])
def test_plain_input_given_a_key_is_refused(tmp_path: Path, run_worker, content: bytes) -> None:
    # the second one is a multiple of 16 bytes long: it is "decrypted" and fails on its padding
    secret = _secret(KEY)
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, content, secret)),
        "not encrypted",
        "IEXEC_REQUESTER_SECRET_1",
        secret=secret,
    )


@pytest.mark.parametrize(
    "secret",
    [
        "not base64 at all!",
        base64.b64encode(bytes(16)).decode(),
        base64.b64encode(bytes(33)).decode(),
        "",
        "0x" + "ab" * 32,
    ],
    ids=["garbage", "128-bit", "264-bit", "empty", "hex"],
)
def test_malformed_key_is_refused_without_quoting_it(tmp_path: Path, run_worker, secret: str) -> None:
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, _encrypt(_jpeg(), KEY), secret)),
        "IEXEC_REQUESTER_SECRET_1",
        "base64",
        "256-bit",
        secret=secret or None,
    )


def test_decrypted_input_still_gets_every_image_check(tmp_path: Path, run_worker) -> None:
    """Decryption comes first; then the usual checks run on the plain bytes (here: a 100000x100000 PNG)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, _encrypt(bytes(data), KEY), _secret(KEY))),
        "too many pixels",
        secret=_secret(KEY),
    )


def test_encrypted_input_without_a_key_is_not_an_image(tmp_path: Path, run_worker) -> None:
    """No secret, no decryption: behaviour is unchanged and the ciphertext is just not a photo."""
    _assert_failed(
        run_worker(["--random-weights"], _task(tmp_path, _encrypt(_jpeg(), KEY), None)), "not an image that can be read"
    )


def test_encrypted_url_download_is_decrypted_too(tmp_path: Path, run_worker, local_http) -> None:
    """An input given as --url is decrypted the same way (here with the wrong key: a fast failure)."""
    blob = _encrypt(_jpeg(), KEY)
    local_http.routes["/photo.enc"] = (200, {"Content-Type": "application/octet-stream"}, blob)
    secret = _secret(_wrong_key_with_bad_padding(blob))
    env = iexec_env(tmp_path, IEXEC_REQUESTER_SECRET_1=secret)
    _assert_failed(
        run_worker(["--random-weights", "--url", f"{local_http.base}/photo.enc"], env),
        "could not be decrypted",
        secret=secret,
    )


def test_decrypt_input_round_trips_every_padding_length() -> None:
    for size in (0, 1, 15, 16, 17, 31, 32, 1000):
        data = os.urandom(size)
        assert decrypt_input(_encrypt(data, KEY, os.urandom(16)), KEY) == data


# --- the official SDK writes the format; the app reads it ------------------------------------------------

SDK_ENCRYPT = """
import { readFileSync, writeFileSync } from 'node:fs';
import { IExecDatasetModule } from '%(sdk)s';
// dataset.encrypt needs no chain: the provider is never reached
const dataset = new IExecDatasetModule({ ethProvider: 'http://127.0.0.1:9' },
  { hubAddress: '0x' + '1'.repeat(40) });
const key = process.env.KEY || dataset.generateEncryptionKey();
for (const name of process.argv.slice(2)) {
  writeFileSync(name + '.enc', await dataset.encrypt(readFileSync(name), key));
}
console.log(JSON.stringify({ key }));
"""


def _sdk_encrypt(tmp_path: Path, files: list[Path], key: str | None = None) -> str:
    """Encrypt each file to `<file>.enc` with the SDK's `dataset.encrypt`; returns the key (base64)."""
    if not SDK.exists() or shutil.which("node") is None:
        pytest.skip("node or the iexec SDK (npm install in devnet/) is missing")
    script = tmp_path / "sdk_encrypt.mjs"
    script.write_text(SDK_ENCRYPT % {"sdk": SDK.as_posix()})
    env = {**os.environ, **({"KEY": key} if key else {})}
    proc = subprocess.run(["node", str(script), *map(str, files)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["key"]


@pytest.mark.slow
def test_what_the_sdk_encrypts_the_app_decrypts_to_the_same_bytes(tmp_path: Path) -> None:
    # sizes around the block size, and one over the SDK's 10 MB encryption chunk
    files = []
    for size in (1, 16, 4097, 10_000_017):
        path = tmp_path / f"file{size}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, "JPEG", quality=92)
    files.append(photo)
    key = base64.b64decode(_sdk_encrypt(tmp_path, files))
    for path in files:
        blob = path.with_name(path.name + ".enc").read_bytes()
        assert blob[16:] != path.read_bytes()[: len(blob) - 16]
        assert decrypt_input(blob, key) == path.read_bytes(), path.name
        try:
            other = decrypt_input(blob, OTHER_KEY)
        except DecryptionError:
            other = None
        assert other != path.read_bytes()


@pytest.mark.slow
def test_a_photo_encrypted_by_the_sdk_is_segmented(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    plain = tmp_path / "keep" / "photo.jpg"
    plain.parent.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(plain, "JPEG", quality=92)
    secret = _sdk_encrypt(tmp_path / "keep", [plain])
    photo = plain.read_bytes()
    env = _task(tmp_path, plain.with_name("photo.jpg.enc").read_bytes(), secret)
    env["MRCNN_WEIGHTS"] = str(worker_weights_r50)
    plain.unlink()  # the test's own copy goes: afterwards no file under tmp_path may hold the plain photo
    result = run_worker(["--max-dim", "512", "--no-graph-cache"], env)
    assert result.code == 0, result.stderr[-2000:]
    assert result.files == {"result.png", "detections.json", "computed.json"}
    doc = json.loads((result.out / "detections.json").read_text())
    height, width = skimage.data.chelsea().shape[:2]
    assert doc["image"] == {
        "width": width,
        "height": height,
        "source_format": "JPEG",
        "source_width": width,
        "source_height": height,
    }
    with Image.open(result.out / "result.png") as picture:
        assert picture.size == (width, height)
    assert secret not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert photo not in path.read_bytes(), path
