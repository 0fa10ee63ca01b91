"""The ledger's one exception tree: every error the books raise, declared together.

LedgerError
 +-- InvalidArgument          a bad id, user id, state name or field
 |    +-- InvalidAmount       zero, negative, non-int, bool or over 2**63-1 amount; bad RLC text
 +-- InsufficientFunds        a reserve above the user's available balance
 +-- TransferConflict         a transfer id reused with other fields
 +-- UnknownTransfer          post/void of a pending id that does not exist (or is not a reservation)
 +-- AlreadyResolved          post/void of a reservation already posted or voided by another transfer
 +-- ExceedsReservation       a post (amount + fee) above the reserved amount
 +-- BalanceOverflow          a running total would pass 2**63-1
 +-- AuditError               a broken invariant found by Ledger.audit()
 +-- SchemaError              a file that is not SQLite, or of a newer schema version
 +-- LedgerBusy               the database stayed locked by other writers past the retry bound
 +-- JobError
 |    +-- UnknownJob          no job with that id
 |    +-- JobConflict         create_job retried with other fields
 |    +-- IllegalTransition   a state change the job graph does not allow
 +-- WalletError              keystore missing/unreadable, wrong password, bad key, file exists
 +-- LinkError
 |    +-- ChallengeRefused    a link nonce that is unknown, expired, used, or issued to another user
 |    +-- AddressTaken        the address is linked to another user already
 +-- DepositError
      +-- DepositConflict     a deposit's natural id seen again with another sender or amount, or
      |                       assigned to another user already
      +-- UnknownDeposit      no deposit with that (tx hash, log index)

This module must never import anything else of the ledger (everything imports it).
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by the ledger package."""


class InvalidArgument(LedgerError, ValueError):
    """An argument has the wrong type or value (id, user id, state, field name)."""


class InvalidAmount(InvalidArgument):
    """An amount is not a positive int below 2**63, or RLC text is not exact."""


class InsufficientFunds(LedgerError):
    """The user's available balance is below the amount to reserve."""


class TransferConflict(LedgerError):
    """The transfer id exists already with different fields."""


class UnknownTransfer(LedgerError):
    """The pending id names no reservation."""


class AlreadyResolved(LedgerError):
    """The reservation was already posted or voided by another transfer."""


class ExceedsReservation(LedgerError):
    """The amount to post (plus fee) is larger than the amount reserved."""


class BalanceOverflow(LedgerError):
    """An account's running total would exceed 2**63-1 nRLC."""


class AuditError(LedgerError):
    """The books break an invariant; the message lists what and where."""


class SchemaError(LedgerError):
    """The file is not a SQLite database or was written by a newer version."""


class LedgerBusy(LedgerError):
    """Other writers held the database lock for longer than the retry bound."""


class JobError(LedgerError):
    """Base of the job-table errors."""


class UnknownJob(JobError):
    """No job exists with that id."""


class JobConflict(JobError):
    """create_job was called again for an id with different fields."""


class IllegalTransition(JobError):
    """The job is not in an allowed source state, or the move is not in the graph."""


class WalletError(LedgerError):
    """The keystore cannot be created, read or decrypted."""


class LinkError(LedgerError):
    """Base of the wallet-link errors."""


class ChallengeRefused(LinkError):
    """The link nonce is unknown, expired, already used, or was issued to another user."""


class AddressTaken(LinkError):
    """The address is linked to another user already (one address, one user)."""


class DepositError(LedgerError):
    """Base of the on-chain deposit errors."""


class DepositConflict(DepositError):
    """The deposit's (tx hash, log index) is recorded with other fields, or credited to another user."""


class UnknownDeposit(DepositError):
    """No deposit is recorded with that (tx hash, log index)."""
