"""SQLite plumbing for the books: opening, pragmas, write transactions and migrations.

Every write runs inside `BEGIN IMMEDIATE ... COMMIT` (the connection is in autocommit mode,
isolation_level=None, and this module manages transactions itself). A busy database is retried
internally with a bound (tenacity, used directly: the ledger imports nothing of ours), so "database is
locked" never reaches a caller: it becomes LedgerBusy after `busy_limit_s` (30 s: the CLI, scripts, threads).

On an event loop the bound is `loop_busy_limit_s` instead (0.25 s): a call made from a thread that runs
an asyncio loop (the bot's handlers and pipeline) blocks that loop, and everyone's updates with it, for
as long as it waits. So there it gives up quickly with LedgerBusy, which the pipeline retries later
without blocking and a handler answers with "try again in a moment". SQLite's own busy wait is kept short
(`SQLITE_BUSY_WAIT_S` per attempt) so that the bound is ours; waiting for this object's lock (another
thread inside a call) is bounded the same way. Opening the books (migrations) keeps the long bound.

Schema questions (which tables exist) go through sqlite-utils (`introspect`), read-only; its write methods
and `atomic()` must never run on this connection. This module must never hold a transaction open across a
caller's await or sleep.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self, TypeVar

import sqlite_utils
import tenacity

from ledger.errors import LedgerBusy, LedgerError, SchemaError
from ledger.schema import MIGRATIONS, SCHEMA_VERSION

_SQLITE_MAGIC = b"SQLite format 3\x00"
_T = TypeVar("_T")
_BUSY_WORDS = ("database is locked", "database is busy", "database table is locked")
#: how long one statement may wait inside SQLite for a lock before our retry loop takes over
SQLITE_BUSY_WAIT_S = 0.02
#: the bound of a call made on an event loop's thread
LOOP_BUSY_LIMIT_S = 0.25
#: the busy retry's waits (tenacity, the library iexec's retry policy runs on): from the first, doubling up to the
#: last, each jittered between half and one and a half times itself, never past the bound
BUSY_FIRST_DELAY_S = 0.002
BUSY_MAX_DELAY_S = 0.1


def _on_event_loop() -> bool:
    """True when this thread runs an asyncio event loop (a call here blocks the loop while it waits)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return any(word in str(exc) for word in _BUSY_WORDS)


def _check_is_sqlite(path: Path) -> None:
    """Refuse a file that exists, is not empty and does not start with SQLite's magic header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SchemaError(f"cannot read ledger file {path}: {exc.strerror}") from None
    if head and head != _SQLITE_MAGIC:
        raise SchemaError(f"{path} is not a SQLite database; refusing to use it as the books")


def introspect(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils' view of the books' connection, for reading its schema and rows (`table_names()`,
    `table(t).columns_dict`, `rows_where`). It runs nothing on the connection when made (no
    `recursive_triggers` pragma, no plugins), and it must never be used to write: its write methods open their
    own transactions, and every write here is ours, inside `BEGIN IMMEDIATE`."""
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def _split_script(script: str) -> list[str]:
    """Split a DDL script into complete statements (triggers keep their inner semicolons)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


class _Guard:
    """`with store._guard:` holds the store's lock, taken with `Store._acquire` (bounded)."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._acquire()

    def __exit__(self, *exc: object) -> None:
        self._store._lock.release()


