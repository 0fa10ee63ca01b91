"""Benchmark of the books: ledger ops/s against the bare-SQLite floor, and audit() over 1,000,000 transfers.

Run: .venv/bin/python bench/ledger.py   (no arguments; files in a temporary directory next to this file,
so the ledger and the floor share one disk).

- ledger ops/s: reserve and post alternate, each its own committed `BEGIN IMMEDIATE` transaction with the
  production settings (WAL, synchronous=FULL), through the public `Ledger` API.
- floor ops/s: bare sqlite3, same pragmas, one `BEGIN IMMEDIATE; INSERT; COMMIT` per operation.
  Floor and ledger alternate in 5 rounds on the same disk; each figure is the median of its rounds.
- audit: a million transfers are built with a BULK PATH USED ONLY HERE: rows written straight into the
  `transfers` table in large transactions (synchronous=OFF while building), each resolution with the
  reserved amount and row that `Ledger.post`/`void` record (schema v2), the account totals computed in
  Python from the same rows and written once. The books it builds are consistent, so audit() must pass;
  then audit() is timed on the reopened file with production settings.
Last line: RESULT ledger_ops_per_s=... floor_ops_per_s=... ratio=... audit_1m_s=...
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Ledger

OPS = 2000
TRANSFERS = 1_000_000
USERS = 1000


ROUNDS = 5


def _ledger_round(book: Ledger, start: int) -> float:
    started = time.perf_counter()
    for i in range(start, start + OPS // ROUNDS // 2):
        book.reserve(f"r{i}", 1, 1000, f"job{i}")
        book.post(f"p{i}", f"r{i}", 600, fee=100)
    return (OPS // ROUNDS) / (time.perf_counter() - started)


def _floor_round(conn: sqlite3.Connection, start: int) -> float:
    started = time.perf_counter()
    for i in range(start, start + OPS // ROUNDS):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (id, amount) VALUES (?, ?)", (f"t{i}", i))
        conn.execute("COMMIT")
    return (OPS // ROUNDS) / (time.perf_counter() - started)


def ops_and_floor(base: Path) -> tuple[float, float]:
    """Alternate floor and ledger rounds (the disk is shared and noisy); medians of each."""
    conn = sqlite3.connect(base / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
    floors, ledgers = [], []
    with Ledger(base / "ops.db") as book:
        book.grant("seed", 1, 10**15, "")
        for r in range(ROUNDS):
            floors.append(_floor_round(conn, r * OPS))
            ledgers.append(_ledger_round(book, r * OPS))
        book.audit()
    conn.close()
    return statistics.median(ledgers), statistics.median(floors)


def _rows(ids: dict[str, int]) -> tuple[list[tuple[object, ...]], dict[int, list[int]]]:
    """A consistent million: grants, then reserve -> post(+fee leg) / void cycles, some left open."""
    rng = random.Random(7)
    spend, fees, grants = ids["operator:iexec_spend"], ids["operator:fees"], ids["operator:grants"]
    users = [ids[f"user:{u}"] for u in range(1, USERS + 1)]
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # dpend, dpost, cpend, cpost
    rows: list[tuple[object, ...]] = []

    def add(
        tid: str,
        leg: int,
        kind: str,
        phase: str,
        d: int,
        c: int,
        amount: int,
        pid: str | None,
        res: tuple[int, int] | None = None,
    ) -> int:
        """Append one row (seq given explicitly: the table starts empty); `res` = (seq, amount) reserved."""
        seq = len(rows) + 1
        reserve_seq, reserved = res if res is not None else (None, None)
        rows.append((seq, tid, leg, kind, phase, d, c, amount, pid, "", "", 0, reserved, reserve_seq))
        if phase == "posted":
            totals[d][1] += amount
            totals[c][3] += amount
        elif phase == "pending":
            totals[d][0] += amount
            totals[c][2] += amount
        return seq

    for u in users:
        add(f"g{u}", 0, "grant", "posted", grants, u, 10**13, None)
    i = 0
    while len(rows) < TRANSFERS:
        u, amount = rng.choice(users), rng.randint(1000, 10**6)
        res = (add(f"r{i}", 0, "reserve", "pending", u, spend, amount, None), amount)
        roll = rng.random()
        if roll < 0.55:
            totals[u][0] -= amount
            totals[spend][2] -= amount
            add(f"p{i}", 0, "post", "posted", u, spend, amount // 2, f"r{i}", res)
            add(f"p{i}", 1, "post", "posted", u, fees, amount // 10, f"r{i}")
        elif roll < 0.9:
            totals[u][0] -= amount
            totals[spend][2] -= amount
            add(f"v{i}", 0, "void", "void", u, spend, amount, f"r{i}", res)
        i += 1
    return rows, totals


def build_million(path: Path) -> int:
    Ledger(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO accounts (name, user_id, no_overdraft, created_at) VALUES (?, ?, 1, 0)",
        [(f"user:{u}", u) for u in range(1, USERS + 1)],
    )
    ids = dict(conn.execute("SELECT name, id FROM accounts").fetchall())
    rows, totals = _rows(ids)
    conn.executemany(
        "INSERT INTO transfers (seq, id, leg, kind, phase, debit_account, credit_account, amount, "
        "pending_id, job, memo, created_at, reserved, reserve_seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.executemany(
        "UPDATE accounts SET debits_pending = ?, debits_posted = ?, credits_pending = ?, "
        "credits_posted = ? WHERE id = ?",
        [(*t, acct) for acct, t in totals.items()],
    )
    conn.execute("COMMIT")
    conn.close()
    return len(rows)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-", dir=Path(__file__).resolve().parent) as tmp:
        base = Path(tmp)
        ops, floor = ops_and_floor(base)
        print(f"ledger: {ops:,.0f} ops/s (reserve and post, each one committed transaction, synchronous=FULL)")
        print(f"floor:  {floor:,.0f} ops/s (bare sqlite3 BEGIN IMMEDIATE + INSERT + COMMIT, same pragmas)")
        print(f"ratio:  {ops / floor:.2f}x (target >= 0.5x)")
        started = time.perf_counter()
        count = build_million(base / "million.db")
        print(f"built {count:,} transfers with the bench-only bulk path in {time.perf_counter() - started:.1f}s")
        with Ledger(base / "million.db") as book:
            started = time.perf_counter()
            book.audit()
            audit_s = time.perf_counter() - started
        print(f"audit over {count:,} transfers: {audit_s:.2f}s (target < 2s)")
    print(
        f"RESULT ledger_ops_per_s={ops:.0f} floor_ops_per_s={floor:.0f} ratio={ops / floor:.2f} "
        f"audit_1m_s={audit_s:.2f}"
    )


if __name__ == "__main__":
    main()
