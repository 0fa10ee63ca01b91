"""The audit of the books: every invariant checked with aggregate SQL over one snapshot.

Per account: the four running totals equal the sums of the transfers touching it (open reservations
for pending, posted legs for posted); user accounts never below zero. Per reservation: resolved at
most once, by a transfer on the same accounts, posting no more than was reserved, a void returning
exactly what was reserved. Global: sum of debits == sum of credits, posted and pending.

This module only reads; it must never repair anything (a person decides what a breach means).
"""
from __future__ import annotations

import sqlite3

from ledger.errors import AuditError

_TOTALS_SQL = """
WITH
open_res AS (
    SELECT t.debit_account, t.credit_account, t.amount FROM transfers t
    WHERE t.phase = 'pending'
      AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id AND r.leg = 0)),
dpost AS (SELECT debit_account AS acct, SUM(amount) AS s FROM transfers
          WHERE phase = 'posted' GROUP BY debit_account),
cpost AS (SELECT credit_account AS acct, SUM(amount) AS s FROM transfers
          WHERE phase = 'posted' GROUP BY credit_account),
dpend AS (SELECT debit_account AS acct, SUM(amount) AS s FROM open_res GROUP BY debit_account),
cpend AS (SELECT credit_account AS acct, SUM(amount) AS s FROM open_res GROUP BY credit_account)
SELECT a.name, a.debits_pending, COALESCE(dpend.s, 0), a.debits_posted, COALESCE(dpost.s, 0),
       a.credits_pending, COALESCE(cpend.s, 0), a.credits_posted, COALESCE(cpost.s, 0)
FROM accounts a
LEFT JOIN dpend ON dpend.acct = a.id LEFT JOIN dpost ON dpost.acct = a.id
LEFT JOIN cpend ON cpend.acct = a.id LEFT JOIN cpost ON cpost.acct = a.id
WHERE a.debits_pending IS NOT COALESCE(dpend.s, 0) OR a.debits_posted IS NOT COALESCE(dpost.s, 0)
   OR a.credits_pending IS NOT COALESCE(cpend.s, 0) OR a.credits_posted IS NOT COALESCE(cpost.s, 0)
LIMIT 5
"""

_OVERDRAWN_SQL = """
SELECT name, credits_posted - debits_posted - debits_pending FROM accounts
WHERE no_overdraft = 1 AND debits_posted + debits_pending > credits_posted LIMIT 5
"""

# Every resolving leg (post legs 0/1, void) against its reservation.
_RESOLUTIONS_SQL = """
SELECT r.id, r.leg, r.kind, r.pending_id, res.kind, res.amount,
       r.debit_account = res.debit_account AS same_debit,
       r.leg = 1 OR r.credit_account = res.credit_account AS same_credit,
       r.amount + COALESCE(fee.amount, 0) AS used
FROM transfers r
LEFT JOIN transfers res ON res.id = r.pending_id AND res.leg = 0
LEFT JOIN transfers fee ON r.leg = 0 AND r.kind = 'post' AND fee.id = r.id AND fee.leg = 1
WHERE r.pending_id IS NOT NULL
  AND (res.id IS NULL OR res.kind IS NOT 'reserve' OR NOT same_debit OR NOT same_credit
       OR (r.kind = 'post' AND r.leg = 0 AND used > res.amount)
       OR (r.kind = 'void' AND r.amount <> res.amount)
       OR (r.leg = 1 AND NOT EXISTS (SELECT 1 FROM transfers m WHERE m.id = r.id AND m.leg = 0
                                     AND m.kind = 'post' AND m.pending_id = r.pending_id)))
LIMIT 5
"""

_DOUBLE_SQL = """
SELECT pending_id, COUNT(*) FROM transfers WHERE pending_id IS NOT NULL AND leg = 0
GROUP BY pending_id HAVING COUNT(*) > 1 LIMIT 5
"""

_GLOBAL_SQL = """
SELECT COALESCE(SUM(debits_posted), 0), COALESCE(SUM(credits_posted), 0),
       COALESCE(SUM(debits_pending), 0), COALESCE(SUM(credits_pending), 0) FROM accounts
"""


def audit_books(conn: sqlite3.Connection) -> dict[str, int]:
    """Check every invariant on `conn` (inside one read snapshot); return a few totals.

    Raises AuditError naming the broken invariant and up to five offending rows.
    """
    problems: list[str] = []
    try:
        for row in conn.execute(_TOTALS_SQL):
            problems.append(
                f"account {row[0]}: totals (dpend {row[1]}, dpost {row[3]}, cpend {row[5]}, "
                f"cpost {row[7]}) differ from its transfers ({row[2]}, {row[4]}, {row[6]}, {row[8]})")
        for name, available in conn.execute(_OVERDRAWN_SQL):
            problems.append(f"account {name} is overdrawn: available {available} nRLC")
        for row in conn.execute(_RESOLUTIONS_SQL):
            problems.append(f"transfer {row[0]!r} (leg {row[1]}, {row[2]}) does not fit reservation "
                            f"{row[3]!r} ({row[4]}, {row[5]} nRLC, used {row[8]})")
        for pending_id, count in conn.execute(_DOUBLE_SQL):
            problems.append(f"reservation {pending_id!r} resolved {count} times")
        dpost, cpost, dpend, cpend = conn.execute(_GLOBAL_SQL).fetchone()
    except sqlite3.OperationalError as exc:
        raise AuditError(f"audit could not sum the books: {exc}") from None
    if dpost != cpost:
        problems.append(f"posted debits {dpost} != posted credits {cpost}")
    if dpend != cpend:
        problems.append(f"pending debits {dpend} != pending credits {cpend}")
    if problems:
        raise AuditError("the books do not balance: " + "; ".join(problems))
    return {"debits_posted": dpost, "debits_pending": dpend}
