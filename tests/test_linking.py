"""The /link proof: a real signature links an address once; forged, replayed, expired, other-user and
wrong-chain proofs are refused and change nothing (bot.linking over the ledger, iexec.link)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from bot.linking import Linking, LinkRefused, LinkSettings, parse_link_args
from iexec.errors import LinkProofError
from iexec.link import LinkRequest, verify_link
from ledger import Ledger

CHAIN_ID = 31337
HOT_WALLET = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
ALICE, BOB = 1001, 1002
KEY_A = Account.from_key("0x" + "a1" * 32)
KEY_B = Account.from_key("0x" + "b2" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def linking(tmp_path: Path, clock: Clock) -> Linking:
    book = Ledger(tmp_path / "books.db", clock=clock)
    return Linking(book, LinkSettings(CHAIN_ID, HOT_WALLET, 10**9))


def sign(request: LinkRequest, key: object, form: str = "eip712") -> str:
    return "0x" + key.sign_message(request.signable(form)).signature.hex().removeprefix("0x")  # type: ignore[attr-defined]  # eth_account's signed message has no stubs for .signature


def test_an_eip712_signature_links_the_signer_and_shows_where_to_send(linking: Linking) -> None:
    request, text = linking.start(ALICE)
    assert str(ALICE) in text and HOT_WALLET in text and str(CHAIN_ID) in text and request.nonce in text
    link = linking.finish(ALICE, sign(request, KEY_A))  # the signature alone: read as EIP-712
    assert link.address == KEY_A.address.lower() and link.form == "eip712"
    assert [x.address for x in linking.linked(ALICE)] == [KEY_A.address.lower()]
    answer = linking.linked_text(link)
    assert HOT_WALLET in answer and "1 RLC" in answer


def test_a_personal_sign_signature_links_when_the_address_is_given(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    address, signature = parse_link_args([KEY_A.address, sign(request, KEY_A, "personal_sign")])
    assert signature is not None
    link = linking.finish(ALICE, signature, address)
    assert link.form == "personal_sign" and linking.book.links.user_of(KEY_A.address) == ALICE


def test_a_forged_signature_is_refused_and_links_nothing(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    with pytest.raises(LinkRefused, match="does not prove"):
        linking.finish(ALICE, sign(request, KEY_B), KEY_A.address)  # B signs, claims to be A
    assert linking.linked(ALICE) == [] and linking.book.links.user_of(KEY_A.address) is None
    # the request is still open: the right signature works afterwards
    assert linking.finish(ALICE, sign(request, KEY_A), KEY_A.address).address == KEY_A.address.lower()


def test_a_replayed_signature_is_refused(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    signature = sign(request, KEY_A)
    linking.finish(ALICE, signature)
    linking.unlink(ALICE, KEY_A.address)
    with pytest.raises(LinkRefused, match="send /link first"):
        linking.finish(ALICE, signature)  # its nonce is used up
    linking.start(ALICE)
    with pytest.raises(LinkRefused, match="does not prove"):
        linking.finish(ALICE, signature, KEY_A.address)  # a new nonce: the old proof does not fit it
    assert linking.linked(ALICE) == []


def test_a_signature_for_another_chain_user_or_wallet_is_refused(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    for other in (
        LinkRequest(ALICE, HOT_WALLET, 1, request.nonce),
        LinkRequest(BOB, HOT_WALLET, CHAIN_ID, request.nonce),
        LinkRequest(ALICE, "0x" + "11" * 20, CHAIN_ID, request.nonce),
    ):
        for form in ("eip712", "personal_sign"):
            with pytest.raises(LinkRefused):
                linking.finish(ALICE, sign(other, KEY_A, form), KEY_A.address)
            with pytest.raises(LinkProofError):
                verify_link(request, sign(other, KEY_A, form), KEY_A.address)
    assert linking.linked(ALICE) == []


def test_alices_proof_does_not_link_for_bob(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    linking.start(BOB)
    with pytest.raises(LinkRefused):
        linking.finish(BOB, sign(request, KEY_A), KEY_A.address)
    assert linking.book.links.user_of(KEY_A.address) is None


def test_an_address_linked_to_someone_else_is_refused(linking: Linking) -> None:
    request, _ = linking.start(ALICE)
    linking.finish(ALICE, sign(request, KEY_A))
    request_b, _ = linking.start(BOB)
    with pytest.raises(LinkRefused, match="another account"):
        linking.finish(BOB, sign(request_b, KEY_A), KEY_A.address)
    assert linking.book.links.user_of(KEY_A.address) == ALICE and linking.linked(BOB) == []
    assert linking.unlink(BOB, KEY_A.address) is False  # Bob cannot remove Alice's link
    assert linking.book.links.user_of(KEY_A.address) == ALICE
    # Bob's request stays usable for an address of his own
    assert linking.finish(BOB, sign(request_b, KEY_B)).address == KEY_B.address.lower()


def test_an_expired_request_is_refused(linking: Linking, clock: Clock) -> None:
    request, _ = linking.start(ALICE)
    clock.now += linking.settings.challenge_ttl_s + 1
    with pytest.raises(LinkRefused, match="send /link first"):
        linking.finish(ALICE, sign(request, KEY_A))
    assert linking.linked(ALICE) == []


def test_relinking_ones_own_address_is_a_no_op_and_unlink_removes_it(linking: Linking) -> None:
    for _ in range(2):
        request, _ = linking.start(ALICE)
        linking.finish(ALICE, sign(request, KEY_A))
    assert len(linking.linked(ALICE)) == 1
    assert linking.unlink(ALICE, KEY_A.address) is True and linking.linked(ALICE) == []
    with pytest.raises(LinkRefused):
        linking.unlink(ALICE, "not-an-address")


@pytest.mark.parametrize("args", [["hello"], ["0x1234"], ["0x" + "ab" * 20, "0x" + "cd" * 10]])
def test_link_arguments_that_are_neither_address_nor_signature_are_refused(args: list[str]) -> None:
    with pytest.raises(LinkRefused, match="/link 0xADDRESS 0xSIGNATURE"):
        parse_link_args(args)


def test_malformed_signatures_are_refused(linking: Linking) -> None:
    linking.start(ALICE)
    for bad in ("0x" + "00" * 65, "0x" + "ff" * 65, "0xzz"):
        with pytest.raises(LinkRefused):
            linking.finish(ALICE, bad, KEY_A.address)
    assert linking.linked(ALICE) == []
