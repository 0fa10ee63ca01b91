"""Accounts and two-phase transfers: the money half of the books.

Accounts keep TigerBeetle-style running totals (debits/credits, pending/posted) updated in the same
transaction as the append-only transfer rows that move them; CHECK constraints refuse a user balance
below zero. Operator accounts (see `ledger.schema.OPERATOR_ACCOUNTS`) are where credit comes from
(`operator:grants`, `operator:deposits`, `operator:refund_expense`) and where it goes
(`operator:iexec_spend`, `operator:fees`); a user's account is `user:<telegram id>`, created on first use.

Balances of a user: posted = credits_posted - debits_posted; pending = debits_pending (open
reservations); available = posted - pending.

External events (a deposit's tx hash, a Telegram update id) are recorded once, keyed by their natural
id (`record_event`), so that replaying one does nothing twice: a credit can hang on one.

This module must never update or delete a transfer, never use floats, and never write outside
a Store write transaction (`Store.transaction()` or `Store._write()`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from ledger.amounts import MAX_AMOUNT, check_amount, check_fee, format_rlc
from ledger.db import Store
from ledger.errors import (
    AlreadyResolved,
    BalanceOverflow,
    ExceedsReservation,
    InsufficientFunds,
    InvalidArgument,
    LedgerError,
    TransferConflict,
    UnknownTransfer,
)

GRANTS = "operator:grants"
DEPOSITS = "operator:deposits"
IEXEC_SPEND = "operator:iexec_spend"
FEES = "operator:fees"
REFUND_EXPENSE = "operator:refund_expense"

_ID_MAX = 200
_TEXT_MAX = 2000


@dataclass(frozen=True)
class Balance:
    """A user's balance in nRLC: posted, pending (reserved) and available (posted - pending)."""

    posted: int
    pending: int
    available: int


@dataclass(frozen=True)
class Account:
    """An account's running totals in nRLC."""

    name: str
    user_id: int | None
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def balance(self) -> Balance:
        """Credit-normal balance (what a user account holds)."""
        posted = self.credits_posted - self.debits_posted
        return Balance(posted, self.debits_pending, posted - self.debits_pending)


@dataclass(frozen=True)
class Transfer:
    """One transfer as the caller sees it; a post with a fee is one transfer with two legs."""

    id: str
    kind: str  # grant, deposit, reserve, post, void, refund_expense
    debit: str  # account name
    credit: str  # account name (for a post with a fee, the main leg's credit)
    amount: int  # nRLC; for a void, the amount that was reserved
    fee: int = 0  # nRLC posted to operator:fees by the same post
    pending_id: str | None = None
    job: str = ""
    memo: str = ""
    created_at: int = 0  # unix ms; not part of idempotency comparisons
    seq: int = 0

    def same_fields(self, other: Transfer) -> bool:
        """True when both describe the same request (ignores created_at and seq)."""
        return replace(self, created_at=0, seq=0) == replace(other, created_at=0, seq=0)


def check_id(value: object, name: str = "id") -> str:
    """Return a transfer/job id if it is a non-empty printable str of at most 200 chars."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, got {type(value).__name__}")
    if not value or len(value) > _ID_MAX or not value.isprintable():
        raise InvalidArgument(f"{name} must be 1..{_ID_MAX} printable characters, got {value!r:.60}")
    return value


def check_user(value: object) -> int:
    """Return a Telegram user id if it is a positive int (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"user must be an int Telegram user id, got {type(value).__name__}")
    if not 0 < value <= MAX_AMOUNT:
        raise InvalidArgument(f"user must be a positive Telegram user id, got {value}")
    return value


