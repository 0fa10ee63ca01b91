"""Schema v2 and the audit: a v1 file upgrades in place, and every forged resolution is still caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger import AuditError, Ledger
from ledger.schema import MIGRATIONS, SCHEMA_VERSION


def _v1_file(path: Path) -> None:
    """A file exactly as schema v1 left it: grant 1000, r1 400 posted 300 + fee 50, r2 200 voided, r3 100 open."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    version, name, script, after = MIGRATIONS[0]
    raw.executescript(script)
    for sql, params in after(0):  # type: ignore[operator]  # the first migration has an `after` step
        raw.execute(sql, params)
    raw.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))
    raw.execute("INSERT INTO accounts (name, user_id, no_overdraft, created_at) VALUES ('user:1', 1, 1, 0)")
    ids = dict(raw.execute("SELECT name, id FROM accounts").fetchall())
    user, spend, fees = ids["user:1"], ids["operator:iexec_spend"], ids["operator:fees"]
    rows = [
        ("g", 0, "grant", "posted", ids["operator:grants"], user, 1000, None),
        ("r1", 0, "reserve", "pending", user, spend, 400, None),
        ("p1", 0, "post", "posted", user, spend, 300, "r1"),
        ("p1", 1, "post", "posted", user, fees, 50, "r1"),
        ("r2", 0, "reserve", "pending", user, spend, 200, None),
        ("v2", 0, "void", "void", user, spend, 200, "r2"),
        ("r3", 0, "reserve", "pending", user, spend, 100, None),
    ]
    raw.executemany(
        "INSERT INTO transfers (id, leg, kind, phase, debit_account, credit_account, amount, "
        "pending_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        rows,
    )
    totals = {
        user: (100, 350, 0, 1000),
        spend: (0, 0, 100, 300),
        fees: (0, 0, 0, 50),
        ids["operator:grants"]: (0, 1000, 0, 0),
    }
    raw.executemany(
        "UPDATE accounts SET debits_pending = ?, debits_posted = ?, credits_pending = ?, "
        "credits_posted = ? WHERE id = ?",
        [(*t, acct) for acct, t in totals.items()],
    )
    raw.close()


