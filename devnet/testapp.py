"""A tiny iExec app with the same contract as `worker/`, for tests that run many tasks without TensorFlow.

    IEXEC_IN=... IEXEC_OUT=... IEXEC_INPUT_FILE_NAME_1=... python -m devnet.testapp [--fail] [--sleep S]

It reads the first input file as an image, draws one box on it and writes `result.png`, `detections.json`
(one fake "person" detection, same shape as the worker's) and `computed.json` naming `result.png` as the
deterministic output. `--fail` writes an error archive (computed.json with "error-message") and exits 1;
`--sleep S` makes it run S seconds (overrun tests); unknown arguments (the worker's `--max-dim` etc.) are
accepted and ignored.

TEE tasks (as `worker/` does): when IEXEC_REQUESTER_SECRET_1 is set, the input is first decrypted with it
(iExec's dataset format: the secret is the base64 AES-256 key, the file is IV ‖ AES-256-CBC ‖ PKCS#7); a
wrong key or a plain input is an error archive. `secrets.json` then tells which IEXEC_REQUESTER_SECRET_<n>
the app received, each as its sha256 (never the value), so tests can check what reached the app. It must
stay fast (well under 0.3 s) and must never touch the network.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "run"]


class TestAppError(Exception):
    """The input is missing or is not an image (written to computed.json as the error-message)."""


def _write_error(out: Path, message: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "computed.json").write_text(json.dumps({"error-message": message}))


def _input_file() -> Path:
    folder = Path(os.environ.get("IEXEC_IN", "/iexec_in"))
    if int(os.environ.get("IEXEC_INPUT_FILES_NUMBER", "0") or 0) < 1:
        raise TestAppError("no input file: IEXEC_INPUT_FILES_NUMBER is 0")
    name = os.environ.get("IEXEC_INPUT_FILE_NAME_1", "")
    path = folder / name
    if not name or not path.is_file():
        raise TestAppError(f"input file {name!r} is missing from IEXEC_IN")
    return path


def _secrets_seen() -> dict[str, str]:
    """{"IEXEC_REQUESTER_SECRET_<n>": sha256 hex of its value} for each one set."""
    return {name: hashlib.sha256(value.encode()).hexdigest() for name, value in sorted(os.environ.items())
            if name.startswith("IEXEC_REQUESTER_SECRET_")}


def _decrypt(blob: bytes, secret: str) -> bytes:
    """The plain input from iExec's dataset format. Raises TestAppError (wrong key, not encrypted)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        key = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise TestAppError("IEXEC_REQUESTER_SECRET_1 is not a base64 key") from None
    if len(key) != 32 or len(blob) < 32 or len(blob) % 16:
        raise TestAppError("input cannot be decrypted with IEXEC_REQUESTER_SECRET_1 (not an AES-256 input)")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(decryptor.update(blob[16:]) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        raise TestAppError("input cannot be decrypted with IEXEC_REQUESTER_SECRET_1 (wrong key)") from None


def run(out: Path) -> dict[str, object]:
    """Segment (pretend) the first input file into `out`; returns the detections. Raises TestAppError."""
    from PIL import Image, ImageDraw, UnidentifiedImageError  # imported late: --fail needs no Pillow

    path = _input_file()
    data = path.read_bytes()
    secret = os.environ.get("IEXEC_REQUESTER_SECRET_1")
    if secret is not None:
        data = _decrypt(data, secret)
    try:
        with Image.open(io.BytesIO(data)) as src:
            image = src.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise TestAppError(f"input is not an image: {exc}") from None
    w, h = image.size
    box = [h // 4, w // 4, 3 * h // 4, 3 * w // 4]  # y1, x1, y2, x2 like mrcnn's rois
    ImageDraw.Draw(image).rectangle([box[1], box[0], box[3], box[2]], outline=(255, 0, 0), width=3)
    out.mkdir(parents=True, exist_ok=True)
    image.save(out / "result.png")
    detections = {"width": w, "height": h, "detections": [
        {"class_id": 1, "class_name": "person", "score": 0.99, "box": box}], "counts": {"person": 1}}
    (out / "detections.json").write_text(json.dumps(detections))
    (out / "computed.json").write_text(json.dumps({"deterministic-output-path": "/iexec_out/result.png"}))
    return detections


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 error archive written)."""
    parser = argparse.ArgumentParser(prog="python -m devnet.testapp", description=__doc__.splitlines()[0])
    parser.add_argument("--fail", action="store_true", help="write an error archive and exit 1")
    parser.add_argument("--sleep", type=float, default=0.0, help="run this many seconds first")
    args, _unknown = parser.parse_known_args(argv)
    out = Path(os.environ.get("IEXEC_OUT", "/iexec_out"))
    seen = _secrets_seen()
    if seen:
        out.mkdir(parents=True, exist_ok=True)
        (out / "secrets.json").write_text(json.dumps(seen))
    if args.sleep > 0:
        time.sleep(args.sleep)
    if args.fail:
        print("testapp: failing on purpose (--fail)", file=sys.stderr)
        _write_error(out, "the app failed on purpose (--fail)")
        return 1
    try:
        detections = run(out)
    except TestAppError as exc:
        print(f"testapp: {exc}", file=sys.stderr)
        _write_error(out, str(exc))
        return 1
    print(f"testapp: {len(detections['detections'])} detection(s)")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