def check_text(value: object, name: str) -> str:
    """Return a memo/job reference if it is a str of at most 2000 chars."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > _TEXT_MAX:
        raise InvalidArgument(f"{name} is longer than {_TEXT_MAX} characters")
    return value


def user_account(user: int) -> str:
    """The account name of a Telegram user."""
    return f"user:{user}"


_TRANSFER_SQL = """
SELECT t.seq, t.id, t.leg, t.kind, d.name, c.name, t.amount, t.pending_id, t.job, t.memo, t.created_at
FROM transfers t JOIN accounts d ON d.id = t.debit_account JOIN accounts c ON c.id = t.credit_account
"""


# One UPDATE moves the four running totals of every account a transfer touches (1 to 3 distinct accounts),
# so the CHECK constraints see them all at once; a failing CHECK undoes the whole statement. Parameters:
# per account ?(5k+1) = id, then its deltas for debits_pending, debits_posted, credits_pending, credits_posted.
def _move_sql(n: int) -> str:
    def column(name: str, offset: int) -> str:
        cases = " ".join(f"WHEN ?{5 * k + 1} THEN ?{5 * k + offset}" for k in range(n))
        return f"{name} = {name} + (CASE id {cases} END)"

    sets = ", ".join(
        column(name, offset)
        for offset, name in enumerate(("debits_pending", "debits_posted", "credits_pending", "credits_posted"), start=2)
    )
    ids = ", ".join(f"?{5 * k + 1}" for k in range(n))
    return f"UPDATE accounts SET {sets} WHERE id IN ({ids})"


_MOVE_SQL = {n: _move_sql(n) for n in (1, 2, 3)}
# The same, moving nothing when transfer id ? exists already (a retry or a conflict, sorted out after).
_MOVE_NEW_SQL = {
    n: sql + f" AND NOT EXISTS (SELECT 1 FROM transfers WHERE id = ?{5 * n + 1})" for n, sql in _MOVE_SQL.items()
}

_APPEND_SQL = {
    n: (
        "INSERT INTO transfers (id, leg, kind, phase, debit_account, credit_account, amount, pending_id, "
        "job, memo, created_at, reserved, reserve_seq) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    )
    for n in (1, 2)
}

# A reservation with what post/void need in one lookup: its row, the transfer that resolved it (if any)
# and whether the resolving transfer's id (first ?) is taken already.
_OPEN_SQL = """
SELECT r.seq, r.kind, r.amount, r.debit_account, r.credit_account, r.job, r.memo, r.created_at,
       (SELECT x.id FROM transfers x WHERE x.pending_id = r.id AND x.leg = 0),
       EXISTS (SELECT 1 FROM transfers y WHERE y.id = ?)
