"""TEE (TDX) client side: dataset-format encryption of inputs, and the requester's result key.

Formats, as the official iExec SDK 9.0.1 writes and reads them (files read in devnet/node_modules/iexec/src):

Dataset / input encryption (`common/utils/encryption-utils.js`, `encryptAes256Cbc`, which is what
`IExecDatasetModule.encrypt` calls): the key is 32 random bytes handled as **standard base64** (44 chars,
`generateAes256Key`; `base64Encoded256bitsKeySchema` refuses anything else). The encrypted file is
`IV (16 random bytes) ‖ AES-256-CBC(data)` with PKCS#7 padding (node-forge's default for CBC). The SDK has no
decrypt for it; the enclave side does the inverse. The same base64 key string is what iExec pushes to the SMS
for a dataset (`pushDatasetSecret`), so it is also the value we push as a requester secret (`dataset_key_secret`).

Result encryption (`common/utils/result-utils.js`, `decryptResult`; keys from `cli/cmd/iexec-result.js`
`generate-encryption-keypair`; push from `lib/IExecResultModule.js` + `common/sms/smsUtils.js`):
- key pair: RSA 4096, public key as SPKI PEM ("-----BEGIN PUBLIC KEY-----", 64-column base64 body),
  private key as PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----").
- pushed as the web2 secret `iexec-result-encryption-public-key` of the beneficiary, value = **base64 of the
  PEM text** (`formatEncryptionKey` base64s a PEM; the CLI base64s the .pub file's text, trailing newline
  included). `ResultKey.sms_value` is exactly that.
- the result archive (a zip) holds `aes-key.rsa` (≤ 1000 bytes) and `iexec_out.zip.aes` at its root.
  `aes-key.rsa` = RSA **PKCS#1 v1.5** (node-forge `privateKey.decrypt` default scheme, no OAEP) encryption of
  the raw 32-byte AES key; legacy form: the same but base64 text inside, holding the base64 of the key.
  `iexec_out.zip.aes` = IV (16 bytes) ‖ AES-256-CBC(iexec_out.zip), PKCS#7 padding. (A 16-byte legacy key
  means AES-128-ECB over base64 text; decrypt_result reads that too.) The output is the plain iexec_out.zip.

Every failure to decrypt raises DecryptionError (a TeeError and an UnsafeArchive) with a message saying what
was wrong; no `cryptography` exception escapes. Nothing here logs or formats a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import zipfile
import zlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from iexec.errors import DecryptionError, ResultKeyMissing, TeeError

__all__ = [
    "RESULT_KEY_SECRET",
    "TeeError",
    "DecryptionError",
    "ResultKeyMissing",
    "new_dataset_key",
    "dataset_key_secret",
    "encrypt_dataset",
    "decrypt_dataset",
    "ResultKey",
    "is_encrypted_result",
    "ENC_KEY_FILE",
    "ENC_RESULT_FILE",
    "decrypt_if_encrypted",
]

#: Name of the beneficiary's web2 secret holding the result encryption public key (`secrets-utils.js`).
RESULT_KEY_SECRET = "iexec-result-encryption-public-key"
ENC_KEY_FILE = "aes-key.rsa"
ENC_RESULT_FILE = "iexec_out.zip.aes"
_ENC_KEY_MAX = 1000  # the SDK's ENC_KEY_MAX_SIZE
_ENC_RESULT_MAX = 1_000_000_000  # the SDK's ENC_RESULTS_MAX_SIZE (1 GB)
_IV = 16
_BLOCK = 16
_DERIVE_DOMAIN = b"iexec.tee.ResultKey.derive_key/v1\x00"


# ----------------------------------------------------------------------------------- dataset format


def new_dataset_key() -> bytes:
    """A fresh AES-256 key: 32 random bytes."""
    return os.urandom(32)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise TeeError("a dataset key is 32 bytes (AES-256)")
    return bytes(key)


def dataset_key_secret(key: bytes) -> str:
    """The key as iExec tools hand it around and push it to the SMS: standard base64 of the 32 bytes."""
    return base64.b64encode(_check_key(key)).decode("ascii")


def _cbc_decrypt(body: bytes, key: bytes, iv: bytes, what: str) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionError(
            f"{what} does not decrypt with this key (wrong key, damaged data, or a file that was never encrypted)"
        ) from None


def encrypt_dataset(data: bytes, key: bytes) -> bytes:
    """`data` in the SDK's dataset format: random IV ‖ AES-256-CBC(data) with PKCS#7 padding."""
    key = _check_key(key)
    iv = os.urandom(_IV)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(bytes(data)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def decrypt_dataset(blob: bytes, key: bytes) -> bytes:
    """The plain bytes of a file encrypted by `encrypt_dataset` or the SDK's `dataset.encrypt`.

    Raises DecryptionError when `blob` cannot be such a file (too short, not a whole number of blocks:
    e.g. a plain photo) or does not decrypt with `key`. As with any CBC format without a MAC, a wrong key
    is caught by the padding check only: about 1 time in 256 it passes and yields garbage, which the
    caller's own format check (an image decoder) then refuses.
    """
    key = _check_key(key)
    blob = bytes(blob)
    if len(blob) < _IV + _BLOCK or (len(blob) - _IV) % _BLOCK:
        raise DecryptionError(
            f"not an encrypted file ({len(blob)} bytes: expected a 16-byte IV and whole 16-byte blocks)"
        )
    return _cbc_decrypt(blob[_IV:], key, blob[:_IV], "the encrypted file")


# --------------------------------------------------------------------------------------- result key


def _zip_members(archive: bytes) -> dict[str, zipfile.ZipInfo] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            return {info.filename: info for info in zf.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None


def is_encrypted_result(archive: bytes) -> bool:
    """True when `archive` is a zip holding `aes-key.rsa` and `iexec_out.zip.aes` at its root."""
    members = _zip_members(bytes(archive))
    return members is not None and ENC_KEY_FILE in members and ENC_RESULT_FILE in members


def _read_member(zf: zipfile.ZipFile, name: str, cap: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > cap:
        raise DecryptionError(f"{name} in the encrypted result is too large ({info.file_size} bytes)")
    try:
        with zf.open(info) as fh:
            data = fh.read(cap + 1)
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        EOFError,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ) as exc:  # RuntimeError: a password-protected entry
        raise DecryptionError(f"{name} in the encrypted result cannot be read: {exc}") from None
    if len(data) > cap:
        raise DecryptionError(f"{name} in the encrypted result is too large (more than {cap} bytes)")
    return data


class ResultKey:
    """The requester's RSA key pair for iExec result encryption (beneficiary key)."""

    __slots__ = ("_derive_secret", "_key")

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TeeError("a result key is an RSA private key")
        self._key = private_key
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._derive_secret = hashlib.sha256(_DERIVE_DOMAIN + der).digest()

    def __repr__(self) -> str:
        return f"ResultKey(rsa{self._key.key_size})"

    @classmethod
    def generate(cls) -> ResultKey:
        """A fresh RSA-4096 key pair, as `iexec result generate-encryption-keypair` makes."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=4096))

    @property
    def public_pem(self) -> bytes:
        """The public key as SPKI PEM ("-----BEGIN PUBLIC KEY-----"), newline-terminated like the CLI's file."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def sms_value(self) -> str:
        """The exact web2 secret value the SDK pushes as `iexec-result-encryption-public-key`."""
        return base64.b64encode(self.public_pem).decode("ascii")

    def to_encrypted_pem(self, password: bytes) -> bytes:
        """The private key as password-encrypted PKCS#8 PEM (for the keystore folder)."""
        if not isinstance(password, (bytes, bytearray)) or not password:
            raise TeeError("a result key file needs a non-empty password")
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(bytes(password)),
        )

    @classmethod
    def from_encrypted_pem(cls, data: bytes, password: bytes) -> ResultKey:
        """Load a key written by `to_encrypted_pem`; TeeError on a wrong password or a damaged file."""
        if not isinstance(password, (bytes, bytearray)) or not password:
            raise TeeError("a result key file needs a non-empty password")
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            key = serialization.load_pem_private_key(bytes(data), password=bytes(password))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise TeeError("the result key file does not open: wrong password, or the file is damaged") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TeeError("the result key file does not hold an RSA key")
        return cls(key)

    def derive_key(self, label: str) -> bytes:
        """32 bytes: HMAC-SHA256(sha256(domain ‖ private key DER), label). Same key + label, same bytes."""
        if not isinstance(label, str) or not label:
            raise TeeError("derive_key needs a non-empty label")
        return hmac.new(self._derive_secret, label.encode("utf-8"), hashlib.sha256).digest()

    def _aes_key(self, enc_key: bytes) -> bytes:
        try:
            return self._key.decrypt(enc_key, asym_padding.PKCS1v15())
        except ValueError:
            pass
        try:  # legacy: the RSA block was stored as base64 text and held the base64 of the key
            inner = base64.b64decode(enc_key, validate=True)
            return base64.b64decode(self._key.decrypt(inner, asym_padding.PKCS1v15()), validate=True)
        except (ValueError, binascii.Error):
            raise DecryptionError(
                f"{ENC_KEY_FILE} does not decrypt with this result key (the task was encrypted for another key)"
            ) from None

    def decrypt_result(self, archive: bytes, *, max_size: int = _ENC_RESULT_MAX) -> bytes:
        """The plain iexec_out.zip from an encrypted result archive (aes-key.rsa + iexec_out.zip.aes).

        Same output as the SDK's `utils.decryptResult`. Raises DecryptionError for a plain (unencrypted)
        archive, a truncated one, another key's result, or an output that is not a zip. `max_size` caps
        the bytes read out of iexec_out.zip.aes (the SDK's cap, 1 GB, by default).
        """
        try:
            zf = zipfile.ZipFile(io.BytesIO(bytes(archive)))
        except (zipfile.BadZipFile, ValueError, OSError, EOFError):
            raise DecryptionError("the encrypted result is not a zip archive (truncated or damaged)") from None
        with zf:
            names = set(zf.namelist())
            missing = [n for n in (ENC_KEY_FILE, ENC_RESULT_FILE) if n not in names]
            if missing:
                raise DecryptionError(f"the result is not encrypted (no {' / '.join(missing)} in the archive)")
            enc_key = _read_member(zf, ENC_KEY_FILE, _ENC_KEY_MAX)
            enc_body = _read_member(zf, ENC_RESULT_FILE, min(max_size, _ENC_RESULT_MAX))
        aes_key = self._aes_key(enc_key)
        if len(aes_key) == 32:
            if len(enc_body) < _IV + _BLOCK or (len(enc_body) - _IV) % _BLOCK:
                raise DecryptionError(f"{ENC_RESULT_FILE} is truncated ({len(enc_body)} bytes)")
            plain = _cbc_decrypt(enc_body[_IV:], aes_key, enc_body[:_IV], ENC_RESULT_FILE)
        elif len(aes_key) == 16:  # legacy AES-128-ECB over base64 text
            try:
                body = base64.b64decode(enc_body, validate=False)
            except (ValueError, binascii.Error):
                raise DecryptionError(f"{ENC_RESULT_FILE} (legacy format) is not base64") from None
            if not body or len(body) % _BLOCK:
                raise DecryptionError(f"{ENC_RESULT_FILE} (legacy format) is truncated")
            decryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).decryptor()
            unpadder = padding.PKCS7(128).unpadder()
            try:
                plain = unpadder.update(decryptor.update(body) + decryptor.finalize()) + unpadder.finalize()
            except ValueError:
                raise DecryptionError(f"{ENC_RESULT_FILE} does not decrypt (damaged data)") from None
        else:
            raise DecryptionError(
                f"{ENC_KEY_FILE} does not decrypt with this result key (the task was encrypted for another key)"
            )
        if _zip_members(plain) is None:
            raise DecryptionError(
                f"{ENC_RESULT_FILE} decrypted to something that is not a zip (wrong key, or damaged data)"
            )
        return plain


def decrypt_if_encrypted(archive: bytes, key: ResultKey | None, *, max_size: int = _ENC_RESULT_MAX) -> bytes:
    """`archive` as is when it is not an encrypted result; else its plain zip (ResultKeyMissing without key)."""
    if not is_encrypted_result(archive):
        return archive
    if key is None:
        raise ResultKeyMissing("the result is encrypted (TDX task) and no result key was given to open it")
    return key.decrypt_result(archive, max_size=max_size)
