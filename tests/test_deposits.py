"""Deposits in the books: a final transfer from a linked address credits once, on (tx hash, log index); one
from an unlinked address (or below the minimum) is held for admins; the audit ties operator:deposits to the
credited deposits (ledger.deposits, bot.deposits' texts and assignment, iexec.deposits' log decoding)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bot.deposits import AssignRefused, DepositService, notice_text
from iexec.deposits import TRANSFER_TOPIC, DepositWatcher, decode_transfer
from ledger import AuditError, DepositConflict, Ledger
from ledger.deposits import deposit_transfer_id

USER, OTHER, ADMIN = 501, 502, 9
LINKED = "0xabababababababababababababababababababcd"
STRANGER = "0x" + "77" * 20
HOT = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
RLC = 10**9


def tx() -> str:
    return "0x" + secrets.token_hex(32)


BLOCK_HASH = "0x" + "22" * 32


@pytest.fixture
def book(tmp_path: Path) -> Ledger:
    book = Ledger(tmp_path / "books.db")
    nonce = "0x" + secrets.token_hex(32)
    book.links.issue(USER, nonce)
    book.links.link(USER, LINKED, nonce, "eip712")
    return book


@pytest.fixture
def service(book: Ledger) -> DepositService:
    # the watcher is not polled in these tests (the devnet tests do): only the books' side is used
    watcher = DepositWatcher(None, "0x" + "01" * 20, HOT, confirmations=0)  # type: ignore[arg-type]  # no chain: the watcher is never polled here
    return DepositService(book, watcher, min_deposit_nrlc=RLC // 10)


def test_a_linked_deposit_credits_once_however_often_it_is_replayed(book: Ledger) -> None:
    h = tx()
    deposit, new = book.deposits.record(h, 4, 10, BLOCK_HASH, LINKED, 2 * RLC)
    assert new and deposit.status == "credited" and deposit.user_id == USER
    for _ in range(3):
        again, new = book.deposits.record(h, 4, 10, BLOCK_HASH, LINKED.upper().replace("0X", "0x"), 2 * RLC)
        assert not new and again == deposit
    assert book.balance(USER).available == 2 * RLC
    assert book.get_transfer(deposit_transfer_id(h, 4)) is not None
    totals = book.deposits.totals()
    assert totals.credited == totals.account_net == 2 * RLC and totals.credited_count == 1
    book.audit()


def test_two_transfers_in_one_transaction_are_two_deposits(book: Ledger) -> None:
    h = tx()
    book.deposits.record(h, 0, 10, BLOCK_HASH, LINKED, RLC)
    book.deposits.record(h, 1, 10, BLOCK_HASH, LINKED, RLC)
    assert book.balance(USER).available == 2 * RLC
    book.audit()


def test_the_same_natural_id_with_other_fields_is_refused_and_changes_nothing(book: Ledger) -> None:
    h = tx()
    book.deposits.record(h, 0, 10, BLOCK_HASH, LINKED, RLC)
    with pytest.raises(DepositConflict):
        book.deposits.record(h, 0, 10, BLOCK_HASH, LINKED, 5 * RLC)
    with pytest.raises(DepositConflict):
        book.deposits.record(h, 0, 10, BLOCK_HASH, STRANGER, RLC)
    assert book.balance(USER).available == RLC
    book.audit()


def test_an_unlinked_deposit_is_held_until_an_admin_assigns_it(book: Ledger, service: DepositService) -> None:
    h = tx()
    held, _ = book.deposits.record(h, 2, 11, BLOCK_HASH, STRANGER, 3 * RLC)
    assert held.status == "unclaimed" and book.balance(OTHER).available == 0
    assert f"{h}:2" in service.unclaimed_text() and "3 RLC" in service.unclaimed_text()
    assert book.deposits.totals().unclaimed == 3 * RLC and book.deposits.totals().account_net == 0
    assigned = service.assign(f"{h}:2", OTHER, ADMIN)
    assert assigned.status == "credited" and assigned.assigned_by == ADMIN
    assert service.assign(f"{h}:2", OTHER, ADMIN) == assigned  # twice: once
    with pytest.raises(AssignRefused, match="credited to user"):
        service.assign(f"{h}:2", USER, ADMIN)
    with pytest.raises(AssignRefused, match="No deposit"):
        service.assign(f"{tx()}:0", USER, ADMIN)
    with pytest.raises(AssignRefused, match="0xTXHASH:LOGINDEX"):
        service.assign("yesterday's", USER, ADMIN)
    assert book.balance(OTHER).available == 3 * RLC and service.unclaimed() == []
    # a held deposit that arrives again from the chain stays credited once
    assert book.deposits.record(h, 2, 11, BLOCK_HASH, STRANGER, 3 * RLC)[1] is False
    assert book.balance(OTHER).available == 3 * RLC
    book.audit()


def test_a_deposit_below_the_minimum_is_held_and_after_unlink_too(book: Ledger) -> None:
    small, _ = book.deposits.record(tx(), 0, 12, BLOCK_HASH, LINKED, 5, min_credit=RLC // 10)
    assert small.status == "unclaimed"
    book.links.unlink(USER, LINKED)
    later, _ = book.deposits.record(tx(), 0, 13, BLOCK_HASH, LINKED, RLC)
    assert later.status == "unclaimed" and book.balance(USER).available == 0


def test_the_user_is_told_once_with_the_amount_the_sender_and_the_balance(
    book: Ledger, service: DepositService
) -> None:
    book.grant("g1", USER, 2_700_000_000)
    h = tx()
    book.deposits.record(h, 0, 10, BLOCK_HASH, LINKED, 2 * RLC)
    [notice] = service.notices()
    assert notice.user_id == USER and notice.text == "Received 2 RLC from 0xab…cd; balance 4.7 RLC"
    service.told(notice)
    assert service.notices() == []
    assert notice_text(RLC // 2, STRANGER, RLC) == "Received 0.5 RLC from 0x77…77; balance 1 RLC"


def test_the_audit_finds_a_credited_deposit_that_does_not_match_its_transfer(book: Ledger) -> None:
    book.deposits.record(tx(), 0, 10, BLOCK_HASH, LINKED, RLC)
    book.audit()
    with book.transaction() as conn:
        conn.execute("UPDATE deposits SET amount = amount + 1")
    with pytest.raises(AuditError, match="is credited but its transfer"):
        book.audit()


def test_a_transfer_log_is_decoded_and_other_logs_are_not() -> None:
    raw = {
        "address": "0x" + "01" * 20,
        "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + LINKED[2:], "0x" + "00" * 12 + HOT[2:].lower()],
        "data": "0x" + (2 * RLC).to_bytes(32, "big").hex(),
        "transactionHash": "0x" + "aa" * 32,
        "logIndex": 3,
        "blockNumber": 77,
        "blockHash": BLOCK_HASH,
    }
    transfer = decode_transfer(raw)
    assert transfer is not None
    assert (transfer.sender.lower(), transfer.to, transfer.amount, transfer.key) == (
        LINKED,
        HOT,
        2 * RLC,
        ("0x" + "aa" * 32, 3),
    )
    assert decode_transfer({**raw, "removed": True}) is None
    assert decode_transfer({**raw, "topics": raw["topics"][:1]}) is None  # not an ERC-20 Transfer shape


def test_a_v4_file_migrates_to_deposits_keeping_its_books(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.db
    from ledger.schema import MIGRATIONS

    with monkeypatch.context() as patch:
        patch.setattr(ledger.db, "MIGRATIONS", MIGRATIONS[:4])
        patch.setattr(ledger.db, "SCHEMA_VERSION", 4)
        with Ledger(tmp_path / "old.db") as old:
            old.grant("g1", USER, 5 * RLC)
            assert old.schema_version() == 4
    with Ledger(tmp_path / "old.db") as book:
        assert book.schema_version() == 5 and book.balance(USER).available == 5 * RLC
        assert book.links.count() == 0 and book.deposits.unclaimed() == []
        book.deposits.record(tx(), 0, 1, BLOCK_HASH, STRANGER, RLC)
        book.audit()
