"""Proof that a user owns an address: a message binding a Telegram user, the bot's wallet, a chain and a nonce.

    request = LinkRequest(telegram_user_id=42, deposit_address=hot_wallet, chain_id=421614, nonce=nonce)
    request.typed_data()        # EIP-712 (eth_signTypedData_v4) - preferred
    request.text()              # the same fields as text, for EIP-191 personal_sign
    proof = verify_link(request, signature, address=None)   # LinkProof(address, form) or LinkProofError

The EIP-712 domain is {name: "iExec segmentation bot", version: "1", chainId} and the message
`WalletLink(string statement, uint256 telegramUserId, address depositAddress, bytes32 nonce)`; the text form
carries the same four values and the chain id. A signature made for another user, another wallet, another
chain or another nonce recovers another address and is refused. The nonce makes a proof one-time: the caller
keeps it (ledger `Links`) and uses it up when linking.

Without `address`, the signature is read as EIP-712 (a personal_sign signature recovers some unrelated
address, so the caller must then pass the address: `/link 0xADDRESS 0xSIGNATURE`). With `address`, either
form is accepted if it recovers that address. This module holds no key and never signs anything itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from eth_utils import keccak, to_checksum_address

from iexec.errors import LinkProofError, OrderError
from iexec.orders import recover_signer

DOMAIN_NAME = "iExec segmentation bot"
DOMAIN_VERSION = "1"
STATEMENT = "Link this address to my Telegram account: RLC I send from it to the deposit address is my credit."
TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
    ],
    "WalletLink": [
        {"name": "statement", "type": "string"},
        {"name": "telegramUserId", "type": "uint256"},
        {"name": "depositAddress", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ],
}
FORMS = ("eip712", "personal_sign")
_NONCE_RE = re.compile(r"0x[0-9a-f]{64}")
_SIG_RE = re.compile(r"0x(?:[0-9a-fA-F]{128}|[0-9a-fA-F]{130})")


@dataclass(frozen=True)
class LinkRequest:
    """What the user signs: who (Telegram user id), to whom (the bot's deposit address), where, and once."""

    telegram_user_id: int
    deposit_address: str
    chain_id: int
    nonce: str  # 0x + 64 hex, lowercase

    def __post_init__(self) -> None:
        if isinstance(self.telegram_user_id, bool) or not isinstance(self.telegram_user_id, int):
            raise LinkProofError("the Telegram user id must be an int")
        if self.telegram_user_id <= 0 or self.chain_id <= 0:
            raise LinkProofError("the Telegram user id and the chain id must be positive")
        if not isinstance(self.nonce, str) or not _NONCE_RE.fullmatch(self.nonce):
            raise LinkProofError("the nonce must be 0x and 64 lowercase hex digits")
        try:
            object.__setattr__(self, "deposit_address", to_checksum_address(self.deposit_address))
        except ValueError:
            raise LinkProofError("the deposit address is not an address") from None

    def typed_data(self) -> dict[str, Any]:
        """The full EIP-712 message, as `eth_signTypedData_v4` takes it (JSON-serialisable)."""
        return {
            "types": TYPES,
            "primaryType": "WalletLink",
            "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id},
            "message": {
                "statement": STATEMENT,
                "telegramUserId": self.telegram_user_id,
                "depositAddress": self.deposit_address,
                "nonce": self.nonce,
            },
        }

    def text(self) -> str:
        """The EIP-191 personal_sign form: every bound value on its own line."""
        return (
            f"{STATEMENT}\n"
            f"Telegram user: {self.telegram_user_id}\n"
            f"Deposit address: {self.deposit_address}\n"
            f"Chain id: {self.chain_id}\n"
            f"Nonce: {self.nonce}"
        )

    def signable(self, form: str) -> SignableMessage:
        """The message in `form` ("eip712" or "personal_sign"), for eth-account's `sign_message`."""
        if form == "eip712":
            return encode_typed_data(full_message=self.typed_data())
        if form == "personal_sign":
            return encode_defunct(text=self.text())
        raise LinkProofError(f"unknown signature form {form!r}; use one of {', '.join(FORMS)}")

    def digest(self, form: str) -> bytes:
        """The 32-byte hash the signature is over."""
        message = self.signable(form)
        return keccak(b"\x19" + message.version + message.header + message.body)


@dataclass(frozen=True)
class LinkProof:
    """A verified proof: the address (checksummed) and the form it was signed in."""

    address: str
    form: str


def parse_signature(text: str | bytes) -> bytes:
    """A 65-byte (r, s, v) or 64-byte (EIP-2098) signature from bytes or 0x-hex text; LinkProofError otherwise."""
    if isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
    elif isinstance(text, str) and _SIG_RE.fullmatch(text.strip()):
        raw = bytes.fromhex(text.strip()[2:])
    else:
        raise LinkProofError("a signature is 0x followed by 130 hex digits")
    if len(raw) not in (64, 65):
        raise LinkProofError(f"a signature is 65 bytes, got {len(raw)}")
    return raw


def recover_link_signer(request: LinkRequest, signature: str | bytes, form: str) -> str:
    """The address (checksummed) whose key signed `request` in `form`. Raises LinkProofError."""
    try:
        return recover_signer(request.digest(form), parse_signature(signature))
    except OrderError:
        raise LinkProofError("the signature is not a valid ECDSA signature") from None


def verify_link(request: LinkRequest, signature: str | bytes, address: str | None = None) -> LinkProof:
    """Check that `signature` over `request` comes from `address` (EIP-712 or personal_sign).

    Without `address`, the EIP-712 signer is returned. Raises LinkProofError when the signature is malformed
    or was made by another address, over another request, user, wallet, chain or nonce.
    """
    if address is None:
        return LinkProof(recover_link_signer(request, signature, "eip712"), "eip712")
    try:
        wanted = to_checksum_address(address)
    except ValueError:
        raise LinkProofError(f"{address!r:.60} is not an address") from None
    for form in FORMS:
        if recover_link_signer(request, signature, form) == wanted:
            return LinkProof(wanted, form)
    raise LinkProofError(
        f"this signature was not made by {wanted} over the message for this user, wallet, chain and nonce"
    )
