"""How jobs end in the books: a refund after payment on chain in one transaction, held jobs and the
in-flight count, refunds whose user was not told yet, and the refund reasons as stored and told."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import sqlite_utils

from bot import texts
from bot.endings import Refund
from ledger import ExceedsReservation, JobState, Ledger, RefundReason

ROOT = Path(__file__).resolve().parent.parent

PRICE = 100


@pytest.fixture
def book(fresh_ledger: Ledger) -> Ledger:
    fresh_ledger.grant("g1", 1, 1000)
    return fresh_ledger


def matched(book: Ledger, job_id: str, amount: int = PRICE) -> None:
    book.create_job(job_id, 1, 1, amount)
    for state in (JobState.ORDER_SIGNED, JobState.MATCHING, JobState.MATCHED):
        book.transition(job_id, list(JobState), state)


def transfers(book: Ledger) -> int:
    return len(book.history(limit=1000))


def test_refund_paid_job_posts_and_pays_back_in_one_step_and_only_once(book: Ledger) -> None:
    matched(book, "j1")
    job = book.refund_paid_job("j1", "j1:post", "j1:refund", 60, error="app_error: boom")
    assert job.state is JobState.REFUNDED and job.error == "app_error: boom"
    assert book.reservation_state("j1:reserve") == "posted"
    assert book.get_transfer("j1:post").amount == 60
    assert book.get_transfer("j1:refund").kind == "refund_expense"
    assert book.account("operator:refund_expense").debits_posted == 60
    assert book.account("operator:iexec_spend").credits_posted == 60
    bal = book.balance(1)
    assert (bal.posted, bal.pending) == (1000, 0)
    count = transfers(book)
    assert book.refund_paid_job("j1", "j1:post", "j1:refund", 60, error="again") == job  # a retry
    assert book.refund_job("j1", "j1:refund", error="again") == job
    assert transfers(book) == count
    book.audit()


def test_refund_paid_job_above_the_reservation_writes_nothing(book: Ledger) -> None:
    matched(book, "j1")
    with pytest.raises(ExceedsReservation):
        book.refund_paid_job("j1", "j1:post", "j1:refund", PRICE + 1, error="x")
    assert book.get_job("j1").state is JobState.MATCHED
    assert book.reservation_state("j1:reserve") == "open"
    assert book.get_transfer("j1:post") is None
    book.audit()


def test_refund_paid_job_after_the_charge_pays_the_charge_back(book: Ledger) -> None:
    matched(book, "j1")
    book.complete_job("j1", "j1:post", 70, fee=10)
    assert book.balance(1).posted == 920
    book.refund_paid_job("j1", "j1:post", "j1:refund", 70, error="x")
    assert book.get_transfer("j1:post").amount == 70  # not posted a second time
    assert book.account("operator:refund_expense").debits_posted == 80
    assert book.balance(1).posted == 1000
    book.audit()


def test_a_held_job_counts_in_flight_only_while_its_money_is_reserved(book: Ledger) -> None:
    matched(book, "j1")
    matched(book, "j2")
    book.transition("j1", JobState.MATCHED, JobState.NEEDS_ADMIN, error="chain reset?")
    assert book.jobs_in_flight(1) == 2
    book.complete_job("j2", "j2:post", 50)
    book.transition("j2", JobState.COMPLETED, JobState.NEEDS_ADMIN, error="Telegram refused the result")
    assert book.jobs_in_flight(1) == 1  # charged and held: the user may send more pictures


def test_untold_refunds_until_the_telling_is_recorded(book: Ledger) -> None:
    matched(book, "j1")
    book.refund_job("j1", "j1:refund", error="expired: ")
    book.create_job("j2", 1, 1, PRICE)
    assert [j.id for j in book.untold_jobs("told", [JobState.REFUNDED])] == ["j1"]
    later = book.get_job("j1").updated_at + 1
    assert book.untold_jobs("told", [JobState.REFUNDED], since_ms=later) == []
    assert book.record_event("told", "REFUNDED:j1")
    assert book.untold_jobs("told", [JobState.REFUNDED]) == []


# --- refund reasons ------------------------------------------------------------------------------------------

#: what books of every version hold: a renamed value would make their refunds read back as an admin's
STORED_REASONS = {"no_offer", "no_stake", "expired", "failed", "app_error", "bad_result", "admin"}


def test_refund_reasons_keep_the_strings_the_books_hold() -> None:
    assert {r.value for r in RefundReason} == STORED_REASONS
    assert RefundReason.NO_STAKE == "no_stake" and f"{RefundReason.EXPIRED}" == "expired"


def test_a_refund_reason_is_stored_as_plain_text_and_read_back(book: Ledger, fresh_db: sqlite_utils.Database) -> None:
    matched(book, "j1")
    book.refund_job("j1", "j1:refund", error=Refund(RefundReason.APP_ERROR, "out of memory").error)
    [row] = fresh_db["jobs"].rows_where("id = ?", ["j1"])
    assert row["error"] == "app_error: out of memory"  # as books written before the enum hold it
    assert RefundReason.parse(book.get_job("j1").error) == (RefundReason.APP_ERROR, "out of memory")
    told = Refund.from_error(row["error"]).text()
    assert told == texts.REFUND_REASONS[RefundReason.APP_ERROR].format(detail="out of memory")


def test_errors_of_older_books_read_back_and_unknown_ones_read_as_an_admins_refund() -> None:
    assert Refund.from_error("no_stake: ") == Refund(RefundReason.NO_STAKE)
    assert Refund.from_error("failed: ") == Refund(RefundReason.FAILED)
    assert Refund.from_error("bad_result: a: b") == Refund(RefundReason.BAD_RESULT, "a: b")
    for unknown in (None, "", "boom", "NO_STAKE: x", "no_stake:x"):
        assert Refund.from_error(unknown) == Refund(RefundReason.ADMIN), unknown
    assert RefundReason.parse("boom: x") == (None, "x")
    assert len(RefundReason.BAD_RESULT.error("x" * 1000)) == 500


def test_every_refund_reason_has_a_text_and_a_detail_is_escaped() -> None:
    assert set(texts.REFUND_REASONS) == set(RefundReason)
    assert all(type(key) is RefundReason for key in texts.REFUND_REASONS)
    for reason in RefundReason:
        assert Refund.from_error(Refund(reason, "d").error).reason is reason
    shown = Refund(RefundReason.APP_ERROR, "<b>x</b> & y").text()
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in shown and "<b>" not in shown


def test_a_refund_takes_a_reason_of_the_enum_only() -> None:
    assert typing.get_type_hints(Refund)["reason"] is RefundReason  # mypy refuses a str there (test below)


@pytest.mark.slow  # mypy over the bot's imports: ~20 s with a cold cache
def test_mypy_refuses_a_refund_reason_with_a_typo(tmp_path: Path) -> None:
    snippet = tmp_path / "typo.py"
    snippet.write_text(
        "from bot.endings import Refund\n"
        "from ledger import RefundReason\n"
        "Refund(RefundReason.BAD_RESULT, 'fine')\n"
        "Refund('bad_reslt')\n"
        "RefundReason.BAD_RESLT\n"
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in found.stdout.splitlines() if ": error:" in line]
    assert found.returncode == 1, found.stdout + found.stderr
    assert len(lines) == 2, found.stdout
    assert 'typo.py:4: error: Argument 1 to "Refund" has incompatible type "str"; expected "RefundReason"' in lines[0]
    assert 'typo.py:5: error: "type[RefundReason]" has no attribute "BAD_RESLT"' in lines[1]
