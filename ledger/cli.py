"""Admin command line: `python -m ledger [--db PATH] COMMAND ...`.

    init                                  create or migrate the books
    wallet new|import|address             keystore at --keystore (env WALLET_KEYSTORE, ./data/wallet.json)
    grant USER AMOUNT_RLC [--memo] [--id] credit a Telegram user (idempotent on --id)
    balance USER | history USER           a user's balance / last transfers
    jobs [--state S ...]                  jobs, oldest first
    audit                                 check every invariant (exit 1 on a breach)
    tables                                every table of the books: rows and columns
    export --format csv|json [--table T]  dump transfers, accounts, jobs, deposits, wallet_links or chain_txs
                                          to stdout (or --output)

The database defaults to env LEDGER_DB, else ./data/books.db. Passwords come from --password-file,
env WALLET_PASSWORD or a prompt; a private key to import from --key-file or a prompt, never argv.
Errors print one line on stderr and exit non-zero; this module must never print a key or password.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

from ledger import Account, Job, Ledger, LedgerError, Transfer, format_rlc, parse_rlc
from ledger.db import introspect
from ledger.errors import InvalidArgument
from ledger.jobs import JobState

#: exported through the ledger's own models (accounts by name, job states by value)
_MODEL_TABLES: dict[str, type] = {"transfers": Transfer, "accounts": Account, "jobs": Job}
#: exported as stored (sqlite-utils reads them); no table holding a user's messages (inbox) or one-time nonces
_RAW_TABLES = ("deposits", "wallet_links", "chain_txs")


def _user(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,16}", text) or int(text) <= 0:  # ASCII only: isdigit() takes "٣٤٥"
        raise argparse.ArgumentTypeError(f"USER must be a positive numeric Telegram user id, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ledger", description="Operate the bot's books and wallet.")
    parser.add_argument(
        "--db",
        default=os.environ.get("LEDGER_DB", "data/books.db"),
        help="books file (env LEDGER_DB, default ./data/books.db)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create or migrate the books")
    wallet = sub.add_parser("wallet", help="the hot wallet's keystore")
    wallet.add_argument("action", choices=("new", "import", "address"))
    wallet.add_argument("--keystore", default=os.environ.get("WALLET_KEYSTORE", "data/wallet.json"))
    wallet.add_argument("--password-file", help="file holding the keystore password")
    wallet.add_argument("--key-file", help="(import) file holding the hex private key")
    wallet.add_argument("--scrypt-n", type=int, default=2**18, help=argparse.SUPPRESS)
    grant = sub.add_parser("grant", help="credit a user, amount in RLC (e.g. 2.5)")
    grant.add_argument("user", type=_user)
    grant.add_argument("amount", help="RLC, at most 9 decimals")
    grant.add_argument("--memo", default="")
    grant.add_argument("--id", help="transfer id (retrying with the same id grants once)")
    for name in ("balance", "history"):
        cmd = sub.add_parser(name, help=f"a user's {name}")
        cmd.add_argument("user", type=_user)
        if name == "history":
            cmd.add_argument("--limit", type=int, default=50)
    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--state", action="append", choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=int, default=100)
    sub.add_parser("audit", help="check every invariant of the books")
    sub.add_parser("tables", help="every table of the books: rows and columns")
    export = sub.add_parser("export", help="dump a table as CSV or JSON")
    export.add_argument("--format", choices=("csv", "json"), required=True)
    export.add_argument("--table", choices=(*_MODEL_TABLES, *_RAW_TABLES), default="transfers")
    export.add_argument("--output", help="file to write (default stdout)")
    return parser


def _wallet(args: argparse.Namespace) -> None:
    from ledger import wallet as wallet_mod  # eth-account is slow to import: only for this command

    if args.action == "address":
        print(wallet_mod.wallet_address(args.keystore))
        return
    password = wallet_mod.read_password(password_file=args.password_file, confirm=True)
    if args.action == "new":
        address = wallet_mod.create_wallet(args.keystore, password, scrypt_n=args.scrypt_n)
    else:
        if args.key_file:
            try:
                with open(args.key_file, encoding="utf-8") as handle:
                    key = handle.read().strip()
            except OSError as exc:
                raise InvalidArgument(f"cannot read key file {args.key_file}: {exc.strerror}") from None
        else:
            key = wallet_mod.getpass.getpass("Private key (hex): ")
        address = wallet_mod.import_wallet(args.keystore, key, password, scrypt_n=args.scrypt_n)
    print(f"keystore {args.keystore} (mode 0600) holds {address}")


def _rows(book: Ledger, table: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of an exported table, oldest first."""
    if table in _RAW_TABLES:  # no model of their own: sqlite-utils reads the rows as stored, in one snapshot
        with book.snapshot() as conn:
            stored = introspect(conn).table(table)
            return list(stored.columns_dict), list(stored.rows_where(order_by="rowid"))
    fields = [f.name for f in dataclasses.fields(_MODEL_TABLES[table])]
    if table == "transfers":
        return fields, [dataclasses.asdict(t) for t in reversed(book.history(None, limit=2**62))]
    if table == "accounts":
        return fields, [dataclasses.asdict(a) for a in book.accounts()]
    rows = []
    for job in book.jobs_in_states(limit=2**62):
        row = dataclasses.asdict(job)
        row["state"] = job.state.value
        rows.append(row)
    return fields, rows


