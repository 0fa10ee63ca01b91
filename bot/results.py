"""The files of a downloaded task result: which one is the picture, what was detected, how large it may be.

An album task (several photos, one task) writes `album.json` (see worker/album.py) naming each picture's
result and detections, or its error: `read_album` reads it.

The pipeline downloads and unzips a result into its own folder (`data_dir/results/<job id>`); these helpers
only read that folder. They never download anything and never trust the worker's output: a missing picture
holds the job for an admin, and unreadable detections make an empty list (the caption must not fail).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import NeedsAdmin
from bot.images import ImageLimits

RESULT_LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=50_000_000)


def result_image(output: Path | None) -> Path:
    """The result picture: the deterministic output itself, or the result.* file in that folder."""
    if output is None:
        raise NeedsAdmin("the result has no deterministic output")
    if output.is_dir():
        for candidate in sorted(output.glob("result.*")):
            return candidate
        raise NeedsAdmin(f"no result image in {output.name}")
    return output


def _read(folder: Path) -> Any:
    try:
        return json.loads((folder / "detections.json").read_text())
    except (OSError, ValueError):
        return None


def made_with_random_weights(folder: Path) -> bool:
    """True when the folder's detections.json says the model ran with random weights (its
    `model.random_weights`); False when it says otherwise or cannot be read."""
    data = _read(folder)
    model = data.get("model") if isinstance(data, dict) else None
    return isinstance(model, dict) and model.get("random_weights") is True


def read_detections(folder: Path) -> list[dict[str, Any]]:
    """The detections listed in the folder's detections.json; [] when it is missing or malformed."""
    data = _read(folder)
    if data is None:
        return []
    items = data.get("detections", data) if isinstance(data, dict) else data
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


# ------------------------------------------------------------------------------------ albums

#: The manifest an album task writes (worker/album.py): the task's deterministic output.
ALBUM_MANIFEST = "album.json"
#: Most pictures in one album task (Telegram's own limit for an album, and the worker's).
ALBUM_MAX = 10


@dataclass(frozen=True)
class AlbumPicture:
    """One picture of an album result: its segmented image and detections, or why it failed."""

    index: int  # from 1, the order of the request's iexec_input_files
    ok: bool
    image: Path | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    error_kind: str = ""


@dataclass(frozen=True)
class AlbumResult:
    """A downloaded album result: every picture in input order, and whether the model had random weights."""

    pictures: list[AlbumPicture]
    random_weights: bool

    @property
    def delivered(self) -> list[AlbumPicture]:
        return [p for p in self.pictures if p.ok]

    @property
    def failed(self) -> list[AlbumPicture]:
        return [p for p in self.pictures if not p.ok]


def is_album(output: Path | None) -> bool:
    """True when a result's deterministic output is an album manifest."""
    return output is not None and output.name == ALBUM_MANIFEST


def read_album(manifest: Path, expected: int) -> AlbumResult:
    """The album result whose manifest is `manifest`, checked against the `expected` number of pictures.

    Raises ValueError with a sentence when the manifest is unreadable, has another
    number of pictures, or names a file outside its folder or missing (the caller refunds the job). A
    picture the manifest marks ok but whose files are missing is a failed picture, never delivered blind."""
    folder = manifest.parent
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"the album manifest cannot be read ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("pictures"), list):
        raise ValueError("the album manifest is not version 1 with a list of pictures")
    entries = data["pictures"]
    if len(entries) != expected or [e.get("index") if isinstance(e, dict) else None for e in entries] != list(
        range(1, expected + 1)
    ):
        raise ValueError(f"the album manifest lists {len(entries)} pictures, not the {expected} sent in order")
    pictures: list[AlbumPicture] = []
    for entry in entries:
        index = entry["index"]
        if entry.get("ok") is True:
            image = _inside(folder, entry.get("result"))
            if image is None or not image.is_file():
                pictures.append(
                    AlbumPicture(index, False, error="its result is missing from the archive", error_kind="internal")
                )
                continue
            detections_file = _inside(folder, entry.get("detections"))
            detections: list[dict[str, Any]] = []
            if detections_file is not None and detections_file.is_file():
                try:
                    doc = json.loads(detections_file.read_text())
                except (OSError, ValueError):
                    doc = None
                items = doc.get("detections") if isinstance(doc, dict) else None
                detections = [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []
            pictures.append(AlbumPicture(index, True, image=image, detections=detections))
        else:
            error = entry.get("error") if isinstance(entry.get("error"), str) else "the app gave no reason"
            kind = entry.get("error_kind") if isinstance(entry.get("error_kind"), str) else "internal"
            pictures.append(AlbumPicture(index, False, error=error[:300], error_kind=kind[:20]))
    return AlbumResult(pictures, data.get("random_weights") is True)


def album_detections(result: AlbumResult) -> bytes:
    """The file the "detections.json" button of an album sends: each picture in album order with what was
    found in it, or why it failed, and whether the model had random weights."""
    pictures = [
        {"index": p.index, "detections": p.detections} if p.ok else {"index": p.index, "error": p.error}
        for p in result.pictures
    ]
    return json.dumps({"random_weights": result.random_weights, "pictures": pictures}, indent=1).encode()


def _inside(folder: Path, name: Any) -> Path | None:
    """`folder/name` when `name` is a plain file name (no path), else None."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    return folder / name
