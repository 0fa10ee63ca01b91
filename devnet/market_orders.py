"""The market stand-in's own view of orders: parsing the API's order JSON, the EIP-712 order hash, and the
API's login challenge (its typed data, digest and signer).

Written from the specs, not from our client (a stand-in that shared our client's hashing would agree with
its bugs): the order structs are PoCo's `IexecLibOrders_v5` (AppOrder, DatasetOrder, WorkerpoolOrder,
RequestOrder; members in struct order, `sign` outside the hash), hashed as EIP-712 typed data under the hub's
domain (what the hub's `domain()` returns: name, version, chainId, verifyingContract), as the official SDK's
`hashApporder` & co do; the challenge is iexec-market-api's `Challenge(string challenge)` under the domain
`{name: "iExec Gateway", version: "1", chainId}`. Hashing and recovery are eth_account's.
"""

from __future__ import annotations

import copy
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import is_hex_address, keccak, to_checksum_address

__all__ = [
    "ORDER_FIELDS",
    "challenge_digest",
    "challenge_typed_data",
    "order_hash",
    "parse_order",
    "parse_tag",
    "recover_signer",
]

UINT256_MAX = 2**256 - 1

#: IexecLibOrders_v5's order structs: EIP-712 type name -> members (name, Solidity type), in struct order.
ORDER_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "AppOrder": (
        ("app", "address"),
        ("appprice", "uint256"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("datasetrestrict", "address"),
        ("workerpoolrestrict", "address"),
        ("requesterrestrict", "address"),
        ("salt", "bytes32"),
    ),
    "DatasetOrder": (
        ("dataset", "address"),
        ("datasetprice", "uint256"),
        ("volume", "uint256"),
        ("tag", "bytes32"),
        ("apprestrict", "address"),
        ("workerpoolrestrict", "address"),
        ("requesterrestrict", "address"),
        ("salt", "bytes32"),
    ),
    "WorkerpoolOrder": (
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
    ),
    "RequestOrder": (
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
    ),
}

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _address(name: str, value: Any) -> str:
    if not isinstance(value, str) or not is_hex_address(value):
        raise ValueError(f"{name} must be an address")
    body = value[2:]
    checksummed = to_checksum_address(value)
    if body != body.lower() and body != body.upper() and value != checksummed:
        raise ValueError(f"{name} has a bad checksum")
    return checksummed


def _uint(name: str, value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT256_MAX:
        raise ValueError(f"{name} must be a uint256")
    return value


def _hex(name: str, value: Any, size: int | None) -> str:
    """A 0x-hex string (of exactly `size` bytes if given), lower-cased."""
    if not isinstance(value, str) or value[:2] not in ("0x", "0X"):
        raise ValueError(f"{name} must be a 0x-hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError(f"{name} must be a 0x-hex string") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes")
    return "0x" + raw.hex()


def _bytes32(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "0x" + _uint(name, value).to_bytes(32, "big").hex()
    return _hex(name, value, 32)


def parse_order(type_name: str, data: Any) -> dict[str, Any]:
    """The order JSON normalised (addresses checksummed, uint256 as ints, bytes32 and `sign` as lower-case
    0x-hex, `params` a string); a missing or malformed member raises ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"a {type_name} must be a JSON object")
    out: dict[str, Any] = {}
    for name, soltype in ORDER_FIELDS[type_name]:
        if name not in data:
            raise ValueError(f"{name} is missing")
        value = data[name]
        if soltype == "address":
            out[name] = _address(name, value)
        elif soltype == "uint256":
            out[name] = _uint(name, value)
        elif soltype == "bytes32":
            out[name] = _bytes32(name, value)
        elif isinstance(value, str):
            out[name] = value
        else:
            raise ValueError(f"{name} must be a string")
    out["sign"] = _hex("sign", data.get("sign", "0x"), None)
    return out


def order_hash(type_name: str, order: dict[str, Any], domain: dict[str, Any]) -> bytes:
    """The EIP-712 hash of a parsed order under `domain` ({name, version, chainId, verifyingContract})."""
    fields = ORDER_FIELDS[type_name]
    message = {
        name: bytes.fromhex(order[name][2:]) if soltype == "bytes32" else order[name] for name, soltype in fields
    }
    typed = {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, type_name: [{"name": n, "type": t} for n, t in fields]},
        "primaryType": type_name,
        "domain": domain,
        "message": message,
    }
    return _digest(typed)


def _digest(typed: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=typed)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def parse_tag(value: str) -> int:
    """A bytes32 tag given as 0x-hex, as an int bit map; ValueError otherwise."""
    return int(_hex("tag", value, 32), 16)


def challenge_typed_data(chain_id: int, value: str) -> dict[str, Any]:
    """The EIP-712 challenge the market API hands out (chainId as a decimal string, as the real API)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Challenge": [{"name": "challenge", "type": "string"}],
        },
        "domain": {"name": "iExec Gateway", "version": "1", "chainId": str(chain_id)},
        "primaryType": "Challenge",
        "message": {"challenge": f"Sign this message to log into iExec Gateway: {value}"},
    }


def challenge_digest(typed: dict[str, Any]) -> bytes:
    """The EIP-712 digest a wallet signs for a challenge (its chainId, a decimal string, read as uint256)."""
    typed = copy.deepcopy(typed)
    typed["domain"]["chainId"] = int(typed["domain"]["chainId"])
    return _digest(typed)


def recover_signer(digest: bytes, signature_hex: str) -> str:
    """The address whose key signed `digest` (a 65-byte r||s||v signature as hex); ValueError if none."""
    try:
        return to_checksum_address(
            Account._recover_hash(digest, signature=bytes.fromhex(signature_hex.removeprefix("0x")))
        )
    except Exception:  # noqa: BLE001 - eth_account raises ValueError, BadSignature and others
        raise ValueError("the signature does not recover") from None
