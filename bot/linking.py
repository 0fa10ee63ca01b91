"""The /link flow: a user proves once that they own an address; RLC sent from it becomes their credit.

    linking = Linking(book, LinkSettings(chain_id, hot_wallet, min_deposit_nrlc))
    request, text = linking.start(user_id)              # /link: a one-time message to sign, and how
    link = linking.finish(user_id, signature, address)  # the reply, or /link 0xADDRESS 0xSIGNATURE
    linking.unlink(user_id, address)                    # /unlink 0xADDRESS

The message binds the Telegram user id, the bot's wallet (the deposit address), the chain id and a nonce
(iexec.link); the nonce is kept in the books and used up by the link, in the same transaction (ledger
`Links.link`). One address belongs to one user: an address linked to someone else is refused. Every refusal
is a `LinkRefused` whose text is for the user and costs nothing.

It imports only `ledger`, `iexec` and `bot.errors`; the handlers wire it to commands. It must never ask for or
accept a private key or a seed phrase.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import LinkRefused
from iexec.errors import LinkProofError
from iexec.link import LinkRequest, verify_link
from ledger import AddressTaken, ChallengeRefused, Ledger, WalletLink, format_rlc
from ledger.errors import InvalidArgument

_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE_RE = re.compile(r"0x[0-9a-fA-F]{128,130}")


@dataclass(frozen=True)
class LinkSettings:
    """What a link binds and what the user is told: the chain, the deposit address, the minimum deposit."""

    chain_id: int
    deposit_address: str
    min_deposit_nrlc: int
    challenge_ttl_s: int = 15 * 60


def parse_link_args(args: list[str]) -> tuple[str | None, str | None]:
    """(address, signature) from /link's arguments in any order; LinkRefused for anything else."""
    address = signature = None
    for arg in args:
        if _SIGNATURE_RE.fullmatch(arg) and len(arg) in (130, 132):
            signature = arg
        elif _ADDRESS_RE.fullmatch(arg):
            address = arg
        else:
            raise LinkRefused("Use /link alone, or /link 0xADDRESS 0xSIGNATURE (the signature is 0x + 130 hex digits).")
    return address, signature


class Linking:
    """Issue link challenges, verify proofs, link and unlink addresses in the books."""

    def __init__(
        self,
        book: Ledger,
        settings: LinkSettings,
        *,
        new_nonce: Callable[[], str] = lambda: "0x" + secrets.token_hex(32),
    ) -> None:
        self.book = book
        self.settings = settings
        self._new_nonce = new_nonce

    def _request(self, user: int, nonce: str) -> LinkRequest:
        return LinkRequest(user, self.settings.deposit_address, self.settings.chain_id, nonce)

    def start(self, user: int) -> tuple[LinkRequest, str]:
        """A new one-time request for `user` and the chat text that shows it (HTML)."""
        challenge = self.book.links.issue(user, self._new_nonce(), ttl_s=self.settings.challenge_ttl_s)
        request = self._request(user, challenge.nonce)
        return request, self.challenge_text(request)

    def open_request(self, user: int) -> LinkRequest | None:
        """The user's newest request not used nor expired (what a bare signature reply answers)."""
        challenge = self.book.links.open_challenge(user)
        return self._request(user, challenge.nonce) if challenge else None

    def finish(self, user: int, signature: str, address: str | None = None) -> WalletLink:
        """Verify `signature` over the user's open request and link the signer. Raises LinkRefused."""
        request = self.open_request(user)
        if request is None:
            raise LinkRefused("There is no link request waiting for you (it expires after a while): send /link first.")
        try:
            proof = verify_link(request, signature, address)
        except LinkProofError:
            raise LinkRefused(
                "That signature does not prove the address for this message (another message, chain, bot or "
                "account?). Sign the exact message of your last /link, or send /link 0xADDRESS 0xSIGNATURE."
            ) from None
        try:
            return self.book.links.link(user, proof.address, request.nonce, proof.form)
        except AddressTaken:
            raise LinkRefused(f"{proof.address} is linked to another account already; it was not linked.") from None
        except ChallengeRefused as exc:
            raise LinkRefused(f"Not linked: {exc}.") from None

    def unlink(self, user: int, address: str) -> bool:
        """Remove the user's link of `address`; False when it was not linked to them. Raises LinkRefused."""
        try:
            return self.book.links.unlink(user, address)
        except InvalidArgument:
            raise LinkRefused("Use /unlink 0xADDRESS with one of the addresses /balance lists.") from None

    def linked(self, user: int) -> list[WalletLink]:
        """The user's linked addresses."""
        return self.book.links.addresses(user)

    # -- texts ------------------------------------------------------------------------------------------

    def challenge_text(self, request: LinkRequest) -> str:
        """The /link answer: the message in both forms and how to sign it in a common wallet (HTML)."""
        typed = json.dumps(request.typed_data(), separators=(",", ":"))
        minutes = self.settings.challenge_ttl_s // 60
        return (
            "<b>Link a wallet</b>: sign this message with the wallet you will send RLC from. It proves the "
            "address is yours; it moves no money and costs no gas. Never send anyone your private key or seed "
            f"phrase.\n\nThe message is valid once, for {minutes} minutes.\n\n"
            "<b>EIP-712</b> (preferred; MetaMask: <code>eth_signTypedData_v4</code>, e.g. on a page such as "
            "the MyCrypto or Etherscan verified-signature tool, or <code>cast wallet sign --data</code>):\n"
            f"<code>{html.escape(typed)}</code>\n\n"
            '<b>Or as plain text</b> (personal_sign, "Sign message" in most wallets):\n'
            f"<code>{html.escape(request.text())}</code>\n\n"
            "Then send the signature here, or <code>/link 0xYOURADDRESS 0xSIGNATURE</code> "
            "(the address is needed for a plain-text signature)."
        )

    def linked_text(self, link: WalletLink) -> str:
        """The answer to a successful link: the deposit address and the minimum deposit."""
        return (
            f"Linked {link.address}. Send RLC from it to <code>{self.settings.deposit_address}</code> "
            f"(chain id {self.settings.chain_id}); each transfer of at least "
            f"{format_rlc(self.settings.min_deposit_nrlc)} becomes your credit once it is final. "
            "Smaller transfers are held for an admin."
        )
