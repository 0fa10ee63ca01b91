"""Albums: a task with several input files is segmented in one process, the model loaded once, each picture
with its own result and an `album.json` manifest in input order; a bad picture fails alone with a readable
error; a TDX album is decrypted picture by picture with the task's key. The devnet's test app writes the
same layout. (The single-input layout is covered by test_worker_model.py and test_worker_inputs.py.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from PIL import Image

from tests.fixtures_worker import REPO, iexec_env

KEY = bytes(range(32))
OTHER_KEY = bytes(range(200, 232))
# three photos of different sizes, so that the order of the results can be told from their sizes
PHOTOS = [("chelsea", (451, 300)), ("coffee", (600, 400)), ("astronaut", (512, 512))]


def _names(count: int) -> list[str]:
    """sha256(url)-like file names, as the iExec worker names downloaded input files."""
    return [hashlib.sha256(f"https://example.org/{n}.jpg".encode()).hexdigest() for n in range(1, count + 1)]


def _jpeg(photo: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(skimage.data, photo)()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _encrypt(data: bytes, key: bytes, iv: bytes = b"\x05" * 16) -> bytes:
    """iExec's dataset format, written independently of the worker: IV, AES-256-CBC, PKCS#7."""
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()


def _album_env(tmp_path: Path, contents: list[bytes], **extra: str) -> dict[str, str]:
    """The IEXEC_* environment of a task with these input files (in this order)."""
    names = _names(len(contents))
    env = iexec_env(tmp_path, names[0], **extra)
    env["IEXEC_INPUT_FILES_NUMBER"] = str(len(contents))
    for n, (name, content) in enumerate(zip(names, contents, strict=True), 1):
        env[f"IEXEC_INPUT_FILE_NAME_{n}"] = name
        (tmp_path / "iexec_in" / name).write_bytes(content)
    return env


def _manifest(out: Path) -> dict:
    computed = json.loads((out / "computed.json").read_text())
    assert computed == {"deterministic-output-path": f"{out}/album.json"}
    return json.loads((out / "album.json").read_text())


