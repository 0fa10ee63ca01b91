"""Albums: a task with several input files (2 to 10 pictures) segmented in one process, the model loaded once.

A task with exactly one input file keeps the single layout (`result.png`, `detections.json`,
`computed.json` naming `result.png`). With N >= 2 input files, `IEXEC_OUT` holds:

- per picture n (1-based, the order of `IEXEC_INPUT_FILE_NAME_<n>`, i.e. of the request's
  `iexec_input_files`) that succeeded: `result-<n>.png` (or `.jpg` with `--format jpeg`) and
  `detections-<n>.json` (the single task's `detections.json` document, plus `"album": {"index": n,
  "total": N}`); nothing for a picture that failed;
- `album.json`, the manifest (the task's deterministic output, so it carries no timings):

      {"version": 1, "total": N, "ok": K, "failed": N - K, "random_weights": bool,
       "pictures": [
         {"index": 1, "input": "<IEXEC_INPUT_FILE_NAME_1>", "ok": true,
          "result": "result-1.png", "detections": "detections-1.json",
          "count": <instances>, "width": W, "height": H, "sha256": "<hex sha256 of result-1.png>"},
         {"index": 2, "input": "<IEXEC_INPUT_FILE_NAME_2>", "ok": false,
          "error": "<a sentence for the person who sent it>", "error_kind": "input"},
         ...]}

  `pictures` has N entries in input order; `error_kind` is one of "input" (not an image, corrupt, too
  large, refused format, missing file), "decryption" (TDX: not decryptable with the task's key),
  "memory", "model" (inference failed) or "internal" (a bug of the app);
- `computed.json`: `{"deterministic-output-path": "<IEXEC_OUT>/album.json"}`, written last.

A picture that fails fails alone: the others are segmented and delivered, exit code 0. When every picture
fails, the task fails as a single one does: only `computed.json` with an `error-message` naming each
picture's error, a non-zero exit code, and TensorFlow never imported when the inputs were already refused.
A malformed task key, missing weights or more than `limits.MAX_ALBUM_PICTURES` inputs fail the whole task.

This module never imports TensorFlow (the pictures are checked before it is loaded).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker import limits
from worker.errors import DecryptionError, InputError, ModelError, WorkerError
from worker.images import LoadedImage
from worker.inputs import input_name, load_input_file

MANIFEST = "album.json"
MANIFEST_VERSION = 1
#: the album's own output names, for cleaning up after a failed task
OUTPUT_NAME = re.compile(r"^(result-\d+\.(png|jpg)|detections-\d+\.json|album\.json)$")
MEMORY_MESSAGE = "The image needs more memory than the task has."


@dataclass
class Picture:
    """One input of an album: its image until segmented, then what it gave, or why it failed."""

    index: int
    input: str
    loaded: LoadedImage | None = None
    error: str | None = None
    error_kind: str | None = None
    exit_code: int = 0
    entry: dict[str, Any] | None = None  # the manifest entry once segmented

    def failed(self, message: str, kind: str, exit_code: int = 3) -> None:
        """Mark the picture failed (and drop its pixels)."""
        self.loaded, self.error, self.error_kind, self.exit_code = None, message, kind, exit_code


def error_kind(exc: BaseException) -> str:
    """The manifest's `error_kind` for an error raised on one picture."""
    if isinstance(exc, DecryptionError):
        return "decryption"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, ModelError):
        return "model"
    return "internal"


def result_name(n: int, fmt: str) -> str:
    """`result-<n>.png` / `.jpg`."""
    return f"result-{n}.{'png' if fmt == 'png' else 'jpg'}"


def detections_name(n: int) -> str:
    """`detections-<n>.json`."""
    return f"detections-{n}.json"


def check_size(count: int) -> None:
    """Raises InputError when the task has more pictures than an album may hold."""
    if count > limits.MAX_ALBUM_PICTURES:
        raise InputError(
            f"The task has {count} input files; an album holds at most {limits.MAX_ALBUM_PICTURES} pictures."
        )


def load_pictures(env: Mapping[str, str], count: int, key: bytes | None) -> list[Picture]:
    """Every input file read, decrypted (with `key`) and checked; a bad one is marked failed, not raised."""
    pictures = []
    for n in range(1, count + 1):
        picture = Picture(index=n, input=input_name(env, n))
        try:
            picture.loaded = load_input_file(env, n, key)
        except WorkerError as exc:
            picture.failed(str(exc), error_kind(exc), exc.exit_code)
        except MemoryError:
            picture.failed(MEMORY_MESSAGE, "memory", 7)
        pictures.append(picture)
    return pictures


def all_failed(pictures: list[Picture]) -> WorkerError:
    """The task's error when no picture could be segmented: each picture's message (once when all agree),
    with the first picture's exit code."""
    messages = [p.error or "" for p in pictures]
    total = len(pictures)
    if len(set(messages)) == 1:
        text = f"None of the {total} pictures could be segmented: {messages[0]}"
    else:
        text = f"None of the {total} pictures could be segmented. " + " ".join(
            f"Picture {p.index}: {p.error}" for p in pictures
        )
    error = InputError(text) if pictures[0].error_kind in ("input", "decryption") else ModelError(text)
    error.exit_code = pictures[0].exit_code or error.exit_code
    return error


def ok_entry(
    picture: Picture, result: str, detections: str, count: int, width: int, height: int, image_bytes: bytes
) -> dict[str, Any]:
    """The manifest entry of a segmented picture."""
    return {
        "index": picture.index,
        "input": picture.input,
        "ok": True,
        "result": result,
        "detections": detections,
        "count": count,
        "width": width,
        "height": height,
        "sha256": hashlib.sha256(image_bytes).hexdigest(),
    }


def manifest(pictures: list[Picture], random_weights: bool) -> dict[str, Any]:
    """The album.json document (deterministic: no timings)."""
    entries = [
        p.entry
        if p.entry is not None
        else {"index": p.index, "input": p.input, "ok": False, "error": p.error, "error_kind": p.error_kind}
        for p in pictures
    ]
    ok = sum(1 for e in entries if e["ok"])
    return {
        "version": MANIFEST_VERSION,
        "total": len(entries),
        "ok": ok,
        "failed": len(entries) - ok,
        "random_weights": random_weights,
        "pictures": entries,
    }


__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "OUTPUT_NAME",
    "Picture",
    "all_failed",
    "check_size",
    "detections_name",
    "error_kind",
    "load_pictures",
    "manifest",
    "ok_entry",
    "result_name",
]
