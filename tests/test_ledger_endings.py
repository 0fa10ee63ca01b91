"""How jobs end in the books: a refund after payment on chain in one transaction, held jobs and the
in-flight count, and refunds whose user was not told yet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import ExceedsReservation, JobState, Ledger

PRICE = 100


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "books.db")
    led.grant("g1", 1, 1000)
    yield led
    led.close()


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
