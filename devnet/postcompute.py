"""The devnet's stand-in for iExec's TEE post-compute: encrypt a task's result archive to its beneficiary.

    encrypted = encrypt_result(plain_zip, sms_value)   # sms_value: the web2 secret as the SDK pushed it

Format (what the official SDK 9.0.1 `utils.decryptResult` opens, read from
devnet/node_modules/iexec/src/common/utils/result-utils.js): a zip holding, at its root,
- `aes-key.rsa`: a fresh 32-byte AES key encrypted with the beneficiary's RSA public key, RSAES-PKCS1-v1_5
  (node-forge's default for `privateKey.decrypt`), raw bytes (not base64: that form is the SDK's legacy
  fallback);
- `iexec_out.zip.aes`: 16-byte random IV followed by AES-256-CBC (PKCS#7 padding) of the plain result zip.
The SMS value of `iexec-result-encryption-public-key` is base64 of the PEM public key (the SDK's
`formatEncryptionKey`); a bare PEM is accepted too.

Written from the SDK's reader, never importing `iexec` (the bot's client is checked against this, and this
against the SDK). Pure functions: no network, no chain; the AES key lives only in this call.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import zipfile

from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "ENC_KEY_FILE",
    "ENC_RESULT_FILE",
    "PostComputeError",
    "RESULT_KEY_SECRET",
    "encrypt_result",
    "load_public_key",
]

RESULT_KEY_SECRET = "iexec-result-encryption-public-key"
ENC_KEY_FILE = "aes-key.rsa"
ENC_RESULT_FILE = "iexec_out.zip.aes"


class PostComputeError(ValueError):
    """The beneficiary's key cannot be used (not a PEM RSA public key, base64 or not)."""


def load_public_key(sms_value: str) -> RSAPublicKey:
    """The RSA public key from the SMS value (base64 of a PEM, or a PEM). Raises PostComputeError."""
    text = sms_value.strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = base64.b64decode(text, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise PostComputeError("the result encryption key is neither a PEM nor base64 of a PEM") from None
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, TypeError):
        raise PostComputeError("the result encryption key is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise PostComputeError("the result encryption key is not an RSA key")
    return key


def encrypt_result(plain_zip: bytes, sms_value: str) -> bytes:
    """The encrypted result archive (see the module docstring). Raises PostComputeError for a bad key."""
    public_key = load_public_key(sms_value)
    aes_key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(plain_zip) + padder.finalize()) + encryptor.finalize()
    wrapped_key = public_key.encrypt(aes_key, asym_padding.PKCS1v15())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # ciphertext does not compress
        zf.writestr(ENC_KEY_FILE, wrapped_key)
        zf.writestr(ENC_RESULT_FILE, iv + body)
    return buf.getvalue()
