"""iExec PoCo v5/v6 orders: typed values, EIP-712 hashing and signing, market JSON, builders.

The four order types accept every value the protocol accepts (any bytes32 tag, any uint256, any string as
params) and normalise them once at construction (addresses checksummed, tag and salt as 32 bytes, sign as
bytes). What *we* send is checked by the builders: `build_params` knows only the protocol's keys and
`build_request_order` makes the bot's one-shot request order (workerpool open, volume 1, salt from the job
id, so the same job always yields the same order and the same hash).

Hashes are computed here (typeHash, struct hash, 0x1901 prefix) exactly as `IexecLibOrders_v5` does; tests
check them against eth-account's `encode_typed_data`, the hub's `OrdersMatched` event and the JS SDK.
This module never logs and never keeps a private key: `sign()` uses the key for one call only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from functools import lru_cache
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

from eth_keys.datatypes import PrivateKey, Signature
from eth_utils import is_hex_address, keccak, to_checksum_address

from iexec.errors import OrderError, ParamsError

UINT256_MAX = 2**256 - 1
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
ZERO_BYTES32 = b"\x00" * 32
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

OrderT = TypeVar("OrderT", bound="_Order")


# ----------------------------------------------------------------------------------------------- values


def _address(name: str, value: Any) -> str:
    if isinstance(value, (bytes, bytearray)) and len(value) == 20:
        return to_checksum_address(bytes(value))
    if not isinstance(value, str) or not is_hex_address(value):
        raise OrderError(name, f"not an address (0x + 40 hex digits): {value!r}")
    body = value[2:] if value[:2] in ("0x", "0X") else value
    checksummed = to_checksum_address("0x" + body.lower())
    mixed = body != body.lower() and body != body.upper()
    if mixed and "0x" + body != checksummed:
        raise OrderError(name, f"bad EIP-55 checksum: {value!r}")
    return checksummed


def _uint(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OrderError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if not 0 <= value <= UINT256_MAX:
        raise OrderError(name, f"out of uint256 range: {value}")
    return value


def _bytes32(name: str, value: Any) -> bytes:
    if isinstance(value, bool):
        raise OrderError(name, "must be 32 bytes, a 0x-hex string of 32 bytes or a uint256")
    if isinstance(value, int):
        return _uint(name, value).to_bytes(32, "big")
    if isinstance(value, str):
        raw = _hex_bytes(name, value)
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise OrderError(name, f"must be bytes32, got {type(value).__name__}")
    if len(raw) != 32:
        raise OrderError(name, f"must be exactly 32 bytes, got {len(raw)}")
    return raw


def _hex_bytes(name: str, value: str) -> bytes:
    body = value[2:] if value[:2] in ("0x", "0X") else None
    if body is None:
        raise OrderError(name, f"hex string must start with 0x: {value!r}")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise OrderError(name, f"not valid hex: {value!r}") from None


def _sign_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _hex_bytes("sign", value) if value not in ("", "0x") else b""
    raise OrderError("sign", f"must be bytes or a 0x-hex string, got {type(value).__name__}")


_NORMALISERS = {"address": _address, "uint256": _uint, "bytes32": _bytes32}


# ----------------------------------------------------------------------------------------------- domain


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain of a hub: `iExecODB` version `5.0.0` on a chain, verified by the hub."""

    chain_id: int
    verifying_contract: str
    name: str = "iExecODB"
    version: str = "5.0.0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain_id", _uint("chain_id", self.chain_id))
        object.__setattr__(self, "verifying_contract", _address("verifying_contract", self.verifying_contract))
        for attr in ("name", "version"):
            if not isinstance(getattr(self, attr), str):
                raise OrderError(attr, "must be a string")

    @property
    def separator(self) -> bytes:
        """The domain separator (what the hub's `eip712domain_separator()` returns)."""
        return _domain_separator(self)

    def to_typed_data(self) -> dict[str, Any]:
        """The domain as an EIP-712 JSON object (for eth-account and wallets)."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


@lru_cache(maxsize=64)
def _domain_separator(domain: Domain) -> bytes:
    return keccak(
        keccak(text=_DOMAIN_TYPE)
        + keccak(text=domain.name)
        + keccak(text=domain.version)
        + domain.chain_id.to_bytes(32, "big")
        + bytes(12)
        + bytes.fromhex(domain.verifying_contract[2:])
    )


# ----------------------------------------------------------------------------------------------- orders


def _encode_field(soltype: str, value: Any) -> bytes:
    if soltype == "address":
        return bytes(12) + bytes.fromhex(value[2:])
    if soltype == "uint256":
        return value.to_bytes(32, "big")
    if soltype == "bytes32":
        return value
    return keccak(value.encode("utf-8"))  # string


class _Order:
    """Shared behaviour of the four order dataclasses (fields are declared in protocol order)."""

    TYPE_NAME: ClassVar[str]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass (dataclasses.replace works)
    sign: bytes

    def __post_init__(self) -> None:
        for name, soltype in self.FIELDS:
            value = getattr(self, name)
            if soltype == "string":
                if not isinstance(value, str):
                    raise OrderError(name, f"must be a string, got {type(value).__name__}")
                continue
            object.__setattr__(self, name, _NORMALISERS[soltype](name, value))
        object.__setattr__(self, "sign", _sign_bytes(self.sign))

    @classmethod
    def type_string(cls) -> str:
        """The EIP-712 type string, e.g. `AppOrder(address app,...,bytes32 salt)`."""
        members = ",".join(f"{soltype} {name}" for name, soltype in cls.FIELDS)
        return f"{cls.TYPE_NAME}({members})"

    @classmethod
    def type_hash(cls) -> bytes:
        """keccak of the type string, as the contract's `*_TYPEHASH` constant."""
        return _type_hash(cls.type_string())

    def struct_hash(self) -> bytes:
        """The EIP-712 `hashStruct` of the order (the signature is not part of it)."""
        parts = [self.type_hash()]
        parts.extend(_encode_field(soltype, getattr(self, name)) for name, soltype in self.FIELDS)
        return keccak(b"".join(parts))

    def hash(self, domain: Domain) -> bytes:
        """The order's 32-byte EIP-712 hash, as the hub, its events and the JS SDK compute it."""
        return keccak(b"\x19\x01" + domain.separator + self.struct_hash())

    def sign_with(self: OrderT, private_key: Any, domain: Domain) -> OrderT:
        """Alias of `sign()` usable on instances whose `.sign` attribute shadows the method."""
        key = _private_key(private_key)
        signature = key.sign_msg_hash(self.hash(domain))
        r, s, v = signature.r, signature.s, signature.v + 27
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
        return dataclasses.replace(self, sign=raw)

    def signer(self, domain: Domain) -> str:
        """The address that produced `.sign` (65-byte r||s||v or 64-byte EIP-2098); raises OrderError."""
        return recover_signer(self.hash(domain), bytes(self.sign))

    def is_signed_by(self, address: str, domain: Domain) -> bool:
        """True when `.sign` is a valid ECDSA signature of this order by `address`."""
        try:
            return self.signer(domain) == _address("address", address)
        except OrderError:
            return False

    def to_tuple(self) -> tuple[Any, ...]:
        """The order as the hub ABI's tuple (fields in order, then `sign`)."""
        return (*(getattr(self, name) for name, _ in self.FIELDS), bytes(self.sign))

    def to_typed_data(self, domain: Domain) -> dict[str, Any]:
        """The full EIP-712 message (for eth-account's `encode_typed_data(full_message=...)`)."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                self.TYPE_NAME: [{"name": n, "type": t} for n, t in self.FIELDS],
            },
            "primaryType": self.TYPE_NAME,
            "domain": domain.to_typed_data(),
            "message": {n: getattr(self, n) for n, _ in self.FIELDS},
        }

    def to_market_json(self) -> dict[str, Any]:
        """The order as the market API's JSON: addresses, ints as numbers, tag/salt/sign as 0x-hex."""
        out: dict[str, Any] = {}
        for name, soltype in self.FIELDS:
            value = getattr(self, name)
            out[name] = "0x" + value.hex() if soltype == "bytes32" else value
        out["sign"] = "0x" + bytes(self.sign).hex()
        return out

    @classmethod
    def from_market_json(cls: type[OrderT], data: Mapping[str, Any]) -> OrderT:
        """Parse the market API's JSON of one order; missing or malformed fields raise OrderError."""
        if not isinstance(data, Mapping):
            raise OrderError(cls.TYPE_NAME, f"expected a JSON object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for name, soltype in cls.FIELDS:
            if name not in data:
                raise OrderError(name, f"missing from the {cls.TYPE_NAME} JSON")
            value = data[name]
            if soltype == "uint256" and isinstance(value, str) and value.isdigit():
                value = int(value)  # some APIs send big numbers as decimal strings
            kwargs[name] = value
        kwargs["sign"] = data.get("sign", b"")
        return cls(**kwargs)


# `sign` is a dataclass field (the signature) and also the name of the signing method in the required API.
# A descriptor serves both: on the class and on an unsigned instance, `order.sign(key, domain)` signs; the
# stored bytes are returned as-is when the attribute is read for data (see _SignField).
class _SignValue(bytes):
    """The stored signature bytes, callable to produce a signed copy of the order (`order.sign(k, d)`)."""

    _order: Any

    def __new__(cls, raw: bytes, order: Any) -> _SignValue:
        obj = super().__new__(cls, raw)
        obj._order = order
        return obj

    def __call__(self, private_key: Any, domain: Domain) -> Any:
        return self._order.sign_with(private_key, domain)


class _SignField:
    """Data descriptor: stores the signature bytes, reads them back as a callable `_SignValue`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_sign_raw"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return b""  # the dataclass default
        raw = obj.__dict__.get(self.slot, b"")
        return _SignValue(raw, obj) if isinstance(raw, bytes) else raw  # raw until __post_init__ ran

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = bytes(value) if isinstance(value, (bytes, bytearray)) else value


@lru_cache(maxsize=8)
def _type_hash(type_string: str) -> bytes:
    return keccak(text=type_string)


def _private_key(value: Any) -> PrivateKey:
    raw = getattr(value, "key", value)  # eth-account LocalAccount
    if isinstance(raw, str):
        try:
            raw = bytes.fromhex(raw[2:] if raw[:2] in ("0x", "0X") else raw)
        except ValueError:
            raise OrderError("private_key", "not a hex private key") from None
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise OrderError("private_key", "must be 32 bytes, a hex string or an eth-account LocalAccount")
    if not 0 < int.from_bytes(raw, "big") < _SECP256K1_N:
        raise OrderError("private_key", "out of the secp256k1 range")
    return PrivateKey(bytes(raw))


def recover_signer(message_hash: bytes, sign: bytes) -> str:
    """The address whose key signed `message_hash` (65-byte r||s||v, v in 0/1/27/28, or EIP-2098)."""
    if len(sign) == 64:  # EIP-2098 compact: yParity in the top bit of s
        r, vs = int.from_bytes(sign[:32], "big"), int.from_bytes(sign[32:], "big")
        v, s = vs >> 255, vs & ((1 << 255) - 1)
    elif len(sign) == 65:
        r, s, v = int.from_bytes(sign[:32], "big"), int.from_bytes(sign[32:64], "big"), sign[64]
        v = v - 27 if v >= 27 else v
    else:
        raise OrderError("sign", f"expected a 65- or 64-byte ECDSA signature, got {len(sign)} bytes")
    if v not in (0, 1) or not 0 < r < _SECP256K1_N or not 0 < s < _SECP256K1_N:
        raise OrderError("sign", "not a valid ECDSA signature")
    try:
        signature = Signature(vrs=(v, r, s))
        return signature.recover_public_key_from_msg_hash(message_hash).to_checksum_address()
    except Exception as exc:  # noqa: BLE001 - eth_keys raises BadSignature, ValidationError and others
        raise OrderError("sign", f"signature does not recover: {exc}") from None


@dataclass(frozen=True)
class AppOrder(_Order):
    """An app owner's offer to run `app` at `appprice` nRLC per task."""

    TYPE_NAME: ClassVar[str] = "AppOrder"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("app", "address"),
        ("appprice", "uint256"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("datasetrestrict", "address"),
        ("workerpoolrestrict", "address"),
        ("requesterrestrict", "address"),
        ("salt", "bytes32"),
    )
    app: str
    appprice: int
    volume: int
    tag: Any
    datasetrestrict: str
    workerpoolrestrict: str
    requesterrestrict: str
    salt: Any
    sign: Any = _SignField()


@dataclass(frozen=True)
class DatasetOrder(_Order):
    """A dataset owner's offer to lend `dataset` at `datasetprice` nRLC per task."""

    TYPE_NAME: ClassVar[str] = "DatasetOrder"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("dataset", "address"),
        ("datasetprice", "uint256"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("apprestrict", "address"),
        ("workerpoolrestrict", "address"),
        ("requesterrestrict", "address"),
        ("salt", "bytes32"),
    )
    dataset: str
    datasetprice: int
    volume: int
    tag: Any
    apprestrict: str
    workerpoolrestrict: str
    requesterrestrict: str
    salt: Any
    sign: Any = _SignField()


@dataclass(frozen=True)
class WorkerpoolOrder(_Order):
    """A workerpool's offer to run `volume` tasks of `category` at `workerpoolprice` nRLC each."""

    TYPE_NAME: ClassVar[str] = "WorkerpoolOrder"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("workerpool", "address"),
        ("workerpoolprice", "uint256"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("category", "uint256"),
        ("trust", "uint256"),
        ("apprestrict", "address"),
        ("datasetrestrict", "address"),
        ("requesterrestrict", "address"),
        ("salt", "bytes32"),
    )
    workerpool: str
    workerpoolprice: int
    volume: int
    tag: Any
    category: int
    trust: int
    apprestrict: str
    datasetrestrict: str
    requesterrestrict: str
    salt: Any
    sign: Any = _SignField()


@dataclass(frozen=True)
class RequestOrder(_Order):
    """A requester's demand: run `app` (with `params`) for at most the given prices, `volume` times."""

    TYPE_NAME: ClassVar[str] = "RequestOrder"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("app", "address"),
        ("appmaxprice", "uint256"),
        ("dataset", "address"),
        ("datasetmaxprice", "uint256"),
        ("workerpool", "address"),
        ("workerpoolmaxprice", "uint256"),
        ("requester", "address"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("category", "uint256"),
        ("trust", "uint256"),
        ("beneficiary", "address"),
        ("callback", "address"),
        ("params", "string"),
        ("salt", "bytes32"),
    )
    app: str
    appmaxprice: int
    dataset: str
    datasetmaxprice: int
    workerpool: str
    workerpoolmaxprice: int
    requester: str
    volume: int
    tag: Any
    category: int
    trust: int
    beneficiary: str
    callback: str
    params: str
    salt: Any
    sign: Any = _SignField()


AnyOrder = AppOrder | DatasetOrder | WorkerpoolOrder | RequestOrder

NULL_DATASET_ORDER = DatasetOrder(
    dataset=ZERO_ADDRESS,
    datasetprice=0,
    volume=0,
    tag=ZERO_BYTES32,
    apprestrict=ZERO_ADDRESS,
    workerpoolrestrict=ZERO_ADDRESS,
    requesterrestrict=ZERO_ADDRESS,
    salt=ZERO_BYTES32,
    sign=b"",
)
"""The all-zero dataset order (with an empty signature) that `matchOrders` takes when no dataset is used."""


# ----------------------------------------------------------------------------------------------- tags


class Tag(IntFlag):
    """Bits of an order tag (a bytes32 bit map): TEE (bit 0), TDX (bit 3), GPU (bit 8)."""

    TEE = 1 << 0
    TDX = 1 << 3
    GPU = 1 << 8


def tag_from_bits(*, tee: bool = False, tdx: bool = False, gpu: bool = False) -> bytes:
    """A bytes32 tag with the named bits set; `tdx=True` implies the TEE bit (TDX TEE = 0x...09)."""
    value = (Tag.TEE if tee or tdx else 0) | (Tag.TDX if tdx else 0) | (Tag.GPU if gpu else 0)
    return int(value).to_bytes(32, "big")


def tag_to_int(tag: Any) -> int:
    """Any accepted tag form (bytes32, 0x-hex, int) as an int bit map; raises OrderError."""
    return int.from_bytes(_bytes32("tag", tag), "big")


def tags_compatible(workerpool_tag: Any, *required: Any) -> bool:
    """True when every bit of the required tags (app, dataset, request) is offered by the workerpool tag."""
    offered = tag_to_int(workerpool_tag)
    needed = 0
    for tag in required:
        needed |= tag_to_int(tag)
    return needed & ~offered == 0


# ----------------------------------------------------------------------------------------------- builders

PARAM_KEYS = (
    "iexec_args",
    "iexec_input_files",
    "iexec_result_storage_provider",
    "iexec_result_encryption",
    "iexec_secrets",
    "bulk_cid",
)
STORAGE_PROVIDERS = ("ipfs", "dropbox")


def _check_url(url: Any) -> str:
    if not isinstance(url, str):
        raise ParamsError("iexec_input_files", f"each entry must be a URL string, got {type(url).__name__}")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ParamsError("iexec_input_files", f"not an http(s) URL: {url[:80]!r}")
    return url


_SECRET_INDEX = re.compile(r"[1-9][0-9]*")


def _secret_index(key: Any) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and key > 0:
        return key
    if isinstance(key, str) and _SECRET_INDEX.fullmatch(key):
        return int(key)
    raise ParamsError("iexec_secrets", f"keys must be positive integers (1, 2, ...), got {str(key)[:20]!r}")


def build_params(*, tee: bool | None = None, **kwargs: Any) -> str:
    """The request order's `params` JSON from the protocol's keys only; unknown keys raise ParamsError.

    Keys: iexec_args (str), iexec_input_files (list of http(s) URLs), iexec_result_storage_provider
    ("ipfs" by default; "dropbox" only with TEE), iexec_result_encryption (bool), iexec_secrets
    ({n: name}, n a positive int or its decimal string, as the SDK's `paramsRequesterSecretsSchema`;
    TEE only), bulk_cid (str). Unset keys are left out, except the storage provider.
    `tee` is whether the order's tag has the TEE bit: False refuses secrets, result encryption and
    dropbox (as the SDK's `objParamsSchema` does for secrets and dropbox; encryption is refused too, since
    only an enclave encrypts results); None (tag not known yet) checks shapes only.
    """
    for key in kwargs:
        if key not in PARAM_KEYS:
            raise ParamsError(key, f"unknown key; the protocol knows only {', '.join(PARAM_KEYS)}")
    out: dict[str, Any] = {}
    args = kwargs.get("iexec_args")
    if args is not None:
        if not isinstance(args, str):
            raise ParamsError("iexec_args", "must be a string")
        out["iexec_args"] = args
    files = kwargs.get("iexec_input_files")
    if files is not None:
        if isinstance(files, (str, bytes)) or not isinstance(files, Sequence):
            raise ParamsError("iexec_input_files", "must be a list of URLs")
        out["iexec_input_files"] = [_check_url(url) for url in files]
    provider = kwargs.get("iexec_result_storage_provider", "ipfs")
    if provider not in STORAGE_PROVIDERS:
        raise ParamsError("iexec_result_storage_provider", f"must be one of {STORAGE_PROVIDERS}")
    if provider != "ipfs" and tee is False:
        raise ParamsError(
            "iexec_result_storage_provider",
            f"{provider!r} is only for TEE tasks (the request tag has no TEE bit); use 'ipfs'",
        )
    out["iexec_result_storage_provider"] = provider
    encryption = kwargs.get("iexec_result_encryption")
    if encryption is not None:
        if not isinstance(encryption, bool):
            raise ParamsError("iexec_result_encryption", "must be true or false")
        if encryption and tee is False:
            raise ParamsError(
                "iexec_result_encryption", "only a TEE task encrypts its result (the request tag has no TEE bit)"
            )
        out["iexec_result_encryption"] = encryption
    secrets = kwargs.get("iexec_secrets")
    if secrets is not None:
        if not isinstance(secrets, Mapping):
            raise ParamsError("iexec_secrets", "must map positive ints to secret names")
        if tee is False:
            raise ParamsError(
                "iexec_secrets", "requester secrets are only for TEE tasks (the request tag has no TEE bit)"
            )
        indexed: dict[int, str] = {}
        for k, v in secrets.items():
            n = _secret_index(k)
            if not isinstance(v, str) or not v:
                raise ParamsError("iexec_secrets", f"secret {n} must name a secret (a non-empty string)")
            if n in indexed:
                raise ParamsError("iexec_secrets", f"secret {n} is given twice")
            indexed[n] = v
        out["iexec_secrets"] = {str(n): indexed[n] for n in sorted(indexed)}
    if kwargs.get("bulk_cid") is not None:
        if not isinstance(kwargs["bulk_cid"], str):
            raise ParamsError("bulk_cid", "must be a string")
        out["bulk_cid"] = kwargs["bulk_cid"]
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def salt_for(job_id: str | int | bytes) -> bytes:
    """The deterministic salt of a caller's id: keccak256 of its UTF-8 (or raw) bytes."""
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int, bytes)):
        raise OrderError("salt", "job id must be a str, int or bytes")
    raw = job_id if isinstance(job_id, bytes) else str(job_id).encode("utf-8")
    if not raw:
        raise OrderError("salt", "job id must not be empty")
    return keccak(raw)


