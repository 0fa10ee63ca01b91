"""The audit of the books: every invariant checked with aggregate SQL over one snapshot.

Per account: the four running totals equal the sums of the transfers touching it (open reservations
for pending, posted legs for posted); user accounts never below zero. Per reservation: resolved at
most once, by a transfer on the same accounts, posting no more than was reserved (fee leg included), a
void returning exactly what was reserved. Deposits: each credited deposit has its transfer from
operator:deposits with the same amount and user, and each watcher deposit transfer has its row.
Global: sum of debits == sum of credits, posted and pending.

How it stays fast over millions of transfers (schema v2): each resolution's leg 0 carries the reserved
amount and the reservation's row (`reserved`, `reserve_seq`), and the audit checks both against that row
with one rowid lookup per resolution; a post's fee leg is the next row. With those checked, an
account's open reservations are its reservations minus the `reserved` of its resolutions, so one ordered
pass over the `transfers_pair` index gives all four totals of every account, with no join and no sort.

This module only reads; it must never repair anything (a person decides what a breach means).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from ledger.db import introspect
from ledger.errors import AuditError

# One ordered pass over transfers_pair (debit, credit, phase, amount, reserved), no sort: sums per account
# pair and phase, then per account (both sides); every account compared, and sums for no known account kept.
_TOTALS_SQL = """
WITH
pair AS MATERIALIZED (
    SELECT debit_account AS d, credit_account AS c,
           CASE phase WHEN 'posted' THEN SUM(amount) ELSE 0 END AS posted,
           CASE phase WHEN 'pending' THEN SUM(amount) ELSE 0 END - COALESCE(SUM(reserved), 0) AS pending
    FROM transfers INDEXED BY transfers_pair GROUP BY debit_account, credit_account, phase),
sides AS (
    SELECT d AS acct, pending AS dpend, posted AS dpost, 0 AS cpend, 0 AS cpost FROM pair
    UNION ALL
    SELECT c, 0, 0, pending, posted FROM pair),
sums AS MATERIALIZED (
    SELECT acct, SUM(dpend) AS dpend, SUM(dpost) AS dpost, SUM(cpend) AS cpend, SUM(cpost) AS cpost
    FROM sides GROUP BY acct)
SELECT a.name, a.debits_pending, COALESCE(s.dpend, 0), a.debits_posted, COALESCE(s.dpost, 0),
       a.credits_pending, COALESCE(s.cpend, 0), a.credits_posted, COALESCE(s.cpost, 0)
FROM accounts a LEFT JOIN sums s ON s.acct = a.id
WHERE a.debits_pending IS NOT COALESCE(s.dpend, 0) OR a.debits_posted IS NOT COALESCE(s.dpost, 0)
   OR a.credits_pending IS NOT COALESCE(s.cpend, 0) OR a.credits_posted IS NOT COALESCE(s.cpost, 0)
UNION ALL
SELECT '#' || s.acct || ' (no such account)', 0, s.dpend, 0, s.dpost, 0, s.cpend, 0, s.cpost
FROM sums s WHERE s.acct NOT IN (SELECT id FROM accounts)
LIMIT 5
"""

_OVERDRAWN_SQL = """
SELECT name, credits_posted - debits_posted - debits_pending FROM accounts
WHERE no_overdraft = 1 AND debits_posted + debits_pending > credits_posted LIMIT 5
"""

# Every row naming a reservation row (`reserve_seq`: a post's or void's leg 0) against that row, with the
# post's fee leg, which is the next row (a void has none: one after it is left over and counted below).
# Rowid lookups only. First counted (with the fee legs found), and
# listed only when something is wrong.
_RESOLUTION_FROM = """
FROM transfers r NOT INDEXED
LEFT JOIN transfers res ON res.seq = r.reserve_seq
LEFT JOIN transfers fee ON fee.seq = (CASE r.kind WHEN 'post' THEN r.seq + 1 END) AND fee.leg = 1 AND fee.id = r.id
WHERE r.reserve_seq IS NOT NULL
"""
_RESOLUTION_BAD = """
    res.seq IS NULL OR r.leg <> 0 OR r.kind NOT IN ('post', 'void') OR r.pending_id IS NOT res.id
    OR res.leg <> 0 OR res.kind IS NOT 'reserve' OR r.reserved IS NOT res.amount
    OR r.debit_account <> res.debit_account OR r.credit_account <> res.credit_account
    OR (r.kind = 'void' AND r.amount <> res.amount)
    OR (r.kind = 'post' AND r.amount + COALESCE(fee.amount, 0) > res.amount)
    OR (fee.seq IS NOT NULL AND (fee.kind IS NOT 'post' OR fee.pending_id IS NOT r.pending_id
                                 OR fee.debit_account <> r.debit_account))
