"""The task's input files as iExec names them, and their bytes made into a checked image (decrypted first in
a TDX task).

iExec downloads the request's `iexec_input_files` into `IEXEC_INPUT_FILES_FOLDER` (else `IEXEC_IN`) and
names them in `IEXEC_INPUT_FILE_NAME_1` ... `IEXEC_INPUT_FILE_NAME_<IEXEC_INPUT_FILES_NUMBER>`, in the
request's order. Nothing here imports TensorFlow; it must never write the plain bytes of an input to disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from worker import limits
from worker.decrypt import MAX_ENCRYPTED_BYTES, NOT_AN_IMAGE, decrypt_input
from worker.errors import DecryptionError, InputError, NotAnImageError
from worker.images import LoadedImage, load_image_bytes, read_input_file


def input_count(env: Mapping[str, str]) -> int:
    """How many input files the task declares (IEXEC_INPUT_FILES_NUMBER; 0 when unset). Raises InputError."""
    number = env.get("IEXEC_INPUT_FILES_NUMBER", "0").strip() or "0"
    if not number.isdigit():
        raise InputError(f"IEXEC_INPUT_FILES_NUMBER is not a number: {number!r}.")
    return int(number)


def input_name(env: Mapping[str, str], n: int) -> str:
    """The file name of input `n` (1-based), as iExec gives it; "" when missing."""
    return env.get(f"IEXEC_INPUT_FILE_NAME_{n}", "")


def input_path(env: Mapping[str, str], n: int) -> str:
    """The path of input file `n` (1-based). Raises InputError when its name is missing or not a plain name."""
    name = input_name(env, n)
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"The task declares an input file but IEXEC_INPUT_FILE_NAME_{n} is missing or invalid.")
    folder = env.get("IEXEC_INPUT_FILES_FOLDER") or env.get("IEXEC_IN") or "/iexec_in"
    return os.path.join(folder, name)


def decode_input(read: Callable[[int], bytes], key: bytes | None) -> LoadedImage:
    """The checked image from `read(max_bytes)` (a file or a download), decrypted with `key` first when the
    task has one. Raises InputError (DecryptionError) / DownloadError."""
    if key is None:
        return load_image_bytes(read(limits.MAX_IMAGE_BYTES))
    data = decrypt_input(read(MAX_ENCRYPTED_BYTES), key)
    try:
        return load_image_bytes(data)
    except NotAnImageError:
        raise DecryptionError(NOT_AN_IMAGE) from None


def load_input_file(env: Mapping[str, str], n: int, key: bytes | None) -> LoadedImage:
    """Input file `n` as a checked image. Raises InputError."""
    path = input_path(env, n)
    return decode_input(lambda max_bytes: read_input_file(path, max_bytes), key)


__all__ = ["decode_input", "input_count", "input_name", "input_path", "load_input_file"]
