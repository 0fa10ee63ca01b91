"""A tiny iExec app with the same contract as `worker/`, for tests that run many tasks without TensorFlow.

    IEXEC_IN=... IEXEC_OUT=... IEXEC_INPUT_FILE_NAME_1=... python -m devnet.testapp [--fail] [--sleep S]

It reads the first input file as an image, draws one box on it and writes `result.png`, `detections.json`
(one fake "person" detection, same shape as the worker's) and `computed.json` naming `result.png` as the
deterministic output. `--fail` writes an error archive (computed.json with "error-message") and exits 1;
`--sleep S` makes it run S seconds (overrun tests); unknown arguments (the worker's `--max-dim` etc.) are
accepted and ignored. It must stay fast (well under 0.3 s) and must never touch the network.
"""
from __future__ import annotations

import argparse
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


def run(out: Path) -> dict[str, object]:
    """Segment (pretend) the first input file into `out`; returns the detections. Raises TestAppError."""
    from PIL import Image, ImageDraw, UnidentifiedImageError  # imported late: --fail needs no Pillow

    path = _input_file()
    try:
        with Image.open(path) as src:
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