"""
_RESOLUTIONS_COUNT_SQL = (
    f"SELECT COUNT(fee.seq), COALESCE(SUM(CASE WHEN {_RESOLUTION_BAD} THEN 1 ELSE 0 END), 0) {_RESOLUTION_FROM}"
)
_RESOLUTIONS_LIST_SQL = f"""
SELECT r.id, r.kind, COALESCE(r.pending_id, '-'), res.kind, res.amount, r.reserved,
       r.amount + COALESCE(fee.amount, 0) {_RESOLUTION_FROM} AND ({_RESOLUTION_BAD}) LIMIT 5
"""

# The rows the check above does not reach: every fee leg (counted: each must be one found above), a
# resolution naming no reservation row, half of the pair (reserved, reserve_seq).
_LEGS_FROM = """
FROM transfers NOT INDEXED
WHERE leg <> 0 OR (pending_id IS NOT NULL AND reserve_seq IS NULL) OR (reserved IS NULL) <> (reserve_seq IS NULL)
"""
_LEGS_BAD = "leg <> 1 OR reserve_seq IS NOT NULL OR reserved IS NOT NULL"
_LEGS_COUNT_SQL = (
    f"SELECT COALESCE(SUM(leg = 1), 0), COALESCE(SUM(CASE WHEN {_LEGS_BAD} THEN 1 ELSE 0 END), 0) {_LEGS_FROM}"
)
_LEGS_LIST_SQL = f"SELECT id, leg, kind, COALESCE(pending_id, '-') {_LEGS_FROM} AND ({_LEGS_BAD}) LIMIT 5"

# Each reservation resolved at most once: duplicates sit side by side in the resolution index.
_DOUBLE_SQL = """
SELECT pending_id, COUNT(*) FROM transfers INDEXED BY transfers_resolution
WHERE pending_id IS NOT NULL AND leg = 0
GROUP BY pending_id HAVING COUNT(*) > 1 LIMIT 5
"""

# Deposits (schema v5): each credited deposit row against its transfer (one lookup by id), and every
# watcher-made deposit transfer (id `deposit:<tx>:<log index>`, found through transfers_pair by its debit
# account) against its row. Together: operator:deposits paid out exactly the credited deposits.
_DEPOSIT_ROWS_SQL = """
SELECT d.tx_hash || ':' || d.log_index, d.amount, t.amount FROM deposits d
LEFT JOIN transfers t ON t.id = d.transfer_id AND t.leg = 0
LEFT JOIN accounts u ON u.id = t.credit_account
LEFT JOIN accounts o ON o.id = t.debit_account
WHERE d.status = 'credited' AND (t.seq IS NULL OR t.kind <> 'deposit' OR t.phase <> 'posted'
    OR t.amount <> d.amount OR u.user_id IS NOT d.user_id OR o.name <> 'operator:deposits')
LIMIT 5
"""
_DEPOSIT_TRANSFERS_SQL = """
SELECT t.id, t.amount FROM transfers t INDEXED BY transfers_pair
WHERE t.debit_account = (SELECT id FROM accounts WHERE name = 'operator:deposits') AND t.id LIKE 'deposit:%'
  AND NOT EXISTS (SELECT 1 FROM deposits d WHERE d.transfer_id = t.id AND d.status = 'credited')
LIMIT 5
"""

_GLOBAL_SQL = """
SELECT COALESCE(SUM(debits_posted), 0), COALESCE(SUM(credits_posted), 0),
       COALESCE(SUM(debits_pending), 0), COALESCE(SUM(credits_pending), 0) FROM accounts