def _export(book: Ledger, args: argparse.Namespace, out: TextIO) -> None:
    fields, rows = _rows(book, args.table)
    if args.format == "json":
        json.dump(rows, out, indent=1, default=str)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})


def _books(book: Ledger, args: argparse.Namespace) -> None:
    if args.command == "init":
        print(f"books at {book.path}, schema version {book.schema_version()}")
    elif args.command == "grant":
        amount = parse_rlc(args.amount)
        transfer_id = args.id or f"cli-grant-{uuid.uuid4()}"
        book.grant(transfer_id, args.user, amount, args.memo)
        print(
            f"granted {format_rlc(amount)} to user {args.user} (transfer {transfer_id}); "
            f"available {format_rlc(book.balance(args.user).available)}"
        )
    elif args.command == "balance":
        bal = book.balance(args.user)
        print(
            f"user {args.user}: posted {format_rlc(bal.posted)}, pending {format_rlc(bal.pending)}, "
            f"available {format_rlc(bal.available)}"
        )
    elif args.command == "history":
        for t in book.history(args.user, limit=args.limit):
            fee = f" fee {format_rlc(t.fee)}" if t.fee else ""
            print(f"{t.seq}\t{t.kind}\t{t.id}\t{t.debit} -> {t.credit}\t{format_rlc(t.amount)}{fee}\t{t.job}\t{t.memo}")
    elif args.command == "jobs":
        for job in book.jobs_in_states(*(args.state or ()), limit=args.limit):
            print(
                f"{job.id}\tuser {job.user_id}\t{job.state.value}\tmax {format_rlc(job.max_price)}\t"
                f"deal {job.deal_id or '-'}\ttask {job.task_id or '-'}\t{job.error or ''}"
            )
    elif args.command == "audit":
        totals = book.audit()
        print(
            f"ok: the books balance (posted {format_rlc(totals['debits_posted'])}, "
            f"pending {format_rlc(totals['debits_pending'])})"
        )
    elif args.command == "tables":
        with book.snapshot() as conn:
            db = introspect(conn)
            for name in db.table_names():
                table = db.table(name)
                print(f"{name}\t{table.count} rows\t{', '.join(table.columns_dict)}")
    elif args.command == "export":
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                _export(book, args, out)
        else:
            _export(book, args, sys.stdout)


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): that is how it says it has enough, so end quietly,
    with stdout pointed at /dev/null so the interpreter's final flush cannot complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a ledger/wallet error, 2 bad usage, 130 interrupted).

    Output cut short by its reader closing the pipe (`| head`) ends quietly with 0.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "wallet":
            _wallet(args)
            return 0
        with Ledger(args.db) as book:
            _books(book, args)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return 0
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