class Store:
    """One connection to the books file, with write transactions and busy handling.

    Thread-safe: one re-entrant lock serialises use of the connection inside a process; several
    processes coordinate through SQLite's own locks. `busy_limit_s` bounds the wait for a busy database
    (and for the lock), `loop_busy_limit_s` the same wait when the caller runs an event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_limit_s: float = 30.0,
        loop_busy_limit_s: float = LOOP_BUSY_LIMIT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_limit_s = busy_limit_s
        self._loop_busy_limit_s = min(loop_busy_limit_s, busy_limit_s)
        self._lock = threading.RLock()
        self._guard = _Guard(self)  # `with self._guard:` = the lock, waited for at most the busy bound
        self._depth = 0
        self._reading = False
        self._opening = True
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _check_is_sqlite(self.path)
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=min(SQLITE_BUSY_WAIT_S, busy_limit_s / 2),
            )
            self._conn.row_factory = sqlite3.Row
            self._configure()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise LedgerBusy(f"{self.path} stayed locked while opening") from None
            raise SchemaError(f"{self.path} is not usable as the books: {exc}") from None
        finally:
            self._opening = False

    def _configure(self) -> None:
        conn = self._conn
        # SQLite's own wait is short; our bounded retry loop does the rest (and turns it into LedgerBusy).
        wait_ms = max(1, int(min(SQLITE_BUSY_WAIT_S, self._busy_limit_s / 2) * 1000))
        conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
        self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # blanked inbox bodies leave no old bytes in free pages

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        with self._lock:
            self._conn.close()

    def _busy_bound(self) -> float:
        """How long this call may wait for a busy database: short on an event loop's thread."""
        if self._opening or not _on_event_loop():
            return self._busy_limit_s
        return self._loop_busy_limit_s

    def _acquire(self) -> None:
        """Take this object's lock, waiting at most the busy bound (another thread may be inside)."""
        if self._lock.acquire(blocking=False):
            return
        bound = self._busy_bound()
        if not self._lock.acquire(timeout=bound):
            raise LedgerBusy(
                f"the books at {self.path} stayed in use by another thread of this process for {bound:g}s; try again"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _retry_busy(self, action: Callable[[], _T]) -> _T:
        """Run `action`, retrying SQLITE_BUSY with jittered backoff until the busy bound (short on an
        event loop's thread, see `_busy_bound`).

        The first attempt runs bare: a read transaction costs ~7 us here and tenacity's set-up ~20 us, so the
        retry machinery is built only once the database has answered busy."""
        started = time.monotonic()
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        bound = self._busy_bound()
        deadline = started + bound

        def wait(state: tenacity.RetryCallState) -> float:
            delay = min(BUSY_MAX_DELAY_S, BUSY_FIRST_DELAY_S * 2 ** (state.attempt_number - 1))
            return min(max(0.0, deadline - time.monotonic()), delay * (0.5 + random.random()))

        retrying = tenacity.Retrying(
            stop=lambda state: time.monotonic() >= deadline,
            wait=wait,
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)),
            sleep=time.sleep,
            reraise=False,
        )
        try:
            return retrying(action)
        except tenacity.RetryError:
            raise LedgerBusy(
                f"the books at {self.path} stayed locked by other writers for {bound:g}s; try again"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`); nested uses join the outer one.

        Everything done inside commits together or not at all: e.g. `record_event` then `grant`.
        Raises LedgerBusy if the write lock cannot be had within the bound.
        """
        with self._guard:
            if self._depth and self._reading:
                raise LedgerError("cannot write inside a read snapshot")
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._begin()
            try:
                yield self._conn
            except BaseException:
                self._abort()
                raise
            self._commit()

    def _write(self, work: Callable[..., _T], *args: object) -> _T:
        """`work(conn, *args)` in its own write transaction (or joining the current one).

        The same as `with self.transaction() as conn: return work(conn, *args)`, without the
        generator machinery on the hot path (one reserve or post per call).
        """
        with self._guard:
            if self._depth:
                with self.transaction() as conn:
                    return work(conn, *args)
            self._begin()
            try:
                result = work(self._conn, *args)
            except BaseException:
                self._abort()
                raise
            self._commit()
            return result

    def _begin(self) -> None:
        """Open the outermost write transaction (the lock is held)."""
        self._retry_busy(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        self._depth = 1

    def _abort(self) -> None:
        """Close the outermost write transaction after a failure inside it."""
        self._depth = 0
        self._rollback()

    def _commit(self) -> None:
        """Commit the outermost write transaction; a failed commit is rolled back and re-raised."""
        self._depth = 0
        try:
            self._retry_busy(lambda: self._conn.execute("COMMIT"))
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back and forget what was cached from the rolled-back transaction."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._forget()

    def _forget(self) -> None:
        """Drop caches that may hold rows written by a rolled-back transaction (subclasses extend)."""

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one consistent state of the file."""
        with self._guard:
            if self._depth:
                yield self._conn
                return
            self._retry_busy(lambda: self._conn.execute("BEGIN DEFERRED"))
            self._depth, self._reading = 1, True
            try:
                yield self._conn
            finally:
                self._depth, self._reading = 0, False
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query (one consistent snapshot), retrying busy."""
        with self._guard:

            def run() -> list[sqlite3.Row]:
                cursor = self._conn.execute(sql, params)
                return cursor.fetchall()

            return self._retry_busy(run)

    def schema_version(self) -> int:
        """The version of the schema in the file (0 for a new file)."""
        with self._guard:
            return self._version(self._conn)

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        if "schema_migrations" not in introspect(conn).table_names():
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _refuse_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {current}, newer than this code's "
                f"{SCHEMA_VERSION}; upgrade the software instead of opening it"
            )

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION inside one write transaction; refuse newer files."""
        current = self._retry_busy(lambda: self._version(self._conn))
        if current == SCHEMA_VERSION:
            return  # the usual case: no write lock needed to open the books
        self._refuse_newer(current)
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            current = self._version(conn)
            self._refuse_newer(current)
            for version, name, script, after in MIGRATIONS:
                if version <= current:
                    continue
                for statement in _split_script(script):
                    conn.execute(statement)
                for sql, params in after(self._now_ms()):
                    conn.execute(sql, params)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, self._now_ms()),
                )