"""

# Read settings for the audit's scans, restored afterwards (the connection is the ledger's own).
_READ_PRAGMAS = {"mmap_size": 1 << 30, "cache_size": -65536, "temp_store": 2}


@contextmanager
def _read_settings(conn: sqlite3.Connection) -> Iterator[None]:
    before = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in _READ_PRAGMAS}
    try:
        for name, value in _READ_PRAGMAS.items():
            conn.execute(f"PRAGMA {name} = {int(value)}")
        yield
    finally:
        for name, value in before.items():
            conn.execute(f"PRAGMA {name} = {int(value)}")


def _problems(conn: sqlite3.Connection) -> tuple[list[str], tuple[int, int, int, int]]:
    problems: list[str] = []
    for row in conn.execute(_TOTALS_SQL):
        problems.append(
            f"account {row[0]}: totals (dpend {row[1]}, dpost {row[3]}, cpend {row[5]}, "
            f"cpost {row[7]}) differ from its transfers ({row[2]}, {row[4]}, {row[6]}, {row[8]})"
        )
    for name, available in conn.execute(_OVERDRAWN_SQL):
        problems.append(f"account {name} is overdrawn: available {available} nRLC")
    fees_found, bad = conn.execute(_RESOLUTIONS_COUNT_SQL).fetchone()
    if bad:
        for tid, kind, pending_id, res_kind, res_amount, reserved, used in conn.execute(_RESOLUTIONS_LIST_SQL):
            problems.append(
                f"transfer {tid!r} ({kind}) does not fit reservation {pending_id!r} "
                f"({res_kind or 'missing'}, {res_amount} nRLC; recorded {reserved}, used {used})"
            )
    fee_legs, bad = conn.execute(_LEGS_COUNT_SQL).fetchone()
    if bad:
        for tid, leg, kind, pending_id in conn.execute(_LEGS_LIST_SQL):
            problems.append(f"transfer {tid!r} (leg {leg}, {kind}) does not fit reservation {pending_id!r}")
    if fee_legs != fees_found:
        problems.append(f"{fee_legs - fees_found} fee legs do not follow the leg 0 of their post")
    for pending_id, count in conn.execute(_DOUBLE_SQL):
        problems.append(f"reservation {pending_id!r} resolved {count} times")
    problems.extend(_deposit_problems(conn))
    totals = conn.execute(_GLOBAL_SQL).fetchone()
    return problems, tuple(totals)


def _deposit_problems(conn: sqlite3.Connection) -> list[str]:
    """Credited deposits without their transfer, and deposit transfers without their row (schema v5)."""
    if "deposits" not in introspect(conn).table_names():
        return []
    problems = [
        f"deposit {natural} of {amount} nRLC is credited but its transfer is missing or differs (found {found})"
        for natural, amount, found in conn.execute(_DEPOSIT_ROWS_SQL)
    ]
    problems += [
        f"transfer {tid!r} credits {amount} nRLC from operator:deposits without a credited deposit row"
        for tid, amount in conn.execute(_DEPOSIT_TRANSFERS_SQL)
    ]
    return problems


def audit_books(conn: sqlite3.Connection) -> dict[str, int]:
    """Check every invariant on `conn` (inside one read snapshot); return a few totals.

    Raises AuditError naming the broken invariant and up to five offending rows.
    """
    try:
        with _read_settings(conn):
            problems, (dpost, cpost, dpend, cpend) = _problems(conn)
    except sqlite3.OperationalError as exc:
        raise AuditError(f"audit could not sum the books: {exc}") from None
    if dpost != cpost:
        problems.append(f"posted debits {dpost} != posted credits {cpost}")
    if dpend != cpend:
        problems.append(f"pending debits {dpend} != pending credits {cpend}")
    if problems:
        raise AuditError("the books do not balance: " + "; ".join(problems))
    return {"debits_posted": dpost, "debits_pending": dpend}


def audit_path(path: str) -> dict[str, int]:
    """`audit_books` on a read-only connection of its own to the file at `path`, in one read transaction:
    the caller's connection (and its lock) stay free, and in WAL mode writers go on meanwhile."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
    except sqlite3.Error as exc:
        raise AuditError(f"audit could not open the books: {exc}") from None
    try:
        conn.execute("BEGIN")
        try:
            return audit_books(conn)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
