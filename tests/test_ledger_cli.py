"""`python -m ledger` run as a subprocess: every documented command, exact RLC input, clean errors."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LEDGER_DB": str(tmp_path / "books.db"), **(env or {})}
    full_env.pop("WALLET_PASSWORD", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_documented_commands_exist(tmp_path: Path) -> None:
    out = run(tmp_path, "--help").stdout
    for command in ("init", "wallet", "grant", "balance", "history", "jobs", "audit", "export"):
        assert command in out


@pytest.mark.slow  # over ~2 s: one CLI process per command
def test_grant_balance_history_audit_export(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    first = run(tmp_path, "grant", "42", "1.5", "--memo", "welcome", "--id", "g-1")
    assert first.returncode == 0 and "1.5 RLC" in first.stdout
    assert run(tmp_path, "grant", "42", "1.5", "--memo", "welcome", "--id", "g-1").returncode == 0
    assert "available 1.5 RLC" in run(tmp_path, "balance", "42").stdout  # granted once
    assert run(tmp_path, "grant", "42", "0.000000001").returncode == 0
    with Ledger(tmp_path / "books.db") as book:
        assert book.balance(42).posted == 1_500_000_001
        book.create_job("job-7", 42, 42, 1000)
    assert "welcome" in run(tmp_path, "history", "42").stdout
    assert "job-7" in run(tmp_path, "jobs", "--state", "RECEIVED").stdout
    assert run(tmp_path, "audit").stdout.startswith("ok")
    rows = list(csv.DictReader(io.StringIO(run(tmp_path, "export", "--format", "csv").stdout)))
    assert [r["kind"] for r in rows] == ["grant", "grant", "reserve"]
    accounts = json.loads(run(tmp_path, "export", "--format", "json", "--table", "accounts").stdout)
    assert {a["name"] for a in accounts} >= {"operator:grants", "operator:fees", "user:42"}
    jobs = json.loads(run(tmp_path, "export", "--format", "json", "--table", "jobs").stdout)
    assert jobs[0]["state"] == "RECEIVED"


@pytest.mark.parametrize("amount", ["1e9", "NaN", "inf", "-0", "1.0000000001", "", " 5 ", "0", "-3"])
def test_bad_rlc_is_one_line_error_and_writes_nothing(tmp_path: Path, amount: str) -> None:
    result = run(tmp_path, "grant", "42", amount)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    with Ledger(tmp_path / "books.db") as book:
        assert book.balance(42).posted == 0


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
def test_conflict_bad_file_and_broken_books_exit_non_zero(tmp_path: Path) -> None:
    run(tmp_path, "grant", "42", "1", "--id", "x")
    conflict = run(tmp_path, "grant", "42", "2", "--id", "x")
    assert conflict.returncode == 1 and conflict.stderr.startswith("error: transfer id 'x'")
    (tmp_path / "junk.db").write_text("hello")
    bad = run(tmp_path, "--db", str(tmp_path / "junk.db"), "audit")
    assert bad.returncode == 1 and "not a SQLite database" in bad.stderr and "Traceback" not in bad.stderr
    import sqlite3

    raw = sqlite3.connect(tmp_path / "books.db")
    raw.execute("UPDATE accounts SET credits_posted = 5 WHERE name = 'user:42'")
    raw.commit()
    raw.close()
    audit = run(tmp_path, "audit")
    assert audit.returncode == 1 and "user:42" in audit.stderr
    assert run(tmp_path, "balance", "abc").returncode == 2


@pytest.mark.slow  # over ~2 s
def test_wallet_commands(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    new = run(tmp_path, "wallet", "new", "--keystore", "k.json", "--password-file", "pw", "--scrypt-n", "1024")
    assert new.returncode == 0, new.stderr
    assert stat.S_IMODE((tmp_path / "k.json").stat().st_mode) == 0o600
    address = run(tmp_path, "wallet", "address", "--keystore", "k.json").stdout.strip()
    assert address.startswith("0x") and address in new.stdout
    (tmp_path / "key").write_text("0x" + "5a" * 32)
    imported = run(
        tmp_path,
        "wallet",
        "import",
        "--keystore",
        "i.json",
        "--key-file",
        "key",
        "--scrypt-n",
        "1024",
        env={"WALLET_PASSWORD": "from-env"},
    )
    assert imported.returncode == 0 and "5a5a5a" not in imported.stdout + imported.stderr
    again = run(tmp_path, "wallet", "new", "--keystore", "k.json", "--password-file", "pw")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    no_pw = run(tmp_path, "wallet", "new", "--keystore", "n.json")
    assert no_pw.returncode == 1 and "Traceback" not in no_pw.stderr


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
def test_output_cut_by_head_ends_quietly(tmp_path: Path) -> None:
    with Ledger(tmp_path / "books.db") as book:
        for i in range(3000):
            book.grant(f"g{i}", 42, 1, "m" * 60)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEDGER_DB": str(tmp_path / "books.db")}
    with subprocess.Popen(
        [sys.executable, "-m", "ledger", "history", "42", "--limit", "3000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert b"grant" in proc.stdout.readline()  # the reader takes one line and goes away, like `| head -1`
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0
    assert err == ""


def test_tables_and_export_of_deposits_and_links_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ledger.cli import main

    db = str(tmp_path / "books.db")
    linked, stranger = "0x" + "ab" * 20, "0x" + "cd" * 20
    with Ledger(db) as book:
        book.links.issue(42, "0x" + "44" * 32)
        book.links.link(42, linked, "0x" + "44" * 32, "eip712")
        credited, _ = book.deposits.record("0x" + "11" * 32, 3, 10, "0x" + "22" * 32, linked, 2 * 10**9)
        unclaimed, _ = book.deposits.record("0x" + "33" * 32, 0, 11, "0x" + "22" * 32, stranger, 5)
    assert main(["--db", db, "tables"]) == 0
    tables = {line.split("\t")[0]: line.split("\t")[1:] for line in capsys.readouterr().out.splitlines()}
    assert tables["deposits"][0] == "2 rows" and "tx_hash" in tables["deposits"][1]
    assert tables["wallet_links"][0] == "1 rows" and tables["transfers"][0] == "1 rows"

    assert main(["--db", db, "export", "--format", "json", "--table", "deposits"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    out = tmp_path / "deposits.csv"
    assert main(["--db", db, "export", "--format", "csv", "--table", "deposits", "--output", str(out)]) == 0
    as_csv = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(d["tx_hash"], d["log_index"], d["status"], d["user_id"], d["amount"]) for d in as_json] == [
        (credited.tx_hash, 3, "credited", 42, 2 * 10**9),
        (unclaimed.tx_hash, 0, "unclaimed", None, 5),
    ]
    assert as_csv == [{k: "" if v is None else str(v) for k, v in row.items()} for row in as_json]
    assert main(["--db", db, "export", "--format", "json", "--table", "wallet_links"]) == 0
    assert [(w["address"], w["user_id"]) for w in json.loads(capsys.readouterr().out)] == [(linked, 42)]
    with Ledger(db) as book:
        book.audit()  # reading through sqlite-utils changed nothing
        assert book._conn.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
