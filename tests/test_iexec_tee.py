"""iexec.tee: dataset-format encryption and the result key, with the official JS SDK 9.0.1 as the peer.

The encrypted result is built here the way iExec's post-compute builds it (read from the SDK's
`decryptResult`): a random AES-256 key, RSA PKCS#1 v1.5 of it in `aes-key.rsa`, IV ‖ AES-256-CBC(PKCS#7) of
iexec_out.zip in `iexec_out.zip.aes`, both at the root of a zip.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from iexec.errors import DecryptionError, ResultKeyMissing, TeeError, UnsafeArchive
from iexec.results import ResultLimits, fetch_result
from iexec.tee import (
    RESULT_KEY_SECRET,
    ResultKey,
    dataset_key_secret,
    decrypt_dataset,
    decrypt_if_encrypted,
    encrypt_dataset,
    is_encrypted_result,
    new_dataset_key,
)
from tests.fixtures_market import make_zip, serve
from tests.sdk_peer import JS, run_sdk_script

SCRIPT = JS / "tee_sdk_peer.mjs"


@pytest.fixture(scope="module")
def key() -> ResultKey:
    return ResultKey.generate()


@pytest.fixture(scope="module")
def other_key() -> ResultKey:
    return ResultKey.generate()


def plain_pem(k: ResultKey) -> bytes:
    """The unencrypted PKCS#8 PEM of a ResultKey (what the SDK's decryptResult takes)."""
    loaded = serialization.load_pem_private_key(k.to_encrypted_pem(b"pw"), password=b"pw")
    return loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def out_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("computed.json", json.dumps({"deterministic-output-path": "/iexec_out/result.json"}))
        zf.writestr("result.json", json.dumps({"masks": [1, 2, 3]}) + " " * 5000)
        zf.writestr("mask.png", os.urandom(3000))
    return buf.getvalue()


def post_compute_encrypt(plain: bytes, public_pem: bytes, *, aes_key: bytes | None = None) -> bytes:
    """An encrypted result archive as iExec's post-compute writes it."""
    aes_key = aes_key or os.urandom(32)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("aes-key.rsa", public.encrypt(aes_key, asym_padding.PKCS1v15()))
        zf.writestr("iexec_out.zip.aes", body)
    return buf.getvalue()


def legacy_encrypt(plain: bytes, public_pem: bytes) -> bytes:
    """The legacy encrypted result the SDK still reads: AES-128-ECB over base64 text, key base64 twice."""
    aes_key = os.urandom(16)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    body = base64.b64encode(enc.update(padder.update(plain) + padder.finalize()) + enc.finalize())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("aes-key.rsa", base64.b64encode(public.encrypt(base64.b64encode(aes_key), asym_padding.PKCS1v15())))
        zf.writestr("iexec_out.zip.aes", body)
    return buf.getvalue()


