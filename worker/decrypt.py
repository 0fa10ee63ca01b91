"""The task's encrypted input (TDX deals): iExec's dataset encryption, undone inside the enclave.

When the requester gives the task a secret, iExec hands it to the app as `IEXEC_REQUESTER_SECRET_1`: here the
base64 of a 32-byte AES key. The input (the task's input file, or an `--url` download) is then the file as
the iExec SDK's `dataset.encrypt` writes it (`iexec/src/common/utils/encryption-utils.js`,
`encryptAes256Cbc`): a random 16-byte IV, then AES-256-CBC of the file with PKCS#7 padding (node-forge's
CBC mode). It is decrypted in memory before any check of the image; the plain bytes are never written to
disk.

It must never put the key (or any part of it) in a message, and never import anything of the bot's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from worker import limits
from worker.errors import DecryptionError

SECRET_ENV = "IEXEC_REQUESTER_SECRET_1"
IV_BYTES = 16
BLOCK_BYTES = 16
KEY_BYTES = 32
#: the largest encrypted file that can hold an accepted image (IV + a full block of padding)
MAX_ENCRYPTED_BYTES = limits.MAX_IMAGE_BYTES + IV_BYTES + BLOCK_BYTES

WRONG_KEY = f"The input could not be decrypted with the key given in {SECRET_ENV} (a different key, or a damaged file)."
PLAIN_INPUT = (
    f"The input is not encrypted, but the task was given a key in {SECRET_ENV}: "
    "encrypt the image with that key (iExec dataset format, AES-256-CBC) before sending it."
)
NOT_AN_IMAGE = (
    f"The input was decrypted with the key given in {SECRET_ENV} but is not an image: "
    "the key is probably not the one it was encrypted with."
)

# the first bytes of the image formats the worker accepts (limits.ALLOWED_FORMATS)
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def input_key(env: Mapping[str, str]) -> bytes | None:
    """The input key from `IEXEC_REQUESTER_SECRET_1`, or None when the task has no such secret.

    Raises DecryptionError when it is set but is not the base64 of 32 bytes (the message never quotes it).
    """
    value = env.get(SECRET_ENV)
    if value is None:
        return None
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise DecryptionError(
            f"The key given in {SECRET_ENV} is not a base64-encoded 256-bit AES key "
            "(the format of iExec's dataset keys); the input cannot be decrypted."
        )
    return key


def _looks_plain(blob: bytes) -> bool:
    if blob.startswith(_IMAGE_MAGIC):
        return True
    return blob[:4] == b"RIFF" and blob[8:12] == b"WEBP"


def decrypt_input(blob: bytes, key: bytes) -> bytes:
    """The plain bytes of an input encrypted like the SDK's `dataset.encrypt`. Raises DecryptionError."""
    if not blob:
        raise DecryptionError("The input file is empty.")
    if len(blob) > MAX_ENCRYPTED_BYTES:
        raise DecryptionError(
            f"The encrypted input is too large ({len(blob) // 1_000_000} MB); the image "
            f"limit is {limits.MAX_IMAGE_BYTES // 1_000_000} MB."
        )
    body = blob[IV_BYTES:]
    if len(blob) < IV_BYTES + BLOCK_BYTES or len(body) % BLOCK_BYTES:
        raise DecryptionError(PLAIN_INPUT if _looks_plain(blob) else WRONG_KEY)
    # imported here: a task without a secret never loads the crypto library
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:IV_BYTES])).decryptor()
    unpadder = padding.PKCS7(BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(decryptor.update(body) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:  # bad PKCS#7 padding: another key, or a file that was never encrypted
        raise DecryptionError(PLAIN_INPUT if _looks_plain(blob) else WRONG_KEY) from None


__all__ = ["MAX_ENCRYPTED_BYTES", "SECRET_ENV", "decrypt_input", "input_key"]
