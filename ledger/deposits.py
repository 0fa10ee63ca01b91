"""Users fund themselves: wallet links (an address proven to be a user's) and on-chain RLC deposits.

    links = book.links
    links.issue(42, nonce, ttl_s=900)                     # a one-time challenge for user 42
    links.link(42, "0xab..", nonce, form="eip712")        # after the caller verified the signature
    book.deposits.record(tx, 3, block, block_hash, "0xab..", 2 * 10**9)  # a final Transfer to the hot wallet
    book.deposits.assign(tx, 3, user=42, admin=1)         # an unclaimed deposit given to a user

A deposit is recorded once, keyed by its natural id (tx hash, log index): recording it again with the same
sender and amount does nothing (a replayed range, a restarted watcher), with others raises DepositConflict.
In the same `BEGIN IMMEDIATE` transaction a deposit from a linked address credits that user from
`operator:deposits` (transfer id `deposit:<tx hash>:<log index>`); one from an unlinked address is kept
`unclaimed` until an admin assigns it. So `operator:deposits` has paid out exactly the credited deposits
(the audit checks each one against its transfer). Only final transfers may be recorded: this module trusts
its caller (iexec.deposits) on finality and never retracts a credit.

Signatures are checked by the caller (iexec.link): this module only keeps nonces once and links. It must
never store a signature's secret material (there is none) nor a private key.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from ledger.books import DEPOSITS, Books, Transfer, check_user, user_account
from ledger.errors import (
    AddressTaken,
    ChallengeRefused,
    DepositConflict,
    InvalidAmount,
    InvalidArgument,
    UnknownDeposit,
)

_ADDRESS_RE = re.compile(r"0x[0-9a-f]{40}")
_HASH_RE = re.compile(r"0x[0-9a-f]{64}")
LINK_FORMS = ("eip712", "personal_sign", "admin")
#: how long a link challenge stays usable unless the caller says otherwise
CHALLENGE_TTL_S = 15 * 60


def check_address(value: object, name: str = "address") -> str:
    """An Ethereum address as lowercase 0x-hex (any case accepted); InvalidArgument otherwise."""
    if not isinstance(value, str) or not _ADDRESS_RE.fullmatch(value.lower()):
        raise InvalidArgument(f"{name} must be a 0x-prefixed 20-byte hex address, got {value!r:.60}")
    return value.lower()


def check_hash(value: object, name: str) -> str:
    """A 32-byte hash as lowercase 0x-hex; InvalidArgument otherwise."""
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value.lower()):
        raise InvalidArgument(f"{name} must be 0x and 64 hex digits, got {value!r:.80}")
    return value.lower()


def _check_index(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative int, got {value!r:.40}")
    return value


def deposit_transfer_id(tx_hash: str, log_index: int) -> str:
    """The ledger transfer id that credits deposit (tx_hash, log_index)."""
    return f"deposit:{tx_hash.lower()}:{log_index}"


@dataclass(frozen=True)
class Challenge:
    """A one-time nonce issued to a user for a link proof (times in unix ms)."""

    nonce: str
    user_id: int
    issued_at: int
    expires_at: int
    used_at: int | None


@dataclass(frozen=True)
class WalletLink:
    """An address linked to a user: `form` says how it was proven (eip712, personal_sign, admin)."""

    address: str
    user_id: int
    form: str
    linked_at: int


@dataclass(frozen=True)
class Deposit:
    """A final RLC transfer to the hot wallet, as recorded. `status` is credited or unclaimed."""

    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    sender: str
    amount: int
    status: str
    user_id: int | None
    transfer_id: str | None
    assigned_by: int | None
    notified_at: int | None
    seen_at: int
    credited_at: int | None


@dataclass(frozen=True)
class DepositTotals:
    """Sums in nRLC: what was credited to users, what waits for an admin, and operator:deposits' net debit
    (equal to `credited` unless `Books.deposit`, the older tx-keyed credit, was used besides)."""

    credited: int
    credited_count: int
    unclaimed: int
    unclaimed_count: int
    account_net: int


_DEPOSIT_COLUMNS = (
    "tx_hash, log_index, block_number, block_hash, sender, amount, status, user_id, transfer_id, assigned_by, "
    "notified_at, seen_at, credited_at"
)


class Links:
    """Wallet links and their challenges on the books' connection (`Ledger.links`)."""

    def __init__(self, books: Books) -> None:
        self._books = books

    def issue(self, user: int, nonce: str, ttl_s: int = CHALLENGE_TTL_S) -> Challenge:
        """Store `nonce` (0x + 64 hex, chosen at random by the caller) as a challenge of `user`.

        Idempotent: the same nonce for the same user returns the stored challenge; for another user it
        raises ChallengeRefused. Raises InvalidArgument for a bad nonce, user or ttl.
        """
        check_user(user)
        nonce = check_hash(nonce, "nonce")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
            raise InvalidArgument(f"ttl_s must be a positive int, got {ttl_s!r}")
        now = self._books._now_ms()
        with self._books.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO link_challenges (nonce, user_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
                (nonce, user, now, now + ttl_s * 1000),
            )
            challenge = self._challenge(conn, nonce)
        if challenge is None or challenge.user_id != user:
            raise ChallengeRefused("that nonce belongs to another user; ask for a new one")
        return challenge

    @staticmethod
    def _challenge(conn: sqlite3.Connection, nonce: str) -> Challenge | None:
        row = conn.execute(
            "SELECT nonce, user_id, issued_at, expires_at, used_at FROM link_challenges WHERE nonce = ?", (nonce,)
        ).fetchone()
        return Challenge(*row) if row else None

    def open_challenge(self, user: int) -> Challenge | None:
        """The user's newest challenge that is neither used nor expired, or None."""
        rows = self._books._read(
            "SELECT nonce, user_id, issued_at, expires_at, used_at FROM link_challenges "
            "WHERE user_id = ? AND used_at IS NULL AND expires_at > ? ORDER BY issued_at DESC, rowid DESC LIMIT 1",
            (check_user(user), self._books._now_ms()),
        )
        return Challenge(*rows[0]) if rows else None

    def link(self, user: int, address: str, nonce: str, form: str) -> WalletLink:
        """Link `address` to `user`, using up challenge `nonce`, in one transaction.

        Call it only after the signature over that nonce was verified to come from `address`. Linking an
        address the user has linked already returns the stored link (and uses the nonce up). Raises
        ChallengeRefused (nonce unknown, expired, used, or another user's), AddressTaken (linked to another
        user: nothing changes), InvalidArgument.
        """
        check_user(user)
        address = check_address(address)
        nonce = check_hash(nonce, "nonce")
        if form not in LINK_FORMS[:2]:
            raise InvalidArgument(f"form must be one of {', '.join(LINK_FORMS[:2])}, got {form!r}")
        with self._books.transaction() as conn:
            now = self._books._now_ms()
            challenge = self._challenge(conn, nonce)
            if challenge is None or challenge.user_id != user:
                raise ChallengeRefused("this proof was not asked of you; send /link to get a new message to sign")
            if challenge.used_at is not None:
                raise ChallengeRefused("this message was used already; send /link to get a new one")
            if challenge.expires_at <= now:
                raise ChallengeRefused("this message has expired; send /link to get a new one")
            existing = self._link_of(conn, address)
            if existing is not None and existing.user_id != user:
                raise AddressTaken(f"{address} is linked to another user; it cannot be linked twice")
            conn.execute("UPDATE link_challenges SET used_at = ? WHERE nonce = ?", (now, nonce))
            if existing is not None:
                return existing
            conn.execute(
                "INSERT INTO wallet_links (address, user_id, form, nonce, linked_at) VALUES (?, ?, ?, ?, ?)",
                (address, user, form, nonce, now),
            )
            return WalletLink(address, user, form, now)

    @staticmethod
    def _link_of(conn: sqlite3.Connection, address: str) -> WalletLink | None:
        row = conn.execute(
            "SELECT address, user_id, form, linked_at FROM wallet_links WHERE address = ?", (address,)
        ).fetchone()
        return WalletLink(*row) if row else None

    def unlink(self, user: int, address: str) -> bool:
        """Remove the link of `address` to `user`; False if there was none (another user's link stays).

        Deposits credited before stay credited; later transfers from the address are held as unclaimed."""
        check_user(user)
        address = check_address(address)
        with self._books.transaction() as conn:
            cursor = conn.execute("DELETE FROM wallet_links WHERE address = ? AND user_id = ?", (address, user))
            return cursor.rowcount == 1

    def user_of(self, address: str) -> int | None:
        """The user `address` is linked to, or None."""
        rows = self._books._read("SELECT user_id FROM wallet_links WHERE address = ?", (check_address(address),))
        return int(rows[0][0]) if rows else None

    def addresses(self, user: int) -> list[WalletLink]:
        """The user's linked addresses, oldest first."""
        rows = self._books._read(
            "SELECT address, user_id, form, linked_at FROM wallet_links WHERE user_id = ? ORDER BY linked_at, address",
            (check_user(user),),
        )
        return [WalletLink(*row) for row in rows]

    def count(self) -> int:
        """How many addresses are linked."""
        return int(self._books._read("SELECT COUNT(*) FROM wallet_links")[0][0])


