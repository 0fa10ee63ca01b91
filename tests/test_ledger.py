"""The books: transfers, idempotency, bad input, jobs state machine, chain txs, events, schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger import (
    AlreadyResolved,
    AuditError,
    Balance,
    ExceedsReservation,
    IllegalTransition,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    JobConflict,
    JobState,
    Ledger,
    LedgerError,
    SchemaError,
    TransferConflict,
    UnknownJob,
    UnknownTransfer,
    format_rlc,
    parse_rlc,
)
from ledger.errors import BalanceOverflow
from ledger.schema import SCHEMA_VERSION

RLC = 10**9
MAX = 2**63 - 1


@pytest.fixture
def book(fresh_ledger: Ledger) -> Ledger:
    return fresh_ledger


def snapshot(book: Ledger) -> tuple[object, ...]:
    return tuple(book.accounts()), len(book.history(None, limit=10**6))


def test_two_phase_flow_moves_money_and_balances(book: Ledger) -> None:
    book.grant("g1", 42, 5 * RLC, "welcome")
    assert book.balance(42) == Balance(5 * RLC, 0, 5 * RLC)
    book.reserve("r1", 42, 2 * RLC, "job-1")
    assert book.balance(42) == Balance(5 * RLC, 2 * RLC, 3 * RLC)
    book.post("p1", "r1", RLC // 2, fee=RLC // 10)
    assert book.balance(42) == Balance(5 * RLC - 6 * RLC // 10, 0, 5 * RLC - 6 * RLC // 10)
    assert book.account("operator:iexec_spend").credits_posted == RLC // 2
    assert book.account("operator:fees").credits_posted == RLC // 10
    book.reserve("r2", 42, RLC, "job-2")
    book.void("v2", "r2")
    assert book.balance(42).available == 5 * RLC - 6 * RLC // 10
    book.reserve("r3", 42, RLC, "job-3")
    book.post("p3", "r3")  # None = the whole reservation
    assert book.balance(42).posted == 5 * RLC - 16 * RLC // 10
    assert book.reservation_state("r1") == "posted" and book.reservation_state("r2") == "voided"
    book.audit()


def test_unknown_user_has_zero_balance_and_cannot_reserve(book: Ledger) -> None:
    assert book.balance(7) == Balance(0, 0, 0)
    with pytest.raises(InsufficientFunds, match="0 RLC available"):
        book.reserve("r", 7, 1, "j")
    book.audit()


def test_retries_are_quiet_and_conflicts_are_errors(book: Ledger) -> None:
    first = book.grant("g", 1, 10, "m")
    assert book.grant("g", 1, 10, "m") == first
    for call in (
        lambda: book.grant("g", 1, 11, "m"),
        lambda: book.grant("g", 2, 10, "m"),
        lambda: book.grant("g", 1, 10, "other"),
        lambda: book.reserve("g", 1, 10, "j"),
    ):
        with pytest.raises(TransferConflict):
            call()
    book.reserve("r", 1, 8, "j")
    assert book.reserve("r", 1, 8, "j").amount == 8
    with pytest.raises(TransferConflict):
        book.reserve("r", 1, 7, "j")
    book.post("p", "r", 5, fee=1)
    assert book.post("p", "r", 5, fee=1).fee == 1
    with pytest.raises(TransferConflict):
        book.post("p", "r", 5, fee=2)
    assert book.balance(1) == Balance(4, 0, 4)
    book.audit()


def test_reservation_resolves_once(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.reserve("r", 1, 50, "j")
    book.void("v", "r")
    assert book.void("v", "r").kind == "void"  # retry
    with pytest.raises(AlreadyResolved, match="voided by transfer 'v'"):
        book.post("p", "r")
    with pytest.raises(AlreadyResolved):
        book.void("v2", "r")
    book.reserve("r2", 1, 50, "j")
    book.post("p2", "r2", 10)
    with pytest.raises(AlreadyResolved, match="posted"):
        book.void("v3", "r2")
    assert book.balance(1) == Balance(90, 0, 90)
    book.audit()


def test_insufficient_funds_writes_nothing(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.reserve("r", 1, 60, "j")
    before = snapshot(book)
    with pytest.raises(InsufficientFunds, match="available"):
        book.reserve("r2", 1, 41, "j")
    assert snapshot(book) == before
    book.reserve("r2", 1, 40, "j")
    assert book.balance(1).available == 0


@pytest.mark.parametrize("amount", [0, -1, 1.5, 2.0, True, False, "5", None, MAX + 1, 2**64])
def test_bad_amounts_raise_and_write_nothing(book: Ledger, amount: object) -> None:
    book.grant("g", 1, 100, "")
    book.reserve("r", 1, 50, "j")
    before = snapshot(book)
    calls = [lambda: book.grant("x", 1, amount, ""), lambda: book.reserve("x", 1, amount, "j")]
    if amount is not None:
        calls.append(lambda: book.post("x", "r", amount))
    for call in calls:
        with pytest.raises(InvalidAmount):
            call()
    assert snapshot(book) == before


def test_post_errors(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.reserve("r", 1, 50, "j")
    before = snapshot(book)
    with pytest.raises(ExceedsReservation):
        book.post("p", "r", 51)
    with pytest.raises(ExceedsReservation):
        book.post("p", "r", 45, fee=6)
    with pytest.raises(ExceedsReservation):
        book.post("p", "r", None, fee=50)
    with pytest.raises(InvalidAmount):
        book.post("p", "r", 10, fee=-1)
    with pytest.raises(UnknownTransfer):
        book.post("p", "nope")
    with pytest.raises(UnknownTransfer):
        book.void("v", "nope")
    with pytest.raises(UnknownTransfer):
        book.post("p", "g")  # a grant is not a reservation
    assert snapshot(book) == before


@pytest.mark.parametrize("bad", ["", "x" * 201, "a\nb", 5, None])
def test_bad_ids_and_users(book: Ledger, bad: object) -> None:
    with pytest.raises(InvalidArgument):
        book.grant(bad, 1, 10, "")  # type: ignore[arg-type]  # the wrong type is the point
    for user in (0, -3, True, "1", 1.0):
        with pytest.raises(InvalidArgument):
            book.grant("g", user, 10, "")  # type: ignore[arg-type]  # the wrong type is the point


def test_overflowing_totals_are_refused(book: Ledger) -> None:
    book.grant("g", 1, MAX, "")
    with pytest.raises(BalanceOverflow):
        book.grant("g2", 1, 1, "")
    with pytest.raises(BalanceOverflow):
        book.grant("g3", 2, 1, "")  # operator:grants' debits would overflow
    book.audit()


@pytest.mark.parametrize(
    "text",
    [
        "1e9",
        "NaN",
        "nan",
        "inf",
        "-0",
        "-1",
        "+1",
        "1.0000000001",
        "",
        " 5 ",
        "0",
        "0.000000000",
        "1,5",
        ".5",
        "5.",
        "9223372037",
    ],
)
def test_parse_rlc_refuses(text: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_rlc(text)


def test_parse_and_format_rlc() -> None:
    assert parse_rlc("1.5") == 1_500_000_000
    assert parse_rlc("0.000000001") == 1
    assert parse_rlc("9223372036.854775807") == MAX
    assert parse_rlc("007") == 7 * RLC
    assert format_rlc(1_500_000_000) == "1.5 RLC"
    assert format_rlc(0) == "0 RLC"
    assert format_rlc(-5) == "-0.000000005 RLC"
    assert all(parse_rlc(format_rlc(n).split()[0]) == n for n in (1, 10, RLC, 123456789012, MAX))


def test_events_once_and_grant_tied_to_event(book: Ledger) -> None:
    assert book.record_event("update", "1001", {"x": 1}) is True
    assert book.record_event("update", "1001") is False
    assert book.grant("g1", 5, 10, "", event=("update", "2002")) is not None
    assert book.grant("g1", 5, 10, "", event=("update", "2002")) is not None  # same id: replay
    assert book.grant("g2", 5, 10, "", event=("update", "2002")) is None  # same event, new id
    assert book.deposit("d1", 5, 7, "0xabc") is not None
    assert book.deposit("d2", 5, 7, "0xabc") is None
    assert book.balance(5).posted == 17
    with pytest.raises(InvalidArgument), book.transaction():
        book.record_event("update", "3003")
        book.grant("g3", 0, 1, "")  # bad user: the event must roll back too
    assert book.seen_event("update", "3003") is False
    book.audit()


def test_audit_detects_tampering(ledger_path: Path) -> None:
    path = ledger_path
    with Ledger(path) as book:
        book.grant("g", 1, 100, "")
        book.reserve("r", 1, 40, "j")
        book.audit()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE accounts SET debits_pending = 30 WHERE name = 'user:1'")
    raw.commit()
    with Ledger(path) as book, pytest.raises(AuditError, match="user:1"):
        book.audit()
    raw.execute("UPDATE accounts SET debits_pending = 40 WHERE name = 'user:1'")
    raw.execute("UPDATE accounts SET credits_posted = credits_posted + 5 WHERE name = 'operator:fees'")
    raw.commit()
    with Ledger(path) as book, pytest.raises(AuditError, match="posted debits"):
        book.audit()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE transfers SET amount = 1")
    raw.close()


def test_audit_apart_reads_its_own_snapshot_while_the_books_are_written(ledger_path: Path, tmp_path: Path) -> None:
    path = ledger_path
    with Ledger(path) as book:
        book.grant("g", 1, 100, "")
        book.reserve("r", 1, 40, "j")
        assert book.audit_apart() == book.audit()
        # a writer holds a transaction open on another connection: the apart audit neither waits nor sees it
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE accounts SET debits_pending = 30 WHERE name = 'user:1'")
        assert book.audit_apart() == book.audit()
        writer.execute("COMMIT")
        with pytest.raises(AuditError, match="user:1"):
            book.audit_apart()
        writer.close()
    with pytest.raises(AuditError, match="could not open"):
        Ledger.audit_apart(type("Gone", (), {"path": tmp_path / "missing.db"})())  # type: ignore[arg-type]  # a stand-in with only .path, which is all audit_apart reads


def test_audit_detects_post_above_reservation(ledger_path: Path) -> None:
    path = ledger_path
    with Ledger(path) as book:
        book.grant("g", 1, 100, "")
        book.reserve("r", 1, 40, "j")
    raw = sqlite3.connect(path)  # forge a post of 60 against a 40 reservation, totals kept coherent
    raw.execute(
        "INSERT INTO transfers (id, kind, phase, debit_account, credit_account, amount, pending_id, "
        "created_at) SELECT 'p', 'post', 'posted', debit_account, credit_account, 60, 'r', 0 "
        "FROM transfers WHERE id = 'r'"
    )
    raw.execute("UPDATE accounts SET debits_pending = 0, debits_posted = 60 WHERE name = 'user:1'")
    raw.execute("UPDATE accounts SET credits_pending = 0, credits_posted = 60 WHERE name = 'operator:iexec_spend'")
    raw.commit()
    raw.close()
    with Ledger(path) as book, pytest.raises(AuditError, match="does not fit reservation 'r'"):
        book.audit()


def test_not_sqlite_and_newer_schema_are_refused(tmp_path: Path, ledger_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all, just text\n" * 10)
    with pytest.raises(SchemaError, match="not a SQLite database"):
        Ledger(junk)
    assert junk.read_bytes().startswith(b"this is not")
    path = ledger_path
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    raw.commit()
    raw.close()
    with pytest.raises(SchemaError, match="version 99, newer"):
        Ledger(path)


def test_reopen_keeps_schema_and_data(ledger_path: Path) -> None:
    path = ledger_path
    with Ledger(path) as book:
        book.grant("g", 1, 10, "")
        assert book.schema_version() == SCHEMA_VERSION == 5
    with Ledger(path) as book:
        assert book.balance(1).posted == 10
        assert book.schema_version() == SCHEMA_VERSION
        mode = book._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = book._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)


# ----- jobs ------------------------------------------------------------------------------------


def test_job_is_created_with_its_reservation_atomically(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    job = book.create_job("j1", 1, 1, 60, input_ref="in/1", options={"min_score": 0.7}, user_message_id=5)
    assert job.state is JobState.RECEIVED and job.reservation == "j1:reserve"
    assert book.balance(1) == Balance(100, 60, 40)
    assert book.create_job("j1", 1, 1, 60, input_ref="in/1", options={"min_score": 0.7}) == job
    with pytest.raises(JobConflict):
        book.create_job("j1", 1, 1, 61, input_ref="in/1", options={"min_score": 0.7})
    with pytest.raises(InsufficientFunds):
        book.create_job("j2", 1, 1, 41)
    assert book.get_job("j2") is None and book.get_transfer("j2:reserve") is None
    book.audit()


def test_job_happy_path_and_settlement(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.create_job("j", 1, 9, 50)
    book.transition("j", "RECEIVED", "ORDER_SIGNED", request_order={"salt": "0x1"}, order_hash="0xh")
    assert book.transition("j", "RECEIVED", "ORDER_SIGNED").state is JobState.ORDER_SIGNED  # repeat
    book.transition("j", JobState.ORDER_SIGNED, JobState.MATCHING)
    book.transition("j", ["MATCHING"], "MATCHED", deal_id="0xd", app_price=10, workerpool_price=20)
    book.transition("j", "MATCHED", "RUNNING", task_id="0xt")
    job = book.complete_job("j", "j:post", 30, fee=5, result_ref="/ipfs/Qm")
    assert job.state is JobState.COMPLETED and book.complete_job("j", "j:post", 30, fee=5) == job
    assert book.balance(1) == Balance(65, 0, 65)
    done = book.transition("j", "COMPLETED", "DELIVERED")
    assert done.state.is_terminal() and set(done.state_times) >= {"RECEIVED", "RUNNING", "DELIVERED"}
    assert book.job_by(task_id="0xt").id == "j" and book.job_by(order_hash="0xh").id == "j"
    book.audit()


def test_illegal_transitions(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.create_job("j", 1, 1, 10)
    with pytest.raises(IllegalTransition, match="is RECEIVED"):
        book.transition("j", "MATCHED", "RUNNING")
    with pytest.raises(IllegalTransition, match="not allowed"):
        book.transition("j", "RECEIVED", "RUNNING")
    with pytest.raises(IllegalTransition, match="moves money"):
        book.transition("j", "RECEIVED", "REFUNDED")
    with pytest.raises(IllegalTransition):
        book.complete_job("j", "p", 5)
    with pytest.raises(UnknownJob):
        book.transition("nope", "RECEIVED", "ORDER_SIGNED")
    with pytest.raises(InvalidArgument):
        book.transition("j", "RECEIVED", "FLYING")
    with pytest.raises(InvalidArgument):
        book.update_job("j", state="DELIVERED")
    book.update_job("j", order_hash="0x1")
    with pytest.raises(JobConflict):
        book.update_job("j", order_hash="0x2")
    assert book.balance(1).pending == 10


def test_refund_cancel_and_needs_admin(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.create_job("a", 1, 1, 10)
    book.cancel_job("a", "a:void")
    assert book.cancel_job("a", "a:void").state is JobState.CANCELLED
    book.create_job("b", 1, 1, 20)
    for to in ("ORDER_SIGNED", "MATCHING", "MATCHED", "RUNNING"):
        book.transition("b", JobState(book.get_job("b").state), to)
    with pytest.raises(IllegalTransition):
        book.cancel_job("b", "b:void")
    book.transition("b", "RUNNING", "NEEDS_ADMIN", error="deal not found")
    assert not JobState.NEEDS_ADMIN.is_terminal() and not JobState.NEEDS_ADMIN.is_resumable()
    assert book.balance(1).pending == 20  # quarantined: money stays reserved
    book.transition("b", "NEEDS_ADMIN", "RUNNING")  # admin retry
    job = book.refund_job("b", "b:void", error="task failed")
    assert job.state is JobState.REFUNDED and job.error == "task failed"
    assert book.balance(1) == Balance(100, 0, 100)
    # Paid on chain, failed in the app: the operator pays the refund.
    book.create_job("c", 1, 1, 30)
    for to in ("ORDER_SIGNED", "MATCHING", "MATCHED"):
        book.transition("c", JobState(book.get_job("c").state), to)
    book.complete_job("c", "c:post", 25, fee=2)
    book.refund_job("c", "c:refund", error="result image unreadable")
    assert book.balance(1) == Balance(100, 0, 100)
    assert book.account("operator:refund_expense").debits_posted == 27
    assert book.jobs_in_flight(1) == 0 and book.jobs_since(1, 0) == 3
    assert [j.id for j in book.jobs_in_states("REFUNDED")] == ["b", "c"]
    assert [j.id for j in book.user_jobs(1, limit=2)] == ["c", "b"]
    book.audit()


def test_spend_counters(book: Ledger) -> None:
    book.grant("g", 1, 100, "")
    book.create_job("a", 1, 1, 10)
    book.create_job("b", 1, 1, 20)
    book.transition("b", "RECEIVED", "NEEDS_ADMIN")
    book.complete_job("b", "b:post", 15, fee=1)
    assert book.spent_since(1, 0) == 10 + 16
    assert book.jobs_in_flight(1) == 2


def test_find_jobs_by_suffix_tells_unique_ambiguous_and_absent(fresh_ledger: Ledger) -> None:
    book = fresh_ledger
    book.grant("g", 1, 1000, "")
    for job_id in ("c-100m17", "c-100m117", "c-200m5", "c7g_a1", "c7gxa1", "c8g%b2", "c8gqqb2"):
        book.create_job(job_id, 1, 1, 10)
    assert [j.id for j in book.find_jobs_by_suffix("m5")] == ["c-200m5"]
    assert [j.id for j in book.find_jobs_by_suffix("c-200m5")] == ["c-200m5"]  # a whole id is its own suffix
    assert [j.id for j in book.find_jobs_by_suffix("17")] == ["c-100m117", "c-100m17"]  # ambiguous: two of them
    assert [j.id for j in book.find_jobs_by_suffix("7", limit=5)] == ["c-100m117", "c-100m17"]
    assert [j.id for j in book.find_jobs_by_suffix("1", limit=1)] == ["c7g_a1"]
    assert book.find_jobs_by_suffix("m6") == [] and book.find_jobs_by_suffix("xc-200m5") == []
    assert book.find_jobs_by_suffix("M5") == []  # ids are compared exactly, case included
    # LIKE's wildcards are plain characters here: "_a1" is not "?a1", "%b2" is not "*b2"
    assert [j.id for j in book.find_jobs_by_suffix("_a1")] == ["c7g_a1"]
    assert [j.id for j in book.find_jobs_by_suffix("%b2")] == ["c8g%b2"]
    assert book.find_jobs_by_suffix("%") == [] and book.find_jobs_by_suffix("_") == []
    found = book.find_jobs_by_suffix("m5")[0]
    assert found == book.get_job("c-200m5") and found.max_price == 10
    for bad in ("", "x" * 201, "a\nb"):
        with pytest.raises(InvalidArgument):
            book.find_jobs_by_suffix(bad)
    with pytest.raises(InvalidArgument):
        book.find_jobs_by_suffix("m5", limit=0)


# ----- chain transactions ----------------------------------------------------------------------


def test_chain_txs_recorded_before_broadcast(book: Ledger) -> None:
    tx = book.record_tx(b"\x02\xf8", b"\x11" * 32, 7, "0xAbCd", "match_orders", "j1", {"gas": 1})
    assert tx.status == "persisted" and tx.raw_tx == "0x02f8" and tx.sender == "0xabcd"
    assert book.record_tx("0x02f8", "0x" + "11" * 32, 7, "0xabcd", "match_orders", "j1") == tx
    with pytest.raises(TransferConflict):
        book.record_tx(b"\x02\xf9", b"\x11" * 32, 7, "0xabcd", "match_orders")
    book.record_tx(b"\x03", b"\x22" * 32, 8, "0xabcd", "claim")
    assert [t.nonce for t in book.pending_txs("0xABCD")] == [7, 8]
    book.update_tx(b"\x11" * 32, "mined", block_number=12)
    book.update_tx(b"\x22" * 32, "replaced", replaced_by=b"\x33" * 32)
    assert book.pending_txs("0xabcd") == []
    assert book.get_tx(b"\x11" * 32).block_number == 12
    with pytest.raises(InvalidArgument):
        book.update_tx(b"\x11" * 32, "lost")
    with pytest.raises(InvalidArgument):
        book.update_tx(b"\x44" * 32, "mined")


async def test_persist_hook_records(book: Ledger) -> None:
    persist = book.persist_hook("0xAA")
    await persist(b"\x01", b"\x02" * 32, 3, {"purpose": "claim", "job_id": "j9"})
    (tx,) = book.txs_for_job("j9")
    assert (tx.purpose, tx.nonce, tx.sender) == ("claim", 3, "0xaa")


def test_kv_cursor(book: Ledger) -> None:
    assert book.get_value("cursor") is None
    book.set_value("cursor", "100")
    book.set_value("cursor", "120")
    assert book.get_value("cursor") == "120"


def test_every_error_is_a_ledger_error() -> None:
    import ledger.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, LedgerError) and c.__doc__ for c in classes)


def test_refused_first_reserve_does_not_poison_later_writes(book: Ledger) -> None:
    """A user's first-ever operation rolled back (no funds) must not leave a stale account behind."""
    with pytest.raises(InsufficientFunds):
        book.reserve("r", 3, 1, "j")
    book.grant("g", 3, 5, "")
    assert book.balance(3).posted == 5
    book.audit()


