"""A tiny iExec app with the same contract as `worker/`, for tests that run many tasks without TensorFlow.

    IEXEC_IN=... IEXEC_OUT=... IEXEC_INPUT_FILE_NAME_1=... python -m devnet.testapp [--fail] [--sleep S]

It reads the first input file as an image, draws one box on it and writes `result.png`, `detections.json`
(one fake "person" detection, same shape as the worker's) and `computed.json` naming `result.png` as the
deterministic output. `--fail` writes an error archive (computed.json with "error-message") and exits 1;
`--sleep S` makes it run S seconds (overrun tests); unknown arguments (the worker's `--max-dim` etc.) are
accepted and ignored.

Albums (as `worker/album.py` does): with IEXEC_INPUT_FILES_NUMBER >= 2 (at most 10) it writes, per input n
that is an image, `result-<n>.png` and `detections-<n>.json` (with `"album": {"index": n, "total": N}`),
then `album.json` (`{"version": 1, "total": N, "ok": K, "failed": N-K, "random_weights": false, "pictures":
[{"index", "input", "ok": true, "result", "detections", "count", "width", "height", "sha256"} or {"index",
"input", "ok": false, "error", "error_kind"}, ...]}` in input order) and `computed.json` naming
`/iexec_out/album.json`. A picture that fails fails alone; when all fail it is an error archive.

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

__all__ = ["main", "run", "run_album"]


class TestAppError(Exception):
    """The input is missing or is not an image (written to computed.json as the error-message)."""


def _write_error(out: Path, message: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("result*.png"), *out.glob("detections*.json"), out / "album.json"]:
        stale.unlink(missing_ok=True)
    (out / "computed.json").write_text(json.dumps({"error-message": message}))


MAX_ALBUM = 10


def _input_count() -> int:
    return int(os.environ.get("IEXEC_INPUT_FILES_NUMBER", "0") or 0)


def _input_file(n: int = 1) -> Path:
    folder = Path(os.environ.get("IEXEC_IN", "/iexec_in"))
    if _input_count() < 1:
        raise TestAppError("no input file: IEXEC_INPUT_FILES_NUMBER is 0")
    name = os.environ.get(f"IEXEC_INPUT_FILE_NAME_{n}", "")
    path = folder / name
    if not name or "/" in name or not path.is_file():
        raise TestAppError(f"input file {name!r} is missing from IEXEC_IN")
    return path


def _secrets_seen() -> dict[str, str]:
    """{"IEXEC_REQUESTER_SECRET_<n>": sha256 hex of its value} for each one set."""
    return {
        name: hashlib.sha256(value.encode()).hexdigest()
        for name, value in sorted(os.environ.items())
        if name.startswith("IEXEC_REQUESTER_SECRET_")
    }


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


def _segment(
    n: int, out: Path, image_name: str, detections_name: str, extra: dict[str, object] | None = None
) -> dict[str, object]:
    """Pretend to segment input file `n` into `out`; returns the detections. Raises TestAppError."""
    from PIL import Image, ImageDraw, UnidentifiedImageError  # imported late: --fail needs no Pillow

    path = _input_file(n)
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
    image.save(out / image_name)
    detections = {
        "width": w,
        "height": h,
        "detections": [{"class_id": 1, "class_name": "person", "score": 0.99, "box": box}],
        "counts": {"person": 1},
        **(extra or {}),
    }
    (out / detections_name).write_text(json.dumps(detections))
    return detections


def run(out: Path) -> dict[str, object]:
    """Segment (pretend) the first input file into `out`; returns the detections. Raises TestAppError."""
    detections = _segment(1, out, "result.png", "detections.json")
    (out / "computed.json").write_text(json.dumps({"deterministic-output-path": "/iexec_out/result.png"}))
    return detections


def run_album(out: Path, total: int) -> dict[str, object]:
    """Segment (pretend) every input file into `out` with its manifest; returns the manifest. Raises
    TestAppError when there are too many inputs or none of them is an image."""
    if total > MAX_ALBUM:
        raise TestAppError(f"the task has {total} input files; an album holds at most {MAX_ALBUM} pictures")
    entries: list[dict[str, object]] = []
    for n in range(1, total + 1):
        name = os.environ.get(f"IEXEC_INPUT_FILE_NAME_{n}", "")
        try:
            found = _segment(n, out, f"result-{n}.png", f"detections-{n}.json", {"album": {"index": n, "total": total}})
        except TestAppError as exc:
            kind = "decryption" if "decrypt" in str(exc) or "SECRET" in str(exc) else "input"
            entries.append({"index": n, "input": name, "ok": False, "error": str(exc), "error_kind": kind})
            continue
        digest = hashlib.sha256((out / f"result-{n}.png").read_bytes()).hexdigest()
        entries.append(
            {
                "index": n,
                "input": name,
                "ok": True,
                "result": f"result-{n}.png",
                "detections": f"detections-{n}.json",
                "count": len(found["detections"]),  # type: ignore[arg-type]  # the list _segment just wrote
                "width": found["width"],
                "height": found["height"],
                "sha256": digest,
            }
        )
    ok = sum(1 for e in entries if e["ok"])
    if not ok:
        raise TestAppError(
            f"none of the {total} pictures could be segmented: "
            + "; ".join(f"picture {e['index']}: {e['error']}" for e in entries)
        )
    manifest = {
        "version": 1,
        "total": total,
        "ok": ok,
        "failed": total - ok,
        "random_weights": False,
        "pictures": entries,
    }
    (out / "album.json").write_text(json.dumps(manifest))
    (out / "computed.json").write_text(json.dumps({"deterministic-output-path": "/iexec_out/album.json"}))
    return manifest


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
    total = _input_count()
    try:
        if total >= 2:
            manifest = run_album(out, total)
            print(f"testapp: album of {total}, {manifest['failed']} failed")
            return 0
        detections = run(out)
    except TestAppError as exc:
        print(f"testapp: {exc}", file=sys.stderr)
        _write_error(out, str(exc))
        return 1
    print(f"testapp: {len(detections['detections'])} detection(s)")  # type: ignore[arg-type]  # a list, as run wrote it
    return 0


if __name__ == "__main__":
    sys.exit(main())