class DepositBook:
    """On-chain deposits to the hot wallet on the books' connection (`Ledger.deposits`)."""

    def __init__(self, books: Books) -> None:
        self._books = books

    def record(
        self,
        tx_hash: str,
        log_index: int,
        block_number: int,
        block_hash: str,
        sender: str,
        amount: int,
        *,
        min_credit: int = 1,
    ) -> tuple[Deposit, bool]:
        """Record a final transfer of `amount` nRLC from `sender`; credit the linked user in the same transaction.

        A transfer from an unlinked address, or below `min_credit` nRLC, is kept unclaimed for an admin.
        Returns (the stored deposit, True if this call recorded it). Idempotent on (tx_hash, log_index): a
        second call with the same sender and amount returns the stored row and False. Raises DepositConflict
        (same natural id, other sender or amount), InvalidAmount, InvalidArgument, BalanceOverflow.
        """
        tx_hash = check_hash(tx_hash, "tx_hash")
        _check_index(log_index, "log_index")
        _check_index(block_number, "block_number")
        block_hash = check_hash(block_hash, "block_hash")
        sender = check_address(sender, "sender")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidAmount(f"a deposit's amount must be a positive int of nRLC, got {amount!r:.40}")
        with self._books.transaction() as conn:
            stored = self._get(conn, tx_hash, log_index)
            if stored is not None:
                if (stored.sender, stored.amount) != (sender, amount):
                    raise DepositConflict(
                        f"deposit {tx_hash}:{log_index} is recorded as {stored.amount} nRLC from {stored.sender}, "
                        f"not {amount} from {sender}"
                    )
                return stored, False
            now = self._books._now_ms()
            conn.execute(
                f"INSERT INTO deposits ({_DEPOSIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'unclaimed', NULL, NULL, NULL, "
                "NULL, ?, NULL)",
                (tx_hash, log_index, block_number, block_hash, sender, amount, now),
            )
            row = conn.execute("SELECT user_id FROM wallet_links WHERE address = ?", (sender,)).fetchone()
            if row is not None and amount >= min_credit:
                self._credit(conn, tx_hash, log_index, int(row[0]), None)
            deposit = self._get(conn, tx_hash, log_index)
            assert deposit is not None
            return deposit, True

    def _credit(self, conn: sqlite3.Connection, tx_hash: str, log_index: int, user: int, admin: int | None) -> None:
        """Credit an unclaimed deposit row to `user` (inside the caller's transaction)."""
        stored = self._get(conn, tx_hash, log_index)
        assert stored is not None
        transfer_id = deposit_transfer_id(tx_hash, log_index)
        memo = f"{stored.amount} nRLC from {stored.sender}" + (f", assigned by admin {admin}" if admin else "")
        wanted = Transfer(transfer_id, "deposit", DEPOSITS, user_account(user), stored.amount, job=tx_hash, memo=memo)
        self._books._post_credit(conn, wanted, user, None)
        conn.execute(
            "UPDATE deposits SET status = 'credited', user_id = ?, transfer_id = ?, assigned_by = ?, credited_at = ? "
            "WHERE tx_hash = ? AND log_index = ? AND status = 'unclaimed'",
            (user, transfer_id, admin, self._books._now_ms(), tx_hash, log_index),
        )

    def assign(self, tx_hash: str, log_index: int, user: int, admin: int) -> Deposit:
        """Credit unclaimed deposit (tx_hash, log_index) to `user` on `admin`'s decision.

        Idempotent: assigning a deposit already credited to `user` returns it. Raises UnknownDeposit,
        DepositConflict (credited to another user), InvalidArgument.
        """
        tx_hash = check_hash(tx_hash, "tx_hash")
        _check_index(log_index, "log_index")
        check_user(user)
        check_user(admin)
        with self._books.transaction() as conn:
            stored = self._get(conn, tx_hash, log_index)
            if stored is None:
                raise UnknownDeposit(f"no deposit {tx_hash}:{log_index} is recorded")
            if stored.status == "credited":
                if stored.user_id != user:
                    raise DepositConflict(
                        f"deposit {tx_hash}:{log_index} was credited to user {stored.user_id} already"
                    )
                return stored
            self._credit(conn, tx_hash, log_index, user, admin)
            credited = self._get(conn, tx_hash, log_index)
            assert credited is not None
            return credited

    @staticmethod
    def _get(conn: sqlite3.Connection, tx_hash: str, log_index: int) -> Deposit | None:
        row = conn.execute(
            f"SELECT {_DEPOSIT_COLUMNS} FROM deposits WHERE tx_hash = ? AND log_index = ?", (tx_hash, log_index)
        ).fetchone()
        return Deposit(*row) if row else None

    def get(self, tx_hash: str, log_index: int) -> Deposit | None:
        """The recorded deposit, or None."""
        with self._books.snapshot() as conn:
            return self._get(conn, check_hash(tx_hash, "tx_hash"), _check_index(log_index, "log_index"))

    def _list(self, where: str, params: tuple[object, ...], limit: int) -> list[Deposit]:
        rows = self._books._read(
            f"SELECT {_DEPOSIT_COLUMNS} FROM deposits WHERE {where} ORDER BY block_number, log_index LIMIT ?",
            (*params, max(0, int(limit))),
        )
        return [Deposit(*row) for row in rows]

    def unclaimed(self, limit: int = 50) -> list[Deposit]:
        """Deposits from unlinked addresses waiting for an admin, oldest first."""
        return self._list("status = 'unclaimed'", (), limit)

    def of_user(self, user: int, limit: int = 20) -> list[Deposit]:
        """Deposits credited to `user`, oldest first."""
        return self._list("user_id = ?", (check_user(user),), limit)

    def unnotified(self, limit: int = 100) -> list[Deposit]:
        """Credited deposits whose user was not told yet (see `mark_notified`), oldest first."""
        return self._list("status = 'credited' AND notified_at IS NULL", (), limit)

    def mark_notified(self, tx_hash: str, log_index: int) -> None:
        """Remember that the user was told about this deposit (a crash before this tells them again)."""
        tx_hash = check_hash(tx_hash, "tx_hash")
        with self._books.transaction() as conn:
            conn.execute(
                "UPDATE deposits SET notified_at = ? WHERE tx_hash = ? AND log_index = ? AND notified_at IS NULL",
                (self._books._now_ms(), tx_hash, _check_index(log_index, "log_index")),
            )

    def totals(self) -> DepositTotals:
        """Credited and unclaimed sums, and operator:deposits' net debit, from one snapshot."""
        with self._books.snapshot() as conn:
            credited, n_credited, unclaimed, n_unclaimed = conn.execute(
                "SELECT COALESCE(SUM(CASE status WHEN 'credited' THEN amount END), 0), "
                "COALESCE(SUM(status = 'credited'), 0), "
                "COALESCE(SUM(CASE status WHEN 'unclaimed' THEN amount END), 0), "
                "COALESCE(SUM(status = 'unclaimed'), 0) FROM deposits"
            ).fetchone()
            net = conn.execute(
                "SELECT debits_posted - credits_posted FROM accounts WHERE name = ?", (DEPOSITS,)
            ).fetchone()
        account_net = int(net[0]) if net else 0
        return DepositTotals(int(credited), int(n_credited), int(unclaimed), int(n_unclaimed), account_net)
