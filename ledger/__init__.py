"""The bot's books: SQLite ledger of nRLC credit, jobs, chain transactions, events; the hot wallet.

    from ledger import Ledger
    book = Ledger("data/books.db")                 # creates or migrates the file
    book.grant("g-1", user=42, amount=5 * 10**9)    # 5 RLC from operator:grants
    book.reserve("r-1", 42, 10**9, job="job-1")     # pending: user:42 -> operator:iexec_spend
    book.post("p-1", "r-1", 6 * 10**8, fee=10**8)  # price to iExec spend, fee to operator:fees
    book.balance(42)                               # Balance(posted=..., pending=..., available=...)
    book.audit()                                   # raises AuditError on any broken invariant
    book.links.link(42, "0xab..", nonce, "eip712")  # an address proven to be user 42's (ledger.deposits)
    book.deposits.record(tx, 0, block, bhash, "0xab..", 2 * 10**9)  # a final RLC transfer: credited once

Every write is one `BEGIN IMMEDIATE` transaction on a WAL file with synchronous=FULL; several processes
may share the file. Transfer ids are chosen by the caller: a retry with the same id and fields returns the
stored transfer; the same id with other fields raises TransferConflict. This package imports nothing of
the bot and must never log a secret or hold a private key outside `ledger.wallet`.
"""

from __future__ import annotations

from functools import cached_property

from ledger.amounts import MAX_AMOUNT, NRLC_PER_RLC, format_rlc, parse_rlc
from ledger.audit import audit_books, audit_path
from ledger.books import DEPOSITS, FEES, GRANTS, IEXEC_SPEND, REFUND_EXPENSE, Account, Balance, Transfer
from ledger.chain import ChainRecords, ChainTx
from ledger.deposits import Challenge, Deposit, DepositBook, DepositTotals, Links, WalletLink, deposit_transfer_id
from ledger.errors import (
    AddressTaken,
    AlreadyResolved,
    AuditError,
    BalanceOverflow,
    ChallengeRefused,
    DepositConflict,
    DepositError,
    ExceedsReservation,
    IllegalTransition,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    JobConflict,
    JobError,
    LedgerBusy,
    LedgerError,
    LinkError,
    SchemaError,
    TransferConflict,
    UnknownDeposit,
    UnknownJob,
    UnknownTransfer,
    WalletError,
)
from ledger.inbox import Inbox, InboxEntry
from ledger.jobs import ALLOWED, Job, Jobs, JobState, RefundReason


class Ledger(Jobs, ChainRecords):
    """The books on one SQLite file: transfers, balances, jobs, chain txs, events, audit."""

    @cached_property
    def inbox(self) -> Inbox:
        """Telegram updates kept until handled (see `ledger.inbox`)."""
        return Inbox(self)

    @cached_property
    def links(self) -> Links:
        """Wallet addresses proven to be users' and the challenges they signed (see `ledger.deposits`)."""
        return Links(self)

    @cached_property
    def deposits(self) -> DepositBook:
        """Final RLC transfers to the hot wallet, credited or held for an admin (see `ledger.deposits`)."""
        return DepositBook(self)

    def audit(self) -> dict[str, int]:
        """Check every invariant over one snapshot; raise AuditError on any breach.

        Returns the global totals {"debits_posted", "debits_pending"} when the books balance.
        """
        with self.snapshot() as conn:
            return audit_books(conn)

    def audit_apart(self) -> dict[str, int]:
        """`audit()` on a connection of its own (this object's lock stays free): for a thread, so that an
        audit of millions of transfers (~1 s each million) doesn't hold up the bot's other ledger calls."""
        if str(self.path) == ":memory:":
            return self.audit()
        return audit_path(str(self.path))


__all__ = [
    "AddressTaken",
    "Challenge",
    "ChallengeRefused",
    "Deposit",
    "DepositBook",
    "DepositConflict",
    "DepositError",
    "DepositTotals",
    "Links",
    "LinkError",
    "UnknownDeposit",
    "WalletLink",
    "deposit_transfer_id",
    "ALLOWED",
    "DEPOSITS",
    "FEES",
    "GRANTS",
    "IEXEC_SPEND",
    "MAX_AMOUNT",
    "NRLC_PER_RLC",
    "REFUND_EXPENSE",
    "Account",
    "AlreadyResolved",
    "AuditError",
    "Balance",
    "BalanceOverflow",
    "ChainTx",
    "ExceedsReservation",
    "IllegalTransition",
    "Inbox",
    "InboxEntry",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidArgument",
    "Job",
    "JobConflict",
    "JobError",
    "JobState",
    "Ledger",
    "LedgerBusy",
    "RefundReason",
    "LedgerError",
    "SchemaError",
    "Transfer",
    "TransferConflict",
    "UnknownJob",
    "UnknownTransfer",
    "WalletError",
    "format_rlc",
    "parse_rlc",
]
