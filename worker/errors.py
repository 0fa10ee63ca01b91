"""The worker's exception tree. Every message is meant for the person who sent the image (it ends up in
`computed.json` "error-message"): plain words, never a secret, never a traceback.

WorkerError
 ├── OptionError     a command-line / iexec_args option is missing or has a bad value
 ├── InputError      the image is missing, unreadable, of a refused format or too large
 │    ├── NotAnImageError    the bytes are no image format at all
 │    └── DecryptionError    an encrypted input (TDX task) with a bad key, or a plain input given a key
 ├── DownloadError   an URL could not be fetched within the limits
 ├── WeightsError    no weights file, or a file that is not Mask R-CNN COCO weights
 └── ModelError      the model could not be built or could not run
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker reports to the requester."""

    exit_code = 1


class OptionError(WorkerError):
    """A command-line or iexec_args option is unknown or has a bad value."""

    exit_code = 2


class InputError(WorkerError):
    """The input image is missing, unreadable, of a refused format or too large."""

    exit_code = 3


class NotAnImageError(InputError):
    """The input's bytes are not an image format that can be read."""


class DecryptionError(InputError):
    """The task was given an input key (IEXEC_REQUESTER_SECRET_1) but the input cannot be decrypted with it,
    or the key is malformed."""


class DownloadError(WorkerError):
    """An URL could not be downloaded within the size and time limits."""

    exit_code = 4


class WeightsError(WorkerError):
    """No weights file is available, or the file is not Mask R-CNN COCO weights."""

    exit_code = 5


class ModelError(WorkerError):
    """The model could not be built or inference failed."""

    exit_code = 6
