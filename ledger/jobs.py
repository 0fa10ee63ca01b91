"""The jobs table and its state machine, with money and state changed in the same transaction.

Graph (anything else raises IllegalTransition):

    RECEIVED -> ORDER_SIGNED -> MATCHING -> MATCHED -> RUNNING -> COMPLETED -> DELIVERED
    RECEIVED / ORDER_SIGNED / MATCHING          -> CANCELLED (void)   or REFUNDED (void)
    MATCHED / RUNNING                           -> REFUNDED (void; or refund_expense if already posted)
    MATCHED                                     -> COMPLETED (the finalize event came first)
    COMPLETED                                   -> REFUNDED (operator pays back via refund_expense)
    MATCHED / RUNNING / COMPLETED               -> REFUNDED after payment on chain (refund_paid_job: post,
                                                   then refund_expense, in one transaction)
    any non-terminal state                      -> NEEDS_ADMIN (quarantine: money stays reserved)
    NEEDS_ADMIN -> any state but itself         (an admin's decision; never done automatically)

DELIVERED, REFUNDED and CANCELLED are terminal. COMPLETED, REFUNDED and CANCELLED move money, so only
`complete_job`, `refund_job`, `refund_paid_job` and `cancel_job` reach them (post / void / refund in the
same transaction); `transition()` refuses them. `create_job` writes the job row and reserves its price in
one transaction. Repeating a transition already made returns quietly.

This module must never post or void outside the transaction that changes the job's state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from ledger.amounts import check_amount
from ledger.books import (
    IEXEC_SPEND,
    REFUND_EXPENSE,
    Books,
    Transfer,
    check_id,
    check_text,
    check_user,
    user_account,
)
from ledger.errors import IllegalTransition, InvalidArgument, JobConflict, TransferConflict, UnknownJob


class JobState(str, Enum):
    """A job's state; see the module docstring for the graph."""

    RECEIVED = "RECEIVED"
    ORDER_SIGNED = "ORDER_SIGNED"
    MATCHING = "MATCHING"
    MATCHED = "MATCHED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    DELIVERED = "DELIVERED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"
    NEEDS_ADMIN = "NEEDS_ADMIN"

    def is_terminal(self) -> bool:
        """True for DELIVERED, REFUNDED and CANCELLED (NEEDS_ADMIN is not terminal)."""
        return self in _TERMINAL

    def is_resumable(self) -> bool:
        """True for states the pipeline resumes by itself after a restart."""
        return not self.is_terminal() and self is not JobState.NEEDS_ADMIN


class RefundReason(StrEnum):
    """Why a job was refunded: the head of a REFUNDED job's `error`, kept as "<reason>: <detail>".

    The values are what the books hold: never rename one (rows written before must read back the same);
    a new reason needs a text for the user (`bot.texts.REFUND_REASONS`, a test checks every reason has one).
    """

    #: no workerpool order at a price within the limit
    NO_OFFER = "no_offer"
    #: the bot's own iExec account was short of stake
    NO_STAKE = "no_stake"
    #: the task did not finish before its deadline on chain
    EXPIRED = "expired"
    #: the task failed on iExec (written by older versions; kept so that their rows read back)
    FAILED = "failed"
    #: the app ran and reported an error (its error.txt is the detail)
    APP_ERROR = "app_error"
    #: the result could not be fetched, decrypted or read (the detail says which)
    BAD_RESULT = "bad_result"
    #: an admin refunded a held job
    ADMIN = "admin"

    def error(self, detail: str = "") -> str:
        """The `error` kept on the job: "<reason>: <detail>", cut to 500 characters."""
        return f"{self.value}: {detail}"[:500]

    @classmethod
    def parse(cls, error: str | None) -> tuple[RefundReason | None, str]:
        """(reason, detail) of a stored `error`; reason None when it does not start with a known reason."""
        head, _, detail = (error or "").partition(": ")
        try:
            return cls(head), detail
        except ValueError:
            return None, detail