def _forge(path: Path, *statements: str) -> None:
    """Write behind the ledger's back, lifting the append-only trigger as a tamperer would."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("DROP TRIGGER IF EXISTS transfers_no_update")
    for sql in statements:
        raw.execute(sql)
    raw.close()


def test_v1_file_upgrades_and_keeps_balancing(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_file(path)
    with Ledger(path) as book:
        assert book.schema_version() == SCHEMA_VERSION
        book.audit()
        assert book.balance(1).available == 1000 - 350 - 100
        assert book.get_transfer("p1").fee == 50  # type: ignore[union-attr]  # a missing transfer fails the test either way
        assert book.reservation_state("r3") == "open"
        linked = book._conn.execute(
            "SELECT r.id, r.reserved, res.id FROM transfers r JOIN transfers res ON res.seq = r.reserve_seq "
            "ORDER BY r.seq"
        ).fetchall()
        assert [tuple(row) for row in linked] == [("p1", 400, "r1"), ("v2", 200, "r2")]
        book.post("p3", "r3", 60, fee=10)  # new resolutions are written by v2 code into the upgraded file
        book.reserve("r4", 1, 50, "j4")
        book.void("v4", "r4")
        book.audit()
        assert book.balance(1).available == 1000 - 350 - 70
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            book._conn.execute("UPDATE transfers SET amount = 1")
    with Ledger(path) as book:  # reopening does not migrate again
        assert book.schema_version() == SCHEMA_VERSION
        book.audit()


def test_v1_resolution_without_its_reservation_is_reported_after_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_file(path)
    raw = sqlite3.connect(path, isolation_level=None)  # a v1 post naming a reservation that never existed
    raw.execute(
        "INSERT INTO transfers (id, kind, phase, debit_account, credit_account, amount, pending_id, "
        "created_at) SELECT 'px', 'post', 'posted', debit_account, credit_account, 1, 'nope', 0 "
        "FROM transfers WHERE id = 'r3'"
    )
    raw.close()
    with Ledger(path) as book, pytest.raises(AuditError, match=r"'px'.*does not fit reservation 'nope'"):
        book.audit()


@pytest.fixture
def books(ledger_path: Path) -> Path:
    path = ledger_path
    with Ledger(path) as book:
        book.grant("g", 1, 1000, "")
        book.reserve("r1", 1, 400, "j1")
        book.post("p1", "r1", 300, fee=50)
        book.reserve("r2", 1, 200, "j2")
        book.void("v2", "r2")
        book.reserve("r3", 1, 100, "j3")
        book.audit()
    return path


def _audit_fails(path: Path, match: str) -> None:
    with Ledger(path) as book, pytest.raises(AuditError, match=match):
        book.audit()


def test_recorded_reserved_amount_must_equal_the_reservation(books: Path) -> None:
    _forge(books, "UPDATE transfers SET reserved = 1000 WHERE id = 'p1' AND leg = 0")
    _audit_fails(books, r"'p1' \(post\) does not fit reservation 'r1' \(reserve, 400 nRLC; recorded 1000")


def test_resolution_pointing_at_another_row_is_caught(books: Path) -> None:
    _forge(books, "UPDATE transfers SET reserve_seq = (SELECT seq FROM transfers WHERE id = 'g') WHERE id = 'v2'")
    _audit_fails(books, "'v2' .*does not fit reservation 'r2'")


def test_post_plus_fee_above_reservation_is_caught(books: Path) -> None:
    _forge(
        books,
        "UPDATE transfers SET amount = 120 WHERE id = 'p1' AND leg = 1",
        "UPDATE accounts SET debits_posted = debits_posted + 70 WHERE name = 'user:1'",
        "UPDATE accounts SET credits_posted = credits_posted + 70 WHERE name = 'operator:fees'",
    )
    _audit_fails(books, r"'p1' \(post\) does not fit reservation 'r1' .*used 420")


def test_fee_leg_away_from_its_post_is_caught(books: Path) -> None:
    _forge(
        books,
        "INSERT INTO transfers (id, leg, kind, phase, debit_account, credit_account, amount, "
        "pending_id, created_at) SELECT 'v2', 1, 'post', 'posted', debit_account, "
        "(SELECT id FROM accounts WHERE name = 'operator:fees'), 5, 'r2', 0 "
        "FROM transfers WHERE id = 'v2'",
        "UPDATE accounts SET debits_posted = debits_posted + 5 WHERE name = 'user:1'",
        "UPDATE accounts SET credits_posted = credits_posted + 5 WHERE name = 'operator:fees'",
    )
    _audit_fails(books, "1 fee legs do not follow the leg 0 of their post")


def test_reservation_resolved_twice_is_caught(books: Path) -> None:
    # Without the unique index a second void of r2 can be written; the audit names the double resolution.
    _forge(
        books,
        "DROP INDEX transfers_resolution",
        "INSERT INTO transfers (id, kind, phase, debit_account, credit_account, amount, pending_id, "
        "created_at, reserved, reserve_seq) SELECT 'v2b', 'void', 'void', debit_account, credit_account, "
        "amount, 'r2', 0, reserved, reserve_seq FROM transfers WHERE id = 'v2'",
    )
    with Ledger(books) as book:
        book._conn.execute(
            "CREATE INDEX transfers_resolution ON transfers(pending_id) WHERE pending_id IS NOT NULL AND leg = 0"
        )
        with pytest.raises(AuditError, match="reservation 'r2' resolved 2 times"):
            book.audit()


def test_open_reservation_counts_as_pending_and_a_fake_one_is_caught(books: Path) -> None:
    with Ledger(books) as book:
        assert book.audit()["debits_pending"] == 100
    _forge(books, "UPDATE transfers SET reserved = NULL, reserve_seq = NULL WHERE id = 'v2'")
    _audit_fails(books, "'v2' .*does not fit reservation 'r2'")
