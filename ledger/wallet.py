"""The bot's custodial hot wallet: one encrypted keystore file (eth-account, scrypt).

The private key exists in clear only in memory: it is written nowhere but the encrypted keystore
(created with os.open mode 0600, never chmod-ed after), never logged, never put in an error message.
The password comes from an environment variable (its name chosen by the caller, e.g. WALLET_PASSWORD),
a password file, or an interactive prompt.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.errors import WalletError

DEFAULT_SCRYPT_N = 2**18  # eth-account's default work factor; tests pass a smaller one


def read_password(
    *,
    env_var: str | None = "WALLET_PASSWORD",
    password_file: str | os.PathLike[str] | None = None,
    prompt: str | None = "Keystore password: ",
    confirm: bool = False,
) -> str:
    """The keystore password: from `password_file` if given, else env var `env_var`, else a prompt.

    A password file's trailing newline is dropped. Raises WalletError if none is available or empty.
    """
    password: str | None = None
    if password_file is not None:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise WalletError(f"cannot read password file {password_file}: {exc.strerror}") from None
    elif env_var and os.environ.get(env_var):
        password = os.environ[env_var]
    elif prompt is not None:
        try:
            password = getpass.getpass(prompt)
            if confirm and getpass.getpass("Repeat the password: ") != password:
                raise WalletError("the two passwords differ")
        except EOFError:
            raise WalletError("no password: set the environment variable, a password file, or use a terminal") from None
    if not password:
        raise WalletError("no keystore password given (empty)")
    return password


def _write_new(path: Path, keystore: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WalletError(f"{path} exists already; refusing to overwrite a keystore") from None
    except OSError as exc:
        raise WalletError(f"cannot create keystore {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(keystore, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _save(path: str | os.PathLike[str], account: LocalAccount, password: str, scrypt_n: int) -> str:
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    _write_new(Path(path), keystore)
    return account.address


def create_wallet(path: str | os.PathLike[str], password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> str:
    """Generate a new key, save it encrypted at `path` (mode 0600, never overwritten); return its address."""
    if not password:
        raise WalletError("refusing an empty keystore password")
    return _save(path, Account.create(), password, scrypt_n)


def import_wallet(
    path: str | os.PathLike[str], private_key: str, password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> str:
    """Encrypt an existing hex private key into a keystore at `path`; return its address."""
    if not password:
        raise WalletError("refusing an empty keystore password")
    try:
        account = Account.from_key(private_key.strip())
    except Exception:  # noqa: BLE001 - the library's message may echo the key: never pass it on
        raise WalletError("not a valid private key (expected 32 bytes of hex)") from None
    return _save(path, account, password, scrypt_n)


def _read_keystore(path: str | os.PathLike[str]) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WalletError(f"no keystore at {path}; create one with `python -m ledger wallet new`") from None
    except (OSError, ValueError) as exc:
        raise WalletError(f"{path} is not a readable keystore: {type(exc).__name__}") from None
    if not isinstance(data, dict) or ("crypto" not in data and "Crypto" not in data):
        raise WalletError(f"{path} is not an Ethereum keystore")
    return data


def wallet_address(path: str | os.PathLike[str]) -> str:
    """The checksummed address stored in a keystore, without decrypting it."""
    data = _read_keystore(path)
    address = data.get("address")
    if not isinstance(address, str):
        raise WalletError(f"{path} does not record its address")
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + address.removeprefix("0x"))


def load_wallet(path: str | os.PathLike[str], password: str) -> LocalAccount:
    """Decrypt the keystore at `path`. Raises WalletError on a wrong password or a bad file."""
    data = _read_keystore(path)
    try:
        key = Account.decrypt(data, password)
    except ValueError:
        raise WalletError(f"wrong password for keystore {path}") from None
    except Exception as exc:  # noqa: BLE001 - any decrypt failure is a keystore we cannot open; its type is named, never its text
        raise WalletError(f"cannot decrypt keystore {path}: {type(exc).__name__}") from None
    return Account.from_key(key)
