"""The COCO label set of matterport's Mask R-CNN weights (81 classes, index 0 is the background).

Cheap to import: the option parser checks `--classes` against it before TensorFlow is loaded.
"""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
NUM_CLASSES = len(CLASS_NAMES)
assert NUM_CLASSES == 81

_BY_NAME = {name: i for i, name in enumerate(CLASS_NAMES) if i}


def class_id(name: str) -> int | None:
    """The class id of a COCO name ("traffic light", "traffic_light", "Traffic-Light"), or None."""
    key = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    return _BY_NAME.get(key)