# --- the SDK as the peer ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_formats_round_trip_with_the_js_sdk(tmp_path: Path, key: ResultKey, other_key: ResultKey) -> None:
    dkey = new_dataset_key()
    data = os.urandom(70_001)  # not a whole number of blocks
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "key.b64").write_text(dataset_key_secret(dkey))
    (tmp_path / "ours.enc").write_bytes(encrypt_dataset(data, dkey))
    plain = out_zip()
    (tmp_path / "result.zip").write_bytes(post_compute_encrypt(plain, key.public_pem))
    (tmp_path / "private.pem").write_bytes(plain_pem(key))
    (tmp_path / "wrong.pem").write_bytes(plain_pem(other_key))
    (tmp_path / "legacy.zip").write_bytes(legacy_encrypt(plain, key.public_pem))

    seen = await run_sdk_script(SCRIPT, {"MODE": "crypto", "DIR": str(tmp_path)}, timeout=120)

    # dataset format: the SDK's dataset.encrypt output opens with ours, ours opens as the format says
    assert decrypt_dataset((tmp_path / "sdk_dataset.enc").read_bytes(), dkey) == data
    assert (tmp_path / "ours.dec").read_bytes() == data
    # result: the SDK and we get the same iexec_out.zip out of the post-compute archive
    archive = (tmp_path / "result.zip").read_bytes()
    assert (tmp_path / "sdk_result.zip").read_bytes() == plain
    assert key.decrypt_result(archive) == plain
    assert (tmp_path / "sdk_legacy.zip").read_bytes() == plain
    assert key.decrypt_result((tmp_path / "legacy.zip").read_bytes()) == plain
    assert seen["wrongKey"] == "Failed to decrypt results key with beneficiary key"
    with pytest.raises(DecryptionError, match="another key"):
        other_key.decrypt_result(archive)
    # the public key has the shape of the CLI's generate-encryption-keypair output
    cli = (tmp_path / "cli.pub").read_bytes()
    ours = key.public_pem
    assert cli.startswith(b"-----BEGIN PUBLIC KEY-----\n") and ours.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert cli.endswith(b"\n-----END PUBLIC KEY-----\n") and ours.endswith(b"\n-----END PUBLIC KEY-----\n")
    assert [len(line) for line in cli.splitlines()] == [len(line) for line in ours.splitlines()]
    # what is pushed to the SMS: base64 of the PEM text, as pushResultEncryptionKey(pem) sends it
    assert base64.b64decode(key.sms_value) == ours
    assert RESULT_KEY_SECRET == "iexec-result-encryption-public-key"


# --- our side alone ----------------------------------------------------------------------------------


def test_dataset_key_secret_is_the_sdks_base64_key() -> None:
    dkey = new_dataset_key()
    assert len(dkey) == 32 and dkey != new_dataset_key()
    assert base64.b64decode(dataset_key_secret(dkey), validate=True) == dkey
    assert len(dataset_key_secret(dkey)) == 44
    with pytest.raises(TeeError, match="32 bytes"):
        dataset_key_secret(b"short")


def test_dataset_wrong_key_plain_and_truncated_input_are_clear_errors() -> None:
    dkey = new_dataset_key()
    photo = b"\x89PNG\r\n\x1a\n" + os.urandom(4993)
    blob = encrypt_dataset(photo, dkey)
    assert blob[:16] != encrypt_dataset(photo, dkey)[:16]  # fresh IV every time
    assert decrypt_dataset(blob, dkey) == photo
    with pytest.raises(DecryptionError, match="not an encrypted file"):
        decrypt_dataset(photo, dkey)
    with pytest.raises(DecryptionError, match="never encrypted"):
        # a plain file that happens to be block-aligned (fixed bytes and key: a random pair passes the
        # padding check 1 time in 256)
        decrypt_dataset(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 19 + b"\0" * 8, bytes(range(32)))
    with pytest.raises(DecryptionError, match="not an encrypted file"):
        decrypt_dataset(blob[:-5], dkey)
    with pytest.raises(DecryptionError, match="not an encrypted file"):
        decrypt_dataset(b"", dkey)
    wrong = 0
    for _ in range(20):  # a wrong key passes the padding check about 1 time in 256: count refusals
        try:
            decrypt_dataset(blob, new_dataset_key())
        except DecryptionError as exc:
            assert "wrong key" in str(exc)
            wrong += 1
    assert wrong >= 15