def _assert_delivered(out: Path, entry: dict, index: int, size: tuple[int, int]) -> None:
    """Picture `index` has its result (of the input's size), its detections and a matching manifest entry."""
    assert entry["ok"] is True and entry["index"] == index
    assert entry["result"] == f"result-{index}.png" and entry["detections"] == f"detections-{index}.json"
    result = (out / entry["result"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(result).hexdigest()
    assert Image.open(io.BytesIO(result)).size == size == (entry["width"], entry["height"])
    doc = json.loads((out / entry["detections"]).read_text())
    assert doc["album"] == {"index": index, "total": 3}
    assert (doc["image"]["width"], doc["image"]["height"]) == size
    assert doc["count"] == entry["count"] == len(doc["detections"])
    assert doc["model"]["random_weights"] is True


# ------------------------------------------------------------------------------ the real worker (TensorFlow)


@pytest.mark.slow
def test_album_of_three_gives_three_results_in_order(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    env = _album_env(tmp_path, [_jpeg(photo) for photo, _ in PHOTOS], MRCNN_WEIGHTS=str(worker_weights_r50))
    run = run_worker(["--max-dim", "256", "--min-confidence", "0.5"], env)
    assert run.code == 0, run.stderr[-2000:]
    assert run.files == {
        "computed.json",
        "album.json",
        *(f"result-{n}.png" for n in (1, 2, 3)),
        *(f"detections-{n}.json" for n in (1, 2, 3)),
    }
    manifest = _manifest(run.out)
    assert {k: manifest[k] for k in ("version", "total", "ok", "failed", "random_weights")} == {
        "version": 1,
        "total": 3,
        "ok": 3,
        "failed": 0,
        "random_weights": True,
    }
    assert [e["input"] for e in manifest["pictures"]] == _names(3)
    for n, (entry, (_, size)) in enumerate(zip(manifest["pictures"], PHOTOS, strict=True), 1):
        _assert_delivered(run.out, entry, n, size)
    # one process, one model: every picture reports the same (shared) import and model load
    docs = [json.loads((run.out / f"detections-{n}.json").read_text()) for n in (1, 2, 3)]
    assert len({(d["timings"]["import_s"], d["timings"]["build_s"]) for d in docs}) == 1
    assert "segmented: 3 pictures (0 failed)" in run.stderr


@pytest.mark.slow
def test_a_bad_picture_fails_alone(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    contents = [_jpeg("chelsea"), b"this is a text file, not a photo\n" * 20, _jpeg("astronaut")]
    env = _album_env(tmp_path, contents, MRCNN_WEIGHTS=str(worker_weights_r50))
    run = run_worker(["--max-dim", "256"], env)
    assert run.code == 0, run.stderr[-2000:]
    manifest = _manifest(run.out)
    assert (manifest["total"], manifest["ok"], manifest["failed"]) == (3, 2, 1)
    first, bad, third = manifest["pictures"]
    _assert_delivered(run.out, first, 1, PHOTOS[0][1])
    _assert_delivered(run.out, third, 3, PHOTOS[2][1])
    assert bad == {
        "index": 2,
        "input": _names(3)[1],
        "ok": False,
        "error_kind": "input",
        "error": "The file is not an image that can be read. Send a JPEG, PNG, WEBP, GIF, BMP or TIFF image.",
    }
    assert not {"result-2.png", "detections-2.json"} & run.files
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_encrypted_album_is_decrypted_with_the_task_key(tmp_path: Path, run_worker, worker_weights_r50: Path) -> None:
    secret = base64.b64encode(KEY).decode()
    plain = [_jpeg(photo) for photo, _ in PHOTOS]
    env = _album_env(
        tmp_path,
        [_encrypt(data, KEY, bytes([n]) * 16) for n, data in enumerate(plain)],
        MRCNN_WEIGHTS=str(worker_weights_r50),
        IEXEC_REQUESTER_SECRET_1=secret,
    )
    run = run_worker(["--max-dim", "256"], env)
    assert run.code == 0, run.stderr[-2000:]
    manifest = _manifest(run.out)
    assert (manifest["ok"], manifest["failed"]) == (3, 0)
    for n, (entry, (_, size)) in enumerate(zip(manifest["pictures"], PHOTOS, strict=True), 1):
        _assert_delivered(run.out, entry, n, size)
    everything = run.stdout + run.stderr + "".join(p.read_text() for p in run.out.glob("*.json"))
    assert secret not in everything


# ------------------------------------------------------------------------- refused before TensorFlow (fast)


def test_album_where_every_picture_fails_is_a_failed_task(tmp_path: Path, run_worker) -> None:
    env = _album_env(tmp_path, [b"", b"<svg xmlns='http://www.w3.org/2000/svg'/>", _jpeg("chelsea")[:400]])
    run = run_worker([], env)
    assert run.code == 3
    assert run.files == {"computed.json"}
    message = run.computed()["error-message"]
    assert message.startswith("None of the 3 pictures could be segmented.")
    for words in (
        "Picture 1: The image file is empty",
        "Picture 2: This is an SVG",
        "Picture 3: The image is truncated",
    ):
        assert words in message, message
    assert f"error: {message}" in run.stderr and "Traceback" not in run.stderr
    assert not run.imported_tensorflow


def test_album_with_the_wrong_key_fails_without_showing_it(tmp_path: Path, run_worker) -> None:
    secret = base64.b64encode(OTHER_KEY).decode()
    env = _album_env(tmp_path, [_encrypt(_jpeg(p), KEY) for p, _ in PHOTOS], IEXEC_REQUESTER_SECRET_1=secret)
    run = run_worker([], env)
    assert run.code == 3 and run.files == {"computed.json"}
    message = run.computed()["error-message"]
    assert message.startswith("None of the 3 pictures could be segmented: ")
    assert "IEXEC_REQUESTER_SECRET_1" in message
    assert secret not in run.stdout + run.stderr + message
    assert not run.imported_tensorflow


def test_more_pictures_than_an_album_holds_is_refused(tmp_path: Path, run_worker) -> None:
    env = _album_env(tmp_path, [_jpeg("chelsea")] * 11)
    run = run_worker([], env)
    assert run.code == 3 and run.files == {"computed.json"}
    assert "at most 10 pictures" in run.computed()["error-message"]
    assert not run.imported_tensorflow


def test_a_missing_input_name_fails_only_its_picture_in_the_manifest(tmp_path: Path, run_worker) -> None:
    env = _album_env(tmp_path, [b"not an image", b"nor this"])
    del env["IEXEC_INPUT_FILE_NAME_2"]
    run = run_worker([], env)
    assert run.code == 3
    assert (
        "Picture 2: The task declares an input file but IEXEC_INPUT_FILE_NAME_2 is missing"
        in run.computed()["error-message"]
    )


# --------------------------------------------------------------------- the devnet's test app, same layout


def _testapp(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devnet.testapp", "--max-dim", "1024"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_testapp_writes_the_album_layout(tmp_path: Path) -> None:
    contents = [_jpeg("chelsea"), b"not an image", _jpeg("astronaut")]
    env = _album_env(tmp_path, contents)
    proc = _testapp(env)
    assert proc.returncode == 0, proc.stderr
    out = Path(env["IEXEC_OUT"])
    assert json.loads((out / "computed.json").read_text()) == {"deterministic-output-path": "/iexec_out/album.json"}
    manifest = json.loads((out / "album.json").read_text())
    assert (manifest["version"], manifest["total"], manifest["ok"], manifest["failed"]) == (1, 3, 2, 1)
    first, bad, third = manifest["pictures"]
    assert bad["ok"] is False and bad["index"] == 2 and bad["error_kind"] == "input" and "not an image" in bad["error"]
    for n, entry, size in ((1, first, PHOTOS[0][1]), (3, third, PHOTOS[2][1])):
        assert entry["ok"] is True and entry["index"] == n and entry["input"] == _names(3)[n - 1]
        result = (out / entry["result"]).read_bytes()
        assert entry["result"] == f"result-{n}.png" and entry["sha256"] == hashlib.sha256(result).hexdigest()
        assert Image.open(io.BytesIO(result)).size == size == (entry["width"], entry["height"])
        assert json.loads((out / entry["detections"]).read_text())["album"] == {"index": n, "total": 3}
    assert not (out / "result-2.png").exists() and not (out / "result.png").exists()


def test_testapp_decrypts_an_album_and_fails_when_all_fail(tmp_path: Path) -> None:
    secret = base64.b64encode(KEY).decode()
    env = _album_env(tmp_path, [_encrypt(_jpeg(p), KEY) for p, _ in PHOTOS], IEXEC_REQUESTER_SECRET_1=secret)
    proc = _testapp(env)
    assert proc.returncode == 0, proc.stderr
    out = Path(env["IEXEC_OUT"])
    manifest = json.loads((out / "album.json").read_text())
    assert [e["ok"] for e in manifest["pictures"]] == [True, True, True]
    env["IEXEC_REQUESTER_SECRET_1"] = base64.b64encode(OTHER_KEY).decode()
    proc = _testapp(env)
    assert proc.returncode == 1
    assert "none of the 3 pictures" in json.loads((out / "computed.json").read_text())["error-message"]
    assert not (out / "album.json").exists() and not list(out.glob("result-*.png"))
