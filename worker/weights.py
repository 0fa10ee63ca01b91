"""Finding the Mask R-CNN weights file and checking it is one, before TensorFlow is imported.

Order: `--weights PATH` or $MRCNN_WEIGHTS (the Docker image bakes the file in), then the iExec dataset
(`IEXEC_DATASET_FILENAME` in `IEXEC_IN`), then the fetch-weights cache. `--random-weights` is the only way
to run without a file. It must never download anything and never fall back to random weights silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from worker.coco import NUM_CLASSES
from worker.errors import WeightsError
from worker.fetch import cached_weights_path

#: attribute that `worker.testing.make_weights` writes into files of random weights
RANDOM_STAMP_ATTR = "segbot_random_weights"
# layers every matterport Mask R-CNN weights file has (any backbone)
_REQUIRED = ("conv1", "res2a_branch2a", "fpn_c5p5", "rpn_model", "mrcnn_class_logits", "mrcnn_mask")


@dataclass(frozen=True)
class WeightsInfo:
    """A checked weights file (or the random-weights choice)."""

    path: str | None  # None: random weights
    source: str  # "option", "env", "dataset", "cache", "random"
    backbone: str  # "resnet101" or "resnet50"
    random: bool  # random weights (explicit flag, or a file stamped as random)


def find_weights(option: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(path, source) of the weights to use. Raises WeightsError when there are none."""
    if option:
        return _existing(option, "--weights"), "option"
    if env.get("MRCNN_WEIGHTS"):
        return _existing(env["MRCNN_WEIGHTS"], "MRCNN_WEIGHTS"), "env"
    dataset = env.get("IEXEC_DATASET_FILENAME", "")
    if dataset:
        return _existing(os.path.join(env.get("IEXEC_IN", "/iexec_in"), dataset), "the iExec dataset"), "dataset"
    cached = (
        os.path.join(env["SEGBOT_CACHE"], "mask_rcnn_coco.h5") if env.get("SEGBOT_CACHE") else cached_weights_path()
    )
    if os.path.isfile(cached):
        return cached, "cache"
    raise WeightsError(
        "No Mask R-CNN weights available: the app was deployed without its weights file. Operator: bake it "
        "into the image (MRCNN_WEIGHTS), attach the weights dataset, or run `python -m worker fetch-weights`."
    )


def _existing(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise WeightsError(f"The weights file given by {what} does not exist: {path}")
    return path


def inspect_weights(path: str) -> tuple[str, bool]:
    """(backbone, random) of a weights file; raises WeightsError if it is not Mask R-CNN COCO weights."""
    import h5py  # light compared with TensorFlow; kept local so `--help` stays fast

    try:
        with h5py.File(path, "r") as fh:
            group = fh["model_weights"] if "layer_names" not in fh.attrs and "model_weights" in fh else fh
            names = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])}
            random = bool(fh.attrs.get(RANDOM_STAMP_ATTR, False))
            missing = [n for n in _REQUIRED if n not in names]
            if missing:
                raise WeightsError(
                    f"The weights file is not Mask R-CNN weights (missing layers: {', '.join(missing)})."
                )
            classes = _class_count(group["mrcnn_class_logits"])
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"The weights file is corrupt or not an HDF5 weights file ({str(exc)[:100]}).") from None
    if classes != NUM_CLASSES:
        raise WeightsError(f"The weights file has {classes} classes; COCO weights with {NUM_CLASSES} are needed.")
    return ("resnet101" if "res4v_branch2a" in names else "resnet50"), random


def _class_count(group: object) -> int:
    shapes: list[tuple[int, ...]] = []

    def visit(_name: str, obj: object) -> None:
        shape = getattr(obj, "shape", None)
        if shape is not None and len(shape) == 1:
            shapes.append(tuple(shape))

    group.visititems(visit)  # type: ignore[attr-defined]  # an h5py Group; h5py ships no types
    if not shapes:
        raise WeightsError("The weights file has no classifier weights (mrcnn_class_logits is empty).")
    return int(shapes[0][0])


def resolve_weights(option: str | None, backbone: str | None, random: bool, env: Mapping[str, str]) -> WeightsInfo:
    """Choose and check the weights for a run. Raises WeightsError."""
    if random:
        return WeightsInfo(path=None, source="random", backbone=backbone or "resnet101", random=True)
    path, source = find_weights(option, env)
    file_backbone, stamped = inspect_weights(path)
    if backbone and backbone != file_backbone:
        raise WeightsError(f"The weights file is for {file_backbone}, but --backbone {backbone} was asked.")
    return WeightsInfo(path=path, source=source, backbone=file_backbone, random=stamped)
