"""Property test: random grants, reserves, posts (full, partial, with fee), voids and retries against a
tiny in-memory model; audit() and every balance checked after each step."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import (AlreadyResolved, ExceedsReservation, InsufficientFunds, Ledger, TransferConflict,
                    UnknownTransfer)

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
        self.pending: dict[str, tuple[int, int]] = {}   # reservation id -> (user, amount), open only
        self.resolved: set[str] = set()
        self.done: dict[str, tuple[object, ...]] = {}   # transfer id -> request fields
        self.counter = 0

    def new_id(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def teardown(self) -> None:
        self.book.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def available(self, user: int) -> int:
        held = sum(a for u, a in self.pending.values() if u == user)
        return self.posted.get(user, 0) - held

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
                    tid, fields[1], fields[2] + 1, "")
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

    @invariant()
    def books_match_model(self) -> None:
        self.book.audit()
        for user in range(1, 5):
            bal = self.book.balance(user)
            held = sum(a for u, a in self.pending.values() if u == user)
            assert (bal.posted, bal.pending, bal.available) == (
                self.posted.get(user, 0), held, self.posted.get(user, 0) - held)


LedgerMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLedgerMachine = LedgerMachine.TestCase