def test_result_key_file_round_trip_and_wrong_password(key: ResultKey) -> None:
    pem = key.to_encrypted_pem(b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    back = ResultKey.from_encrypted_pem(pem, b"correct horse")
    assert back.public_pem == key.public_pem
    assert back.derive_key("input:42") == key.derive_key("input:42")
    assert key.derive_key("input:42") != key.derive_key("input:43")
    assert len(key.derive_key("input:42")) == 32
    with pytest.raises(TeeError, match="wrong password"):
        ResultKey.from_encrypted_pem(pem, b"wrong")
    with pytest.raises(TeeError, match="wrong password"):
        ResultKey.from_encrypted_pem(pem[:200], b"correct horse")
    with pytest.raises(TeeError, match="non-empty password"):
        key.to_encrypted_pem(b"")
    assert "PRIVATE" not in repr(key) and "MII" not in repr(key)


def test_result_decryption_failures_are_decryption_errors(key: ResultKey, other_key: ResultKey) -> None:
    plain = out_zip()
    archive = post_compute_encrypt(plain, key.public_pem)
    assert is_encrypted_result(archive) and not is_encrypted_result(plain)
    assert not is_encrypted_result(b"not a zip at all")
    assert key.decrypt_result(archive) == plain
    assert decrypt_if_encrypted(archive, key) == plain
    assert decrypt_if_encrypted(plain, None) == plain  # a plain result passes untouched
    with pytest.raises(ResultKeyMissing, match="no result key"):
        decrypt_if_encrypted(archive, None)
    with pytest.raises(DecryptionError, match="not encrypted"):
        key.decrypt_result(plain)
    with pytest.raises(DecryptionError, match="not a zip"):
        key.decrypt_result(archive[: len(archive) // 2])
    with pytest.raises(DecryptionError, match="another key"):
        other_key.decrypt_result(archive)
    # a truncated iexec_out.zip.aes inside a well-formed zip
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        enc_key, body = zf.read("aes-key.rsa"), zf.read("iexec_out.zip.aes")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("aes-key.rsa", enc_key)
        zf.writestr("iexec_out.zip.aes", body[:-7])
    with pytest.raises(DecryptionError, match="truncated"):
        key.decrypt_result(buf.getvalue())
    # a payload that decrypts but is not a zip
    with pytest.raises(DecryptionError, match="not a zip"):
        key.decrypt_result(post_compute_encrypt(b"hello, not a zip", key.public_pem))
    # an entry flagged as password-protected (zipfile would raise RuntimeError)
    raw = bytearray(archive)
    raw[raw.find(b"PK\x03\x04") + 6] |= 1
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    with pytest.raises(DecryptionError, match="cannot be read"):
        key.decrypt_result(bytes(raw))
    # every one of these is a bad result for a caller that refunds on UnsafeArchive
    assert issubclass(DecryptionError, UnsafeArchive) and issubclass(ResultKeyMissing, DecryptionError)


# --- fetch_result opens encrypted results ------------------------------------------------------------


async def test_fetch_result_decrypts_before_reading(tmp_path: Path, key: ResultKey, other_key: ResultKey) -> None:
    plain = make_zip(
        {
            "iexec_out/computed.json": b'{"deterministic-output-path": "/iexec_out/seg.png"}',
            "iexec_out/seg.png": b"PNG-bytes",
        }
    )
    encrypted = post_compute_encrypt(plain, key.public_pem)
    bomb = post_compute_encrypt(
        make_zip({"iexec_out/computed.json": b"{}", "iexec_out/big": bytes(20 << 20)}), key.public_pem
    )
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (plain, encrypted, bomb)}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=blobs[request.match_info["cid"]])

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)

    def results(blob: bytes) -> bytes:
        return json.dumps({"storage": "ipfs", "location": f"/ipfs/{hashlib.sha256(blob).hexdigest()}"}).encode()

    async with serve(app) as gw:
        res = await fetch_result(results(encrypted), [gw], tmp_path / "ok", result_key=key)
        assert res.ok and res.deterministic_output is not None
        assert res.deterministic_output.read_bytes() == b"PNG-bytes"
        res = await fetch_result(results(plain), [gw], tmp_path / "plain", result_key=key)
        assert res.ok  # a standard task's plain result still reads with a key at hand
        with pytest.raises(ResultKeyMissing, match="no result key"):
            await fetch_result(results(encrypted), [gw], tmp_path / "nokey")
        with pytest.raises(DecryptionError, match="another key"):
            await fetch_result(results(encrypted), [gw], tmp_path / "wrong", result_key=other_key)
        with pytest.raises(UnsafeArchive):  # the decrypted zip goes through the same safe unzip
            await fetch_result(
                results(bomb), [gw], tmp_path / "bomb", result_key=key, limits=ResultLimits(max_total=5 << 20)
            )
    assert not (tmp_path / "nokey").exists()  # nothing unpacked from a result that did not open