def _params_from(values: Mapping[str, Any], tee: bool) -> str:
    for key in values:
        if key not in PARAM_KEYS:
            raise ParamsError(str(key), f"unknown key; the protocol knows only {', '.join(PARAM_KEYS)}")
    return build_params(tee=tee, **values)


def build_request_order(
    app: str,
    requester: str,
    category: int,
    appmaxprice: int,
    workerpoolmaxprice: int,
    params: str | Mapping[str, Any],
    job_id: str | int | bytes,
    tag: Any = 0,
    trust: int = 0,
    datasetmaxprice: int = 0,
) -> RequestOrder:
    """The bot's request order for one job: workerpool open (0x0), no dataset, volume 1, beneficiary =
    requester, no callback, salt = keccak(job id). The same arguments always give the same order (and
    hash), so a job can never be ordered twice. `params` as a mapping is checked by `build_params`;
    as a string it must be JSON produced by `build_params` (checked the same way, never skipped). Both are
    checked against the tag: secrets, result encryption and dropbox need its TEE bit. Raises OrderError /
    ParamsError."""
    tee = bool(tag_to_int(tag) & Tag.TEE)
    if isinstance(params, Mapping):
        params = _params_from(params, tee)
    elif isinstance(params, str):
        try:
            decoded = json.loads(params)
        except ValueError:
            raise ParamsError("params", "not JSON; build it with build_params()") from None
        if not isinstance(decoded, dict):
            raise ParamsError("params", "must be a JSON object")
        params = _params_from(decoded, tee)
    else:
        raise ParamsError("params", "must be a JSON string or a mapping")
    return RequestOrder(
        app=app,
        appmaxprice=appmaxprice,
        dataset=ZERO_ADDRESS,
        datasetmaxprice=datasetmaxprice,
        workerpool=ZERO_ADDRESS,
        workerpoolmaxprice=workerpoolmaxprice,
        requester=requester,
        volume=1,
        tag=tag,
        category=category,
        trust=trust,
        beneficiary=requester,
        callback=ZERO_ADDRESS,
        params=params,
        salt=salt_for(job_id),
    )


__all__ = [
    "UINT256_MAX",
    "ZERO_ADDRESS",
    "ZERO_BYTES32",
    "Domain",
    "AppOrder",
    "DatasetOrder",
    "WorkerpoolOrder",
    "RequestOrder",
    "AnyOrder",
    "NULL_DATASET_ORDER",
    "Tag",
    "tag_from_bits",
    "tag_to_int",
    "tags_compatible",
    "PARAM_KEYS",
    "build_params",
    "build_request_order",
    "salt_for",
    "recover_signer",
]