def test_returned_transfers_are_what_is_stored(book: Ledger) -> None:
    """The write path builds its answer without reading the rows back: it must match them exactly."""
    written = [
        book.grant("g", 5, 10 * RLC, "seed"),
        book.reserve("r1", 5, 3 * RLC, "job-1"),
        book.post("p1", "r1", 2 * RLC, fee=RLC // 2, memo="done"),
        book.reserve("r2", 5, RLC, "job-2"),
        book.post("p2", "r2"),
        book.reserve("r3", 5, RLC, "job-3"),
        book.void("v3", "r3", "gone"),
    ]
    for transfer in written:
        assert book.get_transfer(transfer.id) == transfer
    assert written[2].debit == "user:5" and written[2].credit == "operator:iexec_spend"
    assert (written[4].amount, written[4].fee, written[4].job) == (RLC, 0, "job-2")
    assert book.reserve("r1", 5, 3 * RLC, "job-1") == written[1]  # retries return the stored rows
    assert book.post("p1", "r1", 2 * RLC, fee=RLC // 2, memo="done") == written[2]
    assert book.void("v3", "r3", "gone") == written[6]
    with pytest.raises(TransferConflict):
        book.reserve("p1", 5, 1, "job-x")  # an id taken by a post, reused for a reservation
    assert book.balance(5) == Balance(13 * RLC // 2, 0, 13 * RLC // 2)  # 10 - (2 + 0.5) - 1
    book.audit()


def test_history_finds_both_sides_of_a_user_with_one_account_index(book: Ledger) -> None:
    """Schema v3 keeps one account index (transfers_pair); a user's credits are still in their history."""
    indexes = {
        row[0]
        for row in book._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'transfers'")
    }
    assert "transfers_credit" not in indexes and "transfers_pair" in indexes
    book.grant("g1", 7, 1000, "")
    book.grant("g-other", 8, 5, "")
    book.reserve("r1", 7, 300, "j1")
    book.post("p1", "r1", 200, fee=50)
    book.reserve("r2", 7, 100, "j2")
    book.void("v2", "r2")
    book.deposit("d1", 7, 40, "0xabc")
    book.refund_expense("x1", 7, 250, "j1")
    history = book.history(7)
    assert [t.id for t in history] == ["x1", "d1", "v2", "r2", "p1", "r1", "g1"]
    assert history[4].fee == 50
    assert [t.id for t in book.history(7, limit=2, before_seq=history[2].seq)] == ["r2", "p1"]
    assert [t.id for t in book.history(8)] == ["g-other"]
