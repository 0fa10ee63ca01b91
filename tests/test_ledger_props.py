"""Property test: random grants, reserves, posts (full, partial, with fee), voids, retries and jobs
(create_job, complete_job, refund_job, refund_paid_job, each also repeated) against a tiny in-memory model;
audit(), every balance, the operator's refund expense and the jobs in flight checked after each step."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import (
    AlreadyResolved,
    ExceedsReservation,
    InsufficientFunds,
    JobState,
    Ledger,
    TransferConflict,
    UnknownTransfer,
)

USERS = st.integers(min_value=1, max_value=4)
AMOUNTS = st.integers(min_value=1, max_value=1000)


class LedgerMachine(RuleBasedStateMachine):
    """The model: posted and pending per user, reservations by id, and every request by id."""

    def __init__(self) -> None:
        super().__init__()
        # tmpfs when there is one: this test checks logic, not fsync (the crash test checks that).
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = tempfile.mkdtemp(prefix="ledger-props-", dir=shm)
        self.book = Ledger(Path(self.dir) / "books.db")
        self.posted: dict[int, int] = {}
        self.pending: dict[str, tuple[int, int]] = {}  # reservation id -> (user, amount), open only
        self.resolved: set[str] = set()
        self.done: dict[str, tuple[object, ...]] = {}  # transfer id -> request fields
        self.jobs: dict[str, list[object]] = {}  # job id -> [user, reserved, state, charged]
        self.expense = 0  # paid back from operator:refund_expense
        self.counter = 0

    def new_id(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def teardown(self) -> None:
        self.book.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def held(self, user: int) -> int:
        """Open reservations of `user`: raw ones and those of jobs not yet completed or refunded."""
        raw = sum(a for u, a in self.pending.values() if u == user)
        return raw + sum(
            j[1]
            for j in self.jobs.values()  # type: ignore[misc]  # a job is a list[object]: [user, reserved, state, charged]
            if j[0] == user and j[2] in ("RECEIVED", "MATCHED")
        )

    def available(self, user: int) -> int:
        return self.posted.get(user, 0) - self.held(user)

    def jobs_in(self, *states: str) -> list[str]:
        return sorted(j for j, v in self.jobs.items() if v[2] in states)

    @rule(user=USERS, amount=AMOUNTS)
    def grant(self, user: int, amount: int) -> None:
        tid = self.new_id()
        self.book.grant(tid, user, amount, "")
        self.posted[user] = self.posted.get(user, 0) + amount
        self.done[tid] = ("grant", user, amount)

    @rule(user=USERS, amount=AMOUNTS)
    def reserve(self, user: int, amount: int) -> None:
        tid = self.new_id()
        if amount > self.available(user):
            try:
                self.book.reserve(tid, user, amount, "job")
            except InsufficientFunds:
                return
            raise AssertionError("overdraft accepted")
        self.book.reserve(tid, user, amount, "job")
        self.pending[tid] = (user, amount)
        self.done[tid] = ("reserve", user, amount)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), partial=st.booleans(), fee=st.integers(min_value=0, max_value=50))
    def post(self, data: st.DataObject, partial: bool, fee: int) -> None:
        rid = data.draw(st.sampled_from(sorted(self.pending)))
        user, reserved = self.pending[rid]
        amount = data.draw(st.integers(min_value=1, max_value=reserved + 5)) if partial else None
        tid = self.new_id()
        used = (amount if amount is not None else reserved - fee) + fee
        if (amount if amount is not None else reserved - fee) <= 0 or used > reserved:
            try:
                self.book.post(tid, rid, amount, fee=fee)
            except ExceedsReservation:
                return
            raise AssertionError("post above the reservation accepted")
        self.book.post(tid, rid, amount, fee=fee)
        del self.pending[rid]
        self.resolved.add(rid)
        self.posted[user] -= used
        self.done[tid] = ("post", rid, amount, fee)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.pending)))
        tid = self.new_id()
        self.book.void(tid, rid)
        del self.pending[rid]
        self.resolved.add(rid)
        self.done[tid] = ("void", rid)

    @precondition(lambda self: self.resolved)
    @rule(data=st.data(), post=st.booleans())
    def resolve_again(self, data: st.DataObject, post: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.resolved)))
        tid = self.new_id()
        try:
            self.book.post(tid, rid) if post else self.book.void(tid, rid)
        except AlreadyResolved:
            return
        raise AssertionError("a reservation resolved twice")

    @rule()
    def unknown_pending(self) -> None:
        try:
            self.book.void(self.new_id(), "no-such-reservation")
        except UnknownTransfer:
            return
        raise AssertionError("void of an unknown reservation accepted")

    @precondition(lambda self: self.done)
    @rule(data=st.data(), conflict=st.booleans())
    def retry(self, data: st.DataObject, conflict: bool) -> None:
        tid = data.draw(st.sampled_from(sorted(self.done)))
        fields = self.done[tid]
        kind = fields[0]
        if conflict:
            try:
                self.book.grant(tid, 99, 1, "other") if kind != "grant" else self.book.grant(
                    tid, fields[1], fields[2] + 1, ""
                )
            except TransferConflict:
                return
            raise AssertionError("conflicting retry accepted")
        if kind == "grant":
            self.book.grant(tid, fields[1], fields[2], "")
        elif kind == "reserve":
            self.book.reserve(tid, fields[1], fields[2], "job")
        elif kind == "post":
            self.book.post(tid, fields[1], fields[2], fee=fields[3])
        else:
            self.book.void(tid, fields[1])

    # ----- jobs: the reservation, the charge and the refunds move with the job's state ----------------

    @rule(user=USERS, amount=AMOUNTS)
    def create_job(self, user: int, amount: int) -> None:
        jid = f"j{self.new_id()}"
        if amount > self.available(user):
            try:
                self.book.create_job(jid, user, user, amount)
            except InsufficientFunds:
                assert self.book.get_job(jid) is None
                return
            raise AssertionError("a job reserved more than the user has")
        job = self.book.create_job(jid, user, user, amount)
        assert job.state is JobState.RECEIVED and job.reservation == f"{jid}:reserve"
        assert self.book.create_job(jid, user, user, amount) == job  # a replayed intake
        self.jobs[jid] = [user, amount, "RECEIVED", 0]

    @precondition(lambda self: self.jobs_in("RECEIVED"))
    @rule(data=st.data())
    def match_job(self, data: st.DataObject) -> None:
        jid = data.draw(st.sampled_from(self.jobs_in("RECEIVED")))
        for state in (JobState.ORDER_SIGNED, JobState.MATCHING, JobState.MATCHED):
            self.book.transition(jid, list(JobState), state)
        self.jobs[jid][2] = "MATCHED"

    @precondition(lambda self: self.jobs_in("MATCHED"))
    @rule(data=st.data(), fee=st.integers(min_value=0, max_value=50))
    def complete_job(self, data: st.DataObject, fee: int) -> None:
        jid = data.draw(st.sampled_from(self.jobs_in("MATCHED")))
        user, reserved = self.jobs[jid][0], self.jobs[jid][1]
        price = data.draw(st.integers(min_value=1, max_value=reserved + 5))  # type: ignore[operator]  # as held: a job's fields are objects
        if price + fee > reserved:  # type: ignore[operator]  # as held
            try:
                self.book.complete_job(jid, f"{jid}:post", price, fee=fee)
            except ExceedsReservation:
                assert self.book.get_job(jid).state is JobState.MATCHED  # nothing written
                return
            raise AssertionError("a charge above the reservation accepted")
        self.book.complete_job(jid, f"{jid}:post", price, fee=fee)
        self.posted[user] -= price + fee  # type: ignore[index]  # as held
        self.jobs[jid][2:] = ["COMPLETED", price + fee]

    @precondition(lambda self: self.jobs_in("RECEIVED", "MATCHED", "COMPLETED"))
    @rule(data=st.data())
    def refund_job(self, data: st.DataObject) -> None:
        jid = data.draw(st.sampled_from(self.jobs_in("RECEIVED", "MATCHED", "COMPLETED")))
        user, _, state, charged = self.jobs[jid]
        job = self.book.refund_job(jid, f"{jid}:refund", error="test")
        assert job.state is JobState.REFUNDED
        if state == "COMPLETED":  # paid back by the operator
            self.posted[user] += charged  # type: ignore[index, operator]  # as held
            self.expense += charged  # type: ignore[operator]  # as held
        self.jobs[jid][2] = "REFUNDED"

    @precondition(lambda self: self.jobs_in("MATCHED", "COMPLETED"))
    @rule(data=st.data())
    def refund_paid_job(self, data: st.DataObject) -> None:
        """The task was paid on chain but failed: post what it cost and pay it back, in one transaction."""
        jid = data.draw(st.sampled_from(self.jobs_in("MATCHED", "COMPLETED")))
        user, reserved, state, charged = self.jobs[jid]
        price = data.draw(st.integers(min_value=1, max_value=reserved + 5))  # type: ignore[operator]  # as held
        if state == "MATCHED" and price > reserved:  # type: ignore[operator]  # as held
            try:
                self.book.refund_paid_job(jid, f"{jid}:post", f"{jid}:refund", price, error="test")
            except ExceedsReservation:
                assert self.book.get_job(jid).state is JobState.MATCHED  # nothing written
                assert self.book.reservation_state(f"{jid}:reserve") == "open"
                return
            raise AssertionError("a charge above the reservation accepted")
        job = self.book.refund_paid_job(jid, f"{jid}:post", f"{jid}:refund", price, error="test")
        assert job.state is JobState.REFUNDED
        assert self.book.reservation_state(f"{jid}:reserve") == "posted"
        paid = charged if state == "COMPLETED" else price  # a completed job's charge stays as posted
        self.posted[user] += paid - (0 if state == "COMPLETED" else price)  # type: ignore[index, operator]  # as held
        self.expense += paid  # type: ignore[operator]  # as held
        self.jobs[jid][2:] = ["REFUNDED", paid]

    @precondition(lambda self: self.jobs_in("COMPLETED", "REFUNDED"))
    @rule(data=st.data())
    def job_again(self, data: st.DataObject) -> None:
        """Every job ending repeated (a crash before the caller saw it) changes nothing."""
        jid = data.draw(st.sampled_from(self.jobs_in("COMPLETED", "REFUNDED")))
        state = self.jobs[jid][2]
        if state == "COMPLETED":
            job = self.book.complete_job(jid, f"{jid}:post", 1)
        else:
            self.book.refund_job(jid, f"{jid}:refund", error="again")
            job = self.book.refund_paid_job(jid, f"{jid}:post", f"{jid}:refund", 1, error="again")
        assert job.state.value == state

    @invariant()
    def books_match_model(self) -> None:
        self.book.audit()
        for user in range(1, 5):
            bal = self.book.balance(user)
            held = self.held(user)
            assert (bal.posted, bal.pending, bal.available) == (
                self.posted.get(user, 0),
                held,
                self.posted.get(user, 0) - held,
            )
            flying = sum(1 for j in self.jobs.values() if j[0] == user and j[2] != "REFUNDED")
            assert self.book.jobs_in_flight(user) == flying
        expense = self.book.account("operator:refund_expense")
        assert (expense.debits_posted if expense else 0) == self.expense


LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerMachine = LedgerMachine.TestCase