FROM transfers r WHERE r.id = ? AND r.leg = 0
"""


class _Open(NamedTuple):
    """An open reservation about to be posted or voided, with the ids of its accounts (for the moves)."""

    reservation: Transfer
    debit: int
    credit: int


# account id, then deltas of debits_pending, debits_posted, credits_pending, credits_posted
Move = tuple[int, int, int, int, int]


def _merged(moves: tuple[Move, ...]) -> tuple[Move, ...]:
    """Moves with one entry per account (the CASE in one UPDATE takes the first match per account)."""
    if len({move[0] for move in moves}) == len(moves):
        return moves
    sums: dict[int, list[int]] = {}
    for account, *deltas in moves:
        total = sums.setdefault(account, [0, 0, 0, 0])
        for i, delta in enumerate(deltas):
            total[i] += delta
    return tuple((account, total[0], total[1], total[2], total[3]) for account, total in sums.items())


def _main_from_legs(rows: list[sqlite3.Row]) -> Transfer:
    """The transfer of a leg 0 read in the same snapshot (its legs cannot be missing)."""
    transfer = _from_legs(rows)
    if transfer is None:
        raise LedgerError("a transfer's legs vanished inside one snapshot")
    return transfer


def _from_legs(rows: list[sqlite3.Row]) -> Transfer | None:
    if not rows:
        return None
    main = rows[0]
    fee = rows[1][6] if len(rows) > 1 else 0
    return Transfer(
        id=main[1],
        kind=main[3],
        debit=main[4],
        credit=main[5],
        amount=main[6],
        fee=fee,
        pending_id=main[7],
        job=main[8],
        memo=main[9],
        created_at=main[10],
        seq=main[0],
    )


class Books(Store):
    """Accounts, transfers, balances and the audit. See the module docstring for the model."""

    _ids: dict[str, int]
    _names: dict[int, str]

    # ----- accounts -------------------------------------------------------------------------
    def _forget(self) -> None:
        self.__dict__.pop("_ids", None)
        self.__dict__.pop("_names", None)

    def _account_id(self, conn: sqlite3.Connection, name: str, user: int | None = None) -> int:
        """Id of account `name`, creating a user account on first use (ids are cached: never reused)."""
        cache = self.__dict__.setdefault("_ids", {})
        if name in cache:
            return cache[name]
        row = conn.execute("SELECT id FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None:
            if user is None:
                raise InvalidArgument(f"no account named {name!r}")
            row = conn.execute(
                "INSERT INTO accounts (name, user_id, no_overdraft, created_at) VALUES (?, ?, 1, ?) RETURNING id",
                (name, user, self._now_ms()),
            ).fetchone()
        cache[name] = row[0]
        self.__dict__.setdefault("_names", {})[row[0]] = name
        return row[0]

    def _account_name(self, conn: sqlite3.Connection, account: int) -> str:
        names = self.__dict__.setdefault("_names", {})
        if account not in names:
            name = conn.execute("SELECT name FROM accounts WHERE id = ?", (account,)).fetchone()[0]
            names[account] = name
            self.__dict__.setdefault("_ids", {})[name] = account
        return names[account]

    def _move(self, conn: sqlite3.Connection, moves: tuple[Move, ...], new_id: str | None = None) -> int:
        """Apply running-total deltas to 1..3 accounts in one UPDATE; with `new_id`, only if no transfer
        has that id yet. Returns how many accounts moved (0: `new_id` exists)."""
        moves = _merged(moves)
        params: list[int | str] = [value for move in moves for value in move]
        if new_id is None:
            sql = _MOVE_SQL[len(moves)]
        else:
            sql, params = _MOVE_NEW_SQL[len(moves)], [*params, new_id]
        try:
            return conn.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            if "REAL" in str(exc):
                raise BalanceOverflow("an account total would pass 2**63-1 nRLC; nothing written") from None
            if "no_overdraft" in str(exc):
                raise InsufficientFunds("the user's balance would go below zero; nothing written") from None
            raise

    @staticmethod
    def _append(conn: sqlite3.Connection, legs: tuple[tuple[object, ...], ...]) -> int:
        """Append the legs of one transfer (consecutive rows); returns the seq of leg 0."""
        cursor = conn.execute(_APPEND_SQL[len(legs)], [value for leg in legs for value in leg])
        last = cursor.lastrowid
        if last is None:  # sqlite3 sets it after every INSERT; None would mean nothing was appended
            raise LedgerError("appending a transfer's legs returned no row id")
        return last - len(legs) + 1

    def account(self, name: str) -> Account | None:
        """The running totals of account `name` (None if it does not exist yet)."""
        rows = self._read(
            "SELECT name, user_id, debits_pending, debits_posted, credits_pending, "
            "credits_posted FROM accounts WHERE name = ?",
            (name,),
        )
        return Account(*rows[0]) if rows else None

    def accounts(self) -> list[Account]:
        """Every account, operators first, then users by id."""
        rows = self._read(
            "SELECT name, user_id, debits_pending, debits_posted, credits_pending, "
            "credits_posted FROM accounts ORDER BY user_id IS NOT NULL, user_id, id"
        )
        return [Account(*row) for row in rows]

    def balance(self, user: int) -> Balance:
        """The user's posted, pending and available balance in nRLC (zeros for an unknown user)."""
        account = self.account(user_account(check_user(user)))
        return account.balance if account else Balance(0, 0, 0)

    # ----- transfers ------------------------------------------------------------------------
    def get_transfer(self, transfer_id: str) -> Transfer | None:
        """The transfer with this id, or None."""
        with self._guard:
            return self._get(self._conn, check_id(transfer_id))

    def _get(self, conn: sqlite3.Connection, transfer_id: str) -> Transfer | None:
        rows = conn.execute(_TRANSFER_SQL + " WHERE t.id = ? ORDER BY t.leg", (transfer_id,)).fetchall()
        return _from_legs(rows)

    def _replay(self, conn: sqlite3.Connection, wanted: Transfer) -> Transfer | None:
        """The stored transfer if `wanted.id` exists with the same fields; TransferConflict if not."""
        existing = self._get(conn, wanted.id)
        if existing is None:
            return None
        if not existing.same_fields(wanted):
            raise TransferConflict(
                f"transfer id {wanted.id!r} already used by a {existing.kind} of "
                f"{existing.amount} nRLC {existing.debit} -> {existing.credit}; choose a new id"
            )
        return existing

    def record_event(self, kind: str, natural_id: str, payload: object = None) -> bool:
        """Record external event (kind, natural_id) once; False if it was seen before (a credit hangs on it).

        Joins the caller's `transaction()` if one is open, so it commits together with what follows.
        """
        check_id(kind, "kind")
        check_id(natural_id, "natural_id")
        text = json.dumps(payload, sort_keys=True, default=str)
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO events (kind, natural_id, payload, created_at) VALUES (?, ?, ?, ?)",
                (kind, natural_id, text, self._now_ms()),
            )
            return cursor.rowcount == 1

    def seen_event(self, kind: str, natural_id: str) -> bool:
        """True if the event was recorded."""
        return bool(self._read("SELECT 1 FROM events WHERE kind = ? AND natural_id = ?", (kind, natural_id)))

    def _posted(self, wanted: Transfer, user: int, event: tuple[str, str] | None) -> Transfer | None:
        """Write a single-leg posted transfer from an operator account to `user`."""
        return self._write(self._post_credit, wanted, user, event)

    def _post_credit(
        self, conn: sqlite3.Connection, wanted: Transfer, user: int, event: tuple[str, str] | None
    ) -> Transfer | None:
        existing = self._replay(conn, wanted)
        if existing is not None:
            return existing
        if event is not None and not self.record_event(event[0], event[1], {"transfer": wanted.id}):
            return None
        debit = self._account_id(conn, wanted.debit)
        credit = self._account_id(conn, wanted.credit, user)
        now = self._now_ms()
        self._move(conn, ((debit, 0, wanted.amount, 0, 0), (credit, 0, 0, 0, wanted.amount)))
        seq = self._append(
            conn,
            (
                (
                    wanted.id,
                    0,
                    wanted.kind,
                    "posted",
                    debit,
                    credit,
                    wanted.amount,
                    None,
                    wanted.job,
                    wanted.memo,
                    now,
                    None,
                    None,
                ),
            ),
        )
        return replace(wanted, created_at=now, seq=seq)

    def grant(
        self, id: str, user: int, amount: int, memo: str = "", *, event: tuple[str, str] | None = None
    ) -> Transfer | None:
        """Credit `user` with `amount` nRLC from operator:grants (posted at once).

        With `event=(kind, natural_id)` the event is recorded in the same transaction and the grant is
        skipped (returns None) if that event was seen before under another transfer id.
        Raises InvalidAmount, InvalidArgument, TransferConflict, BalanceOverflow.
        """
        wanted = Transfer(
            check_id(id),
            "grant",
            GRANTS,
            user_account(check_user(user)),
            check_amount(amount),
            memo=check_text(memo, "memo"),
        )
        return self._posted(wanted, user, event)

    def deposit(self, id: str, user: int, amount: int, tx_hash: str, memo: str = "") -> Transfer | None:
        """Credit `user` from operator:deposits for on-chain deposit `tx_hash` (recorded once).

        Returns None when that tx hash was already credited under another transfer id.
        """
        wanted = Transfer(
            check_id(id),
            "deposit",
            DEPOSITS,
            user_account(check_user(user)),
            check_amount(amount),
            job=check_id(tx_hash, "tx_hash"),
            memo=check_text(memo, "memo"),
        )
        return self._posted(wanted, user, ("deposit", tx_hash))

    def refund_expense(self, id: str, user: int, amount: int, job: str, memo: str = "") -> Transfer:
        """Credit `user` from operator:refund_expense: the operator refunds a task that was paid on
        chain but failed in the app. Raises like grant()."""
        wanted = Transfer(
            check_id(id),
            "refund_expense",
            REFUND_EXPENSE,
            user_account(check_user(user)),
            check_amount(amount),
            job=check_text(job, "job"),
            memo=check_text(memo, "memo"),
        )
        result = self._posted(wanted, user, None)
        assert result is not None
        return result

    def reserve(self, id: str, user: int, amount: int, job: str) -> Transfer:
        """Reserve `amount` nRLC of `user` towards operator:iexec_spend (a pending transfer).

        `job` is any reference string. Raises InsufficientFunds when amount > available,
        InvalidAmount, InvalidArgument, TransferConflict.
        """
        check_id(id)
        check_user(user)
        check_amount(amount)
        check_text(job, "job")
        return self._write(self._reserve_in, id, user, amount, job)

    def _reserve(self, conn: sqlite3.Connection, wanted: Transfer, user: int) -> Transfer:
        return self._reserve_in(conn, wanted.id, user, wanted.amount, wanted.job)

    def _reserve_in(self, conn: sqlite3.Connection, id: str, user: int, amount: int, job: str) -> Transfer:
        """Move the totals (only for a new id; the CHECKs refuse an overdraft), then append the row."""
        name = user_account(user)
        debit = self._account_id(conn, name, user)
        credit = self._account_id(conn, IEXEC_SPEND)
        try:
            moved = self._move(conn, ((debit, amount, 0, 0, 0), (credit, 0, 0, amount, 0)), id)
        except (InsufficientFunds, BalanceOverflow):
            available = conn.execute(
                "SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE id = ?", (debit,)
            ).fetchone()[0]
            if amount > available:
                raise InsufficientFunds(
                    f"user {user} has {format_rlc(available)} available, {format_rlc(amount)} needed"
                ) from None
            raise
        if not moved:  # the id is taken: the same reservation again, or a conflict
            existing = self._replay(conn, Transfer(id, "reserve", name, IEXEC_SPEND, amount, job=job))
            if existing is None:
                raise LedgerError(f"account {name} vanished while reserving {id!r}")
            return existing
        now = self._now_ms()
        seq = self._append(
            conn, ((id, 0, "reserve", "pending", debit, credit, amount, None, job, "", now, None, None),)
        )
        return Transfer(id, "reserve", name, IEXEC_SPEND, amount, 0, None, job, "", now, seq)

    def _reservation(self, conn: sqlite3.Connection, pending_id: str) -> Transfer:
        reservation = self._get(conn, pending_id)
        if reservation is None or reservation.kind != "reserve":
            raise UnknownTransfer(f"no reservation with id {pending_id!r}")
        return reservation

    def _check_open(self, conn: sqlite3.Connection, pending_id: str) -> None:
        row = conn.execute("SELECT id, kind FROM transfers WHERE pending_id = ? AND leg = 0", (pending_id,)).fetchone()
        if row is not None:
            done = "posted" if row[1] == "post" else "voided"
            raise AlreadyResolved(f"reservation {pending_id!r} was already {done} by transfer {row[0]!r}")

    def _open(
        self, conn: sqlite3.Connection, id: str, pending_id: str, wanted: Callable[[Transfer], Transfer]
    ) -> _Open | Transfer:
        """Open reservation `pending_id` when `id` is new; otherwise the stored transfer `id` if it is
        `wanted(reservation)` again, or the error that fits (UnknownTransfer, TransferConflict,
        AlreadyResolved, in that order)."""
        row = conn.execute(_OPEN_SQL, (id, pending_id)).fetchone()
        if row is not None:
            seq, kind, amount, debit, credit, job, memo, created_at, resolved_by, id_taken = row
            if kind == "reserve" and resolved_by is None and not id_taken:
                names = self._account_name(conn, debit), self._account_name(conn, credit)
                reservation = Transfer(pending_id, kind, *names, amount, 0, None, job, memo, created_at, seq)
                return _Open(reservation, debit, credit)
        res = self._reservation(conn, pending_id)
        existing = self._replay(conn, wanted(res))
        if existing is not None:
            return existing
        self._check_open(conn, pending_id)
        raise LedgerError(f"reservation {pending_id!r} changed while resolving it")

    def post(self, id: str, pending_id: str, amount: int | None = None, *, fee: int = 0, memo: str = "") -> Transfer:
        """Post reservation `pending_id`: `amount` to operator:iexec_spend and `fee` to operator:fees,
        both legs in one transaction; the rest of the reservation returns to the user.

        `amount=None` posts the whole reservation minus `fee`. Raises UnknownTransfer,
        AlreadyResolved, ExceedsReservation (amount + fee > reserved), InvalidAmount, TransferConflict.
        """
        check_id(id)
        check_id(pending_id, "pending_id")
        if amount is not None:
            check_amount(amount)
        check_fee(fee)
        check_text(memo, "memo")
        return self._write(self._post, id, pending_id, amount, fee, memo)

    def _post(
        self, conn: sqlite3.Connection, id: str, pending_id: str, amount: int | None, fee: int, memo: str
    ) -> Transfer:
        def wanted(res: Transfer) -> Transfer:
            to_post = res.amount - fee if amount is None else amount
            return Transfer(id, "post", res.debit, res.credit, to_post, fee, pending_id, res.job, memo)

        found = self._open(conn, id, pending_id, wanted)
        if isinstance(found, Transfer):
            return found
        res, debit, credit = found
        reserved, job = res.amount, res.job
        to_post = reserved - fee if amount is None else amount
        if to_post <= 0 or to_post + fee > reserved:
            raise ExceedsReservation(
                f"cannot post {format_rlc(max(to_post, 0))} + fee {format_rlc(fee)} from reservation "
                f"{pending_id!r} of {format_rlc(reserved)}"
            )
        now = self._now_ms()
        main = (id, 0, "post", "posted", debit, credit, to_post, pending_id, job, memo, now, reserved, res.seq)
        if fee:  # the fee leg is the very next row (the audit finds it at seq + 1)
            fees = self._account_id(conn, FEES)
            self._move(
                conn,
                ((debit, -reserved, to_post + fee, 0, 0), (credit, 0, 0, -reserved, to_post), (fees, 0, 0, 0, fee)),
            )
            seq = self._append(
                conn, (main, (id, 1, "post", "posted", debit, fees, fee, pending_id, job, memo, now, None, None))
            )
        else:
            self._move(conn, ((debit, -reserved, to_post, 0, 0), (credit, 0, 0, -reserved, to_post)))
            seq = self._append(conn, (main,))
        return replace(wanted(res), created_at=now, seq=seq)

    def void(self, id: str, pending_id: str, memo: str = "") -> Transfer:
        """Void reservation `pending_id`: the whole reserved amount returns to the user.

        Raises UnknownTransfer, AlreadyResolved, TransferConflict, InvalidArgument.
        """
        check_id(id)
        check_id(pending_id, "pending_id")
        check_text(memo, "memo")
        return self._write(self._void, id, pending_id, memo)

    def _void(self, conn: sqlite3.Connection, id: str, pending_id: str, memo: str) -> Transfer:
        def wanted(res: Transfer) -> Transfer:
            return Transfer(id, "void", res.debit, res.credit, res.amount, 0, pending_id, res.job, memo)

        found = self._open(conn, id, pending_id, wanted)
        if isinstance(found, Transfer):
            return found
        res, debit, credit = found
        reserved = res.amount
        now = self._now_ms()
        self._move(conn, ((debit, -reserved, 0, 0, 0), (credit, 0, 0, -reserved, 0)))
        seq = self._append(
            conn, ((id, 0, "void", "void", debit, credit, reserved, pending_id, res.job, memo, now, reserved, res.seq),)
        )
        return replace(wanted(res), created_at=now, seq=seq)

    def reservation_state(self, pending_id: str) -> str | None:
        """'open', 'posted' or 'voided' for a reservation id; None if there is no such reservation."""
        with self.snapshot() as conn:
            res = self._get(conn, check_id(pending_id, "pending_id"))
            if res is None or res.kind != "reserve":
                return None
            row = conn.execute("SELECT kind FROM transfers WHERE pending_id = ? AND leg = 0", (pending_id,)).fetchone()
        return "open" if row is None else ("posted" if row[0] == "post" else "voided")

    def history(self, user: int | None = None, limit: int = 50, before_seq: int | None = None) -> list[Transfer]:
        """Transfers touching `user` (all if None), newest first; fee legs folded into their post."""
        where: list[str] = []
        params: list[int | str] = []
        if user is not None:
            # Both sides through transfers_pair: only operator accounts ever credit a user.
            where.append(
                "(t.debit_account = a.id OR (t.credit_account = a.id AND t.debit_account IN "
                "(SELECT id FROM accounts WHERE user_id IS NULL)))"
            )
        if before_seq is not None:
            where.append("t.seq < ?")
            params.append(before_seq)
        join = ""
        if user is not None:
            join = " JOIN accounts a ON a.name = ?"
            params.insert(0, user_account(check_user(user)))
        sql = (
            _TRANSFER_SQL
            + join
            + " WHERE t.leg = 0"
            + "".join(f" AND {w}" for w in where)
            + " ORDER BY t.seq DESC LIMIT ?"
        )
        with self.snapshot() as conn:
            mains = conn.execute(sql, (*params, limit)).fetchall()
            return [
                _main_from_legs(conn.execute(_TRANSFER_SQL + " WHERE t.id = ? ORDER BY t.leg", (row[1],)).fetchall())
                for row in mains
            ]