S = JobState
_TERMINAL = frozenset({S.DELIVERED, S.REFUNDED, S.CANCELLED})
ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.RECEIVED: frozenset({S.ORDER_SIGNED, S.CANCELLED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.ORDER_SIGNED: frozenset({S.MATCHING, S.CANCELLED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.MATCHING: frozenset({S.MATCHED, S.CANCELLED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.MATCHED: frozenset({S.RUNNING, S.COMPLETED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.RUNNING: frozenset({S.COMPLETED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.COMPLETED: frozenset({S.DELIVERED, S.REFUNDED, S.NEEDS_ADMIN}),
    S.NEEDS_ADMIN: frozenset(set(JobState) - {S.NEEDS_ADMIN}),
    S.DELIVERED: frozenset(),
    S.REFUNDED: frozenset(),
    S.CANCELLED: frozenset(),
}
MONEY_STATES = frozenset({S.COMPLETED, S.REFUNDED, S.CANCELLED})

# Fields a caller may set; the write-once ones may be set again only to the same value.
_FIELDS = (
    "user_message_id",
    "status_message_id",
    "input_ref",
    "options",
    "request_order",
    "order_hash",
    "deal_id",
    "task_id",
    "app_price",
    "workerpool_price",
    "result_ref",
    "error",
    "attempts",
)
_WRITE_ONCE = frozenset({"request_order", "order_hash", "deal_id", "task_id"})
_JSON_FIELDS = frozenset({"options", "request_order"})


@dataclass(frozen=True)
class Job:
    """One row of the jobs table. Prices in nRLC; timestamps in unix ms."""

    id: str
    user_id: int
    chat_id: int
    user_message_id: int | None
    status_message_id: int | None
    input_ref: str | None
    options: dict[str, Any]
    reservation: str
    max_price: int
    request_order: dict[str, Any] | None
    order_hash: str | None
    deal_id: str | None
    task_id: str | None
    app_price: int | None
    workerpool_price: int | None
    result_ref: str | None
    error: str | None
    attempts: int
    state: JobState
    created_at: int
    updated_at: int
    state_times: dict[str, int]


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["options"] = json.loads(data["options"])
    data["request_order"] = json.loads(data["request_order"]) if data["request_order"] else None
    data["state_times"] = json.loads(data["state_times"])
    data["state"] = JobState(data["state"])
    return Job(**data)


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with `prefix` (its wildcards escaped with a backslash)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _states(value: JobState | str | Iterable[JobState | str] | None) -> frozenset[JobState]:
    if value is None:
        return frozenset(JobState)
    items = [value] if isinstance(value, str) else list(value)
    try:
        return frozenset(JobState(item) for item in items)
    except ValueError:
        raise InvalidArgument(f"unknown job state in {items!r}") from None


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise InvalidArgument(f"jobs have no settable field {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS and value is not None:
            value = json.dumps(value, sort_keys=True, separators=(",", ":"))
        elif isinstance(value, bool):
            raise InvalidArgument(f"{name} must not be a bool")
        elif name == "attempts" and not (isinstance(value, int) and value >= 0):
            raise InvalidArgument("attempts must be a non-negative int")
        out[name] = value
    return out


class Jobs(Books):
    """The jobs API on the books' connection (mixed into Ledger)."""

    def _load(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (check_id(job_id, "job_id"),)).fetchone()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return _job(row)

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (check_id(job_id, "job_id"),))
        return _job(rows[0]) if rows else None

    def create_job(
        self,
        job_id: str,
        user: int,
        chat: int,
        amount: int,
        *,
        reservation_id: str | None = None,
        user_message_id: int | None = None,
        status_message_id: int | None = None,
        input_ref: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Job:
        """Create job `job_id` (RECEIVED) and reserve `amount` nRLC of `user` in ONE transaction.

        The reservation id defaults to "<job_id>:reserve". Idempotent on job_id: a retry with the same
        user, chat, amount, input and options returns the stored job; other fields raise JobConflict.
        Raises InsufficientFunds (nothing written), InvalidAmount, InvalidArgument.
        """
        check_id(job_id, "job_id")
        check_user(user)
        if isinstance(chat, bool) or not isinstance(chat, int):
            raise InvalidArgument("chat must be an int Telegram chat id")
        check_amount(amount)
        reservation = check_id(reservation_id or f"{job_id}:reserve", "reservation_id")
        if input_ref is not None:
            check_text(input_ref, "input_ref")
        fields = _encode(
            {
                "user_message_id": user_message_id,
                "status_message_id": status_message_id,
                "input_ref": input_ref,
                "options": options or {},
            }
        )
        with self.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                job = _job(row)
                if (job.user_id, job.chat_id, job.max_price, job.reservation, job.input_ref, job.options) != (
                    user,
                    chat,
                    amount,
                    reservation,
                    input_ref,
                    options or {},
                ):
                    raise JobConflict(f"job {job_id!r} exists with other fields")
                return job
            wanted = Transfer(reservation, "reserve", user_account(user), IEXEC_SPEND, amount, job=job_id)
            self._reserve(conn, wanted, user)
            now = self._now_ms()
            conn.execute(
                "INSERT INTO jobs (id, user_id, chat_id, reservation, max_price, state, created_at, "
                "updated_at, state_times, user_message_id, status_message_id, input_ref, options) "
                "VALUES (?, ?, ?, ?, ?, 'RECEIVED', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    user,
                    chat,
                    reservation,
                    amount,
                    now,
                    now,
                    json.dumps({"RECEIVED": now}),
                    fields["user_message_id"],
                    fields["status_message_id"],
                    fields["input_ref"],
                    fields["options"],
                ),
            )
            return self._load(conn, job_id)

    def _set(self, conn: sqlite3.Connection, job: Job, state: JobState | None, fields: dict[str, Any]) -> Job:
        encoded = _encode(fields)
        for name in _WRITE_ONCE & set(encoded):
            current = getattr(job, name)
            if name in _JSON_FIELDS and current is not None:
                current = json.dumps(current, sort_keys=True, separators=(",", ":"))
            if current is not None and current != encoded[name]:
                raise JobConflict(f"job {job.id}: {name} is already set to another value")
        now = self._now_ms()
        encoded["updated_at"] = now
        if state is not None:
            encoded["state"] = state.value
            encoded["state_times"] = json.dumps({**job.state_times, state.value: now})
        sets = ", ".join(f"{name} = :{name}" for name in encoded)
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = :_id", {**encoded, "_id": job.id})
        return self._load(conn, job.id)

    def _check_move(self, job: Job, from_states: frozenset[JobState], to: JobState) -> None:
        if job.state not in from_states:
            raise IllegalTransition(
                f"job {job.id} is {job.state.value}, not {' or '.join(sorted(s.value for s in from_states))}"
            )
        if to not in ALLOWED[job.state]:
            raise IllegalTransition(f"job {job.id}: {job.state.value} -> {to.value} is not allowed")

    def transition(
        self,
        job_id: str,
        from_states: JobState | str | Iterable[JobState | str],
        to_state: JobState | str,
        **fields: Any,
    ) -> Job:
        """Move a job from one of `from_states` to `to_state` and set `fields`, in one transaction.

        Returns quietly (changing nothing) if the job is already in `to_state`. Raises UnknownJob,
        IllegalTransition (wrong source state, a move not in the graph, or a money state: use
        complete_job / refund_job / cancel_job), JobConflict (a write-once field changed).
        """
        to = next(iter(_states(to_state)))
        froms = _states(from_states)
        if to in MONEY_STATES:
            raise IllegalTransition(f"{to.value} moves money: use complete_job, refund_job or cancel_job")
        with self.transaction() as conn:
            job = self._load(conn, job_id)
            if job.state is to:
                return job
            self._check_move(job, froms, to)
            return self._set(conn, job, to, fields)

    def update_job(self, job_id: str, **fields: Any) -> Job:
        """Set fields of a job without changing its state. Raises UnknownJob, JobConflict."""
        with self.transaction() as conn:
            return self._set(conn, self._load(conn, job_id), None, fields)

    def complete_job(
        self,
        job_id: str,
        post_id: str,
        amount: int | None = None,
        *,
        fee: int = 0,
        from_states: Iterable[JobState | str] | None = None,
        **fields: Any,
    ) -> Job:
        """COMPLETED + post the job's reservation (`amount` to iExec spend, `fee` to fees) atomically.

        Idempotent: a job already COMPLETED (or DELIVERED) is returned unchanged.
        """
        froms = _states(from_states)
        with self.transaction() as conn:
            job = self._load(conn, job_id)
            if job.state in (S.COMPLETED, S.DELIVERED):
                return job
            self._check_move(job, froms, S.COMPLETED)
            if amount is not None:
                check_amount(amount)
            self._post(conn, check_id(post_id), job.reservation, amount, fee, f"job {job.id} completed")
            return self._set(conn, job, S.COMPLETED, fields)

    def refund_job(
        self,
        job_id: str,
        refund_id: str,
        *,
        error: str,
        from_states: Iterable[JobState | str] | None = None,
        **fields: Any,
    ) -> Job:
        """REFUNDED + give the user their money back, atomically, and record `error` (told to the user).

        An open reservation is voided; one already posted (the task was paid on chain but failed in
        the app) is paid back from operator:refund_expense; one already voided moves nothing.
        Idempotent: a job already REFUNDED is returned unchanged.
        """
        return self._refund(job_id, refund_id, error, from_states, fields)

    def refund_paid_job(
        self,
        job_id: str,
        post_id: str,
        refund_id: str,
        amount: int,
        *,
        error: str,
        fee: int = 0,
        from_states: Iterable[JobState | str] | None = None,
        **fields: Any,
    ) -> Job:
        """REFUNDED after the task was paid on chain, in ONE transaction: post the job's reservation
        (`amount` to iExec spend, `fee` to fees) if it is still open, then pay the user back from
        operator:refund_expense, and record `error`.

        Idempotent on the job and the ids: a job already REFUNDED is returned unchanged, and a reservation
        posted before (by `complete_job` or an earlier try) is not posted again.
        """
        check_id(post_id, "post_id")
        check_amount(amount)
        return self._refund(job_id, refund_id, error, from_states, fields, paid=(post_id, amount, fee))

    def _refund(
        self,
        job_id: str,
        refund_id: str,
        error: str,
        from_states: Iterable[JobState | str] | None,
        fields: dict[str, Any],
        paid: tuple[str, int, int] | None = None,
    ) -> Job:
        """`refund_job`, and with `paid` = (post id, amount, fee) first the post of a still open reservation."""
        check_id(refund_id, "refund_id")
        check_text(error, "error")
        froms = _states(from_states)
        with self.transaction() as conn:
            job = self._load(conn, job_id)
            if job.state is S.REFUNDED:
                return job
            self._check_move(job, froms, S.REFUNDED)
            if (
                paid is not None
                and conn.execute(
                    "SELECT 1 FROM transfers WHERE pending_id = ? AND leg = 0", (job.reservation,)
                ).fetchone()
                is None
            ):
                post_id, amount, fee = paid
                self._post(conn, post_id, job.reservation, amount, fee, f"job {job.id} paid on chain")
            self._give_back(conn, job, refund_id)
            return self._set(conn, job, S.REFUNDED, {**fields, "error": error})

    def refund_part(self, job_id: str, part: int, amount: int, *, reason: str) -> Transfer:
        """Pay back `amount` nRLC of a charged job to its user from operator:refund_expense: one part of an
        album job (picture `part`, counted from 1) that failed while the others were delivered. The job stays
        COMPLETED/DELIVERED; its charge is not changed.

        Idempotent on (job, part): the transfer id is "<job id>:refund:<part>", so a second call returns the
        first transfer (another amount raises TransferConflict). Raises IllegalTransition when the job's charge
        is not posted yet (COMPLETED first) or the parts paid back would exceed what was charged.
        """
        check_id(job_id, "job_id")
        if isinstance(part, bool) or not isinstance(part, int) or not 1 <= part <= 1000:
            raise InvalidArgument("part must be an int from 1 to 1000")
        check_amount(amount)
        check_text(reason, "reason")
        transfer_id = f"{job_id}:refund:{part}"
        with self.transaction() as conn:
            job = self._load(conn, job_id)
            existing = self._get(conn, transfer_id)
            if existing is not None:
                if existing.amount != amount or existing.kind != "refund_expense":
                    raise TransferConflict(f"transfer {transfer_id!r} exists with other fields")
                return existing
            if job.state not in (S.COMPLETED, S.DELIVERED):
                raise IllegalTransition(f"job {job.id} is {job.state.value}: only a charged job pays back a part")
            row = conn.execute(
                "SELECT id FROM transfers WHERE pending_id = ? AND leg = 0 AND kind = 'post'", (job.reservation,)
            ).fetchone()
            posted = self._get(conn, row[0]) if row is not None else None
            if posted is None:
                raise IllegalTransition(f"job {job.id} has no posted charge")
            (already,) = conn.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE job = ? AND kind = 'refund_expense' "
                "AND id LIKE ? ESCAPE '\\'",
                (job.id, _like_prefix(f"{job.id}:refund:")),
            ).fetchone()
            if already + amount > posted.amount + posted.fee:
                raise IllegalTransition(
                    f"job {job.id}: parts paid back ({already} + {amount}) would exceed the charge "
                    f"({posted.amount + posted.fee})"
                )
            wanted = Transfer(
                transfer_id,
                "refund_expense",
                REFUND_EXPENSE,
                user_account(job.user_id),
                amount,
                job=job.id,
                memo=f"job {job.id} picture {part} failed: {reason}"[:500],
            )
            result = self._post_credit(conn, wanted, job.user_id, None)
            assert result is not None
            return result

    def parts_refunded(self, job_id: str) -> dict[int, int]:
        """{part: nRLC paid back} for the job's parts refunded by `refund_part`."""
        check_id(job_id, "job_id")
        rows = self._read(
            "SELECT id, amount FROM transfers WHERE job = ? AND kind = 'refund_expense' AND id LIKE ? ESCAPE '\\'",
            (job_id, _like_prefix(f"{job_id}:refund:")),
        )
        return {int(str(tid).rsplit(":", 1)[1]): amount for tid, amount in rows}

    def cancel_job(
        self,
        job_id: str,
        void_id: str,
        *,
        error: str = "cancelled by the user",
        from_states: Iterable[JobState | str] | None = None,
    ) -> Job:
        """CANCELLED + void the reservation, atomically (only before matching)."""
        check_id(void_id, "void_id")
        froms = _states(from_states)
        with self.transaction() as conn:
            job = self._load(conn, job_id)
            if job.state is S.CANCELLED:
                return job
            self._check_move(job, froms, S.CANCELLED)
            self._give_back(conn, job, void_id)
            return self._set(conn, job, S.CANCELLED, {"error": error})

    def _give_back(self, conn: sqlite3.Connection, job: Job, transfer_id: str) -> None:
        row = conn.execute(
            "SELECT kind, id FROM transfers WHERE pending_id = ? AND leg = 0", (job.reservation,)
        ).fetchone()
        if row is None:
            self._void(conn, transfer_id, job.reservation, f"job {job.id} refunded")
        elif row[0] == "post":
            posted = self._get(conn, row[1])
            assert posted is not None
            (parts,) = conn.execute(  # pictures of an album paid back already (refund_part)
                "SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE job = ? AND kind = 'refund_expense' "
                "AND id LIKE ? ESCAPE '\\'",
                (job.id, _like_prefix(f"{job.id}:refund:")),
            ).fetchone()
            if posted.amount + posted.fee - parts > 0:
                self.refund_expense(
                    transfer_id,
                    job.user_id,
                    posted.amount + posted.fee - parts,
                    job.id,
                    f"job {job.id} refunded after payment",
                )

    def find_jobs_by_suffix(self, suffix: str, limit: int = 2) -> list[Job]:
        """At most `limit` jobs whose id ends with `suffix` (case-sensitive, characters taken literally), by id.

        The last characters of a job's id are what users and admins see; `limit=2` tells a unique match from
        an ambiguous one. The ids are compared in SQL (one pass over the primary key's index, no job row is
        read unless it matches): ids have no fixed length, so no index can serve a suffix."""
        check_id(suffix, "suffix")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument("limit must be a positive int")
        rows = self._read(
            "SELECT * FROM jobs WHERE id IN "
            "(SELECT id FROM jobs WHERE substr(id, -length(?1)) = ?1 ORDER BY id LIMIT ?2) ORDER BY id",
            (suffix, limit),
        )
        return [_job(row) for row in rows]

    def jobs_in_states(self, *states: JobState | str, limit: int = 1000) -> list[Job]:
        """Jobs in any of `states` (all states if none given), oldest first."""
        wanted = sorted(s.value for s in _states(states or None))
        marks = ", ".join("?" * len(wanted))
        rows = self._read(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, id LIMIT ?", (*wanted, limit)
        )
        return [_job(row) for row in rows]

    def user_jobs(self, user: int, limit: int = 10) -> list[Job]:
        """A user's most recent jobs, newest first."""
        rows = self._read(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", (check_user(user), limit)
        )
        return [_job(row) for row in rows]

    def job_by(
        self, *, task_id: str | None = None, order_hash: str | None = None, deal_id: str | None = None
    ) -> Job | None:
        """The job with this task id, order hash or deal id (exactly one of them), or None."""
        given = {
            k: v for k, v in {"task_id": task_id, "order_hash": order_hash, "deal_id": deal_id}.items() if v is not None
        }
        if len(given) != 1:
            raise InvalidArgument("give exactly one of task_id, order_hash, deal_id")
        ((column, value),) = given.items()
        rows = self._read(f"SELECT * FROM jobs WHERE {column} = ? LIMIT 1", (value,))
        return _job(rows[0]) if rows else None

    def jobs_in_flight(self, user: int) -> int:
        """How many of the user's jobs are not terminal. A NEEDS_ADMIN job counts while its money is
        reserved; one held after it was charged (e.g. a result Telegram refused) does not."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state NOT IN "
            "('DELIVERED', 'REFUNDED', 'CANCELLED') AND NOT (state = 'NEEDS_ADMIN' AND EXISTS "
            "(SELECT 1 FROM transfers t WHERE t.pending_id = jobs.reservation AND t.leg = 0))",
            (check_user(user),),
        )
        return rows[0][0]

    def untold_jobs(
        self, kind: str, states: Iterable[JobState | str], *, since_ms: int = 0, limit: int = 1000
    ) -> list[Job]:
        """Jobs in `states`, changed at or after `since_ms`, with no event (`kind`, "<state>:<job id>"):
        e.g. refunds whose user was not told yet (`record_event("told", "REFUNDED:<id>")` marks them)."""
        wanted = sorted(s.value for s in _states(states))
        marks = ", ".join("?" * len(wanted))
        rows = self._read(
            f"SELECT * FROM jobs WHERE state IN ({marks}) AND updated_at >= ? AND NOT EXISTS (SELECT 1 FROM "
            "events e WHERE e.kind = ? AND e.natural_id = jobs.state || ':' || jobs.id) "
            "ORDER BY updated_at, id LIMIT ?",
            (*wanted, since_ms, check_id(kind, "kind"), limit),
        )
        return [_job(row) for row in rows]

    def jobs_since(self, user: int, since_ms: int) -> int:
        """How many jobs the user created at or after `since_ms` (unix ms)."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at >= ?", (check_user(user), since_ms)
        )
        return rows[0][0]

    def spent_since(self, user: int, since_ms: int) -> int:
        """nRLC the user committed since `since_ms`: posted charges (price + fee) plus open reservations."""
        with self.snapshot() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(t.amount), 0) FROM transfers t JOIN accounts a ON a.id = t.debit_account "
                "WHERE a.name = ? AND t.created_at >= ? AND (t.kind = 'post' OR (t.kind = 'reserve' AND "
                "NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id AND r.leg = 0)))",
                (user_account(check_user(user)), since_ms),
            ).fetchone()
        return row[0]
