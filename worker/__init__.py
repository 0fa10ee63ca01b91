"""The iExec app: Mask R-CNN instance segmentation of one image (or an album of up to 10), run as
`python -m worker`.

It reads its input as an iExec task does (input files, `iexec_args`), writes the segmented image,
`detections.json` and `computed.json` to `IEXEC_OUT`, and ships alone in a Docker image: it must never import
another package of this project. Importing `worker` itself is cheap (no TensorFlow).
"""

from __future__ import annotations

from worker.errors import (
    DecryptionError,
    DownloadError,
    InputError,
    ModelError,
    OptionError,
    WeightsError,
    WorkerError,
)

__all__ = ["DecryptionError", "DownloadError", "InputError", "ModelError", "OptionError", "WeightsError", "WorkerError"]
__version__ = "0.1.0"
