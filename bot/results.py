"""The files of a downloaded task result: which one is the picture, what was detected, how large it may be.

The pipeline downloads and unzips a result into its own folder (`data_dir/results/<job id>`); these helpers
only read that folder. They never download anything and never trust the worker's output: a missing picture
holds the job for an admin, and unreadable detections make an empty list (the caption must not fail).
"""

from __future__ import annotations

import json
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
