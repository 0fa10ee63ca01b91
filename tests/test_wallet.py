"""The custodial hot wallet: encrypted keystore, 0600 file, passwords from env/file, wrong password."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from ledger import WalletError
from ledger.wallet import create_wallet, import_wallet, load_wallet, read_password, wallet_address

N = 2**10  # a small scrypt work factor keeps the tests fast; production uses 2**18
KEY = "0x" + "4c" * 32


def test_create_then_load(tmp_path: Path) -> None:
    path = tmp_path / "w" / "wallet.json"
    old = os.umask(0)
    try:
        address = create_wallet(path, "correct horse", scrypt_n=N)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["crypto"]["kdf"] == "scrypt"
    assert wallet_address(path) == address
    assert load_wallet(path, "correct horse").address == address


def test_import_keeps_key_only_encrypted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "wallet.json"
    address = import_wallet(path, KEY, "pw", scrypt_n=N)
    assert "4c4c4c4c" not in path.read_text()
    assert load_wallet(path, "pw").key.hex().removeprefix("0x") == "4c" * 32
    assert load_wallet(path, "pw").address == address
    assert "4c4c4c4c" not in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["wallet.json"]


def test_wrong_password_and_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    create_wallet(path, "right", scrypt_n=N)
    with pytest.raises(WalletError, match="wrong password"):
        load_wallet(path, "wrong")
    with pytest.raises(WalletError, match="refusing to overwrite"):
        create_wallet(path, "x", scrypt_n=N)
    with pytest.raises(WalletError, match="no keystore"):
        load_wallet(tmp_path / "missing.json", "x")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(WalletError, match="not a readable keystore"):
        load_wallet(tmp_path / "junk.json", "x")
    with pytest.raises(WalletError, match="not a valid private key") as info:
        import_wallet(tmp_path / "other.json", "0x1234zz" + "ab" * 28, "pw", scrypt_n=N)
    assert "abab" not in str(info.value)
    with pytest.raises(WalletError, match="empty"):
        create_wallet(tmp_path / "e.json", "", scrypt_n=N)


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw.txt"
    secret.write_text("from-file\n")
    monkeypatch.setenv("MY_WALLET_PW", "from-env")
    assert read_password(env_var="MY_WALLET_PW", password_file=secret) == "from-file"
    assert read_password(env_var="MY_WALLET_PW") == "from-env"
    monkeypatch.delenv("MY_WALLET_PW")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "typed")
    assert read_password(env_var="MY_WALLET_PW") == "typed"
    with pytest.raises(WalletError, match="no keystore password"):
        read_password(env_var="MY_WALLET_PW", prompt=None)
    with pytest.raises(WalletError, match="cannot read password file"):
        read_password(password_file=tmp_path / "nope")
