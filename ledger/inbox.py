"""The inbox: Telegram updates kept in the books from the moment they arrive until their handling ended.

Telegram forgets an update once the bot asks for the next ones (getUpdates with a higher offset) or its
webhook answered 200, and python-telegram-bot does that before a handler has finished (a photo's download
can take seconds). The bot therefore writes each update here first; at start-up it handles again every
update not marked done. A done row keeps only its id (the body is blanked, nothing of the user's message
stays) so that a redelivered update is recognised and ignored, and is pruned after a day. The books'
connection runs with `secure_delete` on (`ledger.db.Store._configure`), so a blanked body is overwritten
in the file, not left in a free page; `prune` also truncates the write-ahead log, which may still hold old
bodies, when no reader is in it.

An update that cannot be stored (an id that is not a non-negative int, a body over `MAX_BODY` characters)
must not stop the others: `problem` names what is wrong and `set_aside` stores its id alone, as done, so
that it is never handled and a redelivery is recognised.

This module holds no Telegram types: an update is an id and its JSON text. It must never store a token.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass

from ledger.db import Store
from ledger.errors import InvalidArgument

DONE_BODY = ""
MAX_BODY = 1_000_000  # a Telegram update is a few KB; anything larger is not one


@dataclass(frozen=True)
class InboxEntry:
    """One update not handled yet: its id, its JSON text and when it arrived (unix ms)."""

    update_id: int
    body: str
    received_at: int


def _check_update_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"update_id must be a non-negative int, got {value!r:.40}")
    return value


class Inbox:
    """The inbox table on the books' connection (`Ledger.inbox`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def problem(update_id: object, body: object) -> str | None:
        """Why (update_id, body) cannot be kept, or None when `keep` takes it."""
        if isinstance(update_id, bool) or not isinstance(update_id, int) or update_id < 0:
            return f"update_id must be a non-negative int, got {update_id!r:.40}"
        if not isinstance(body, str) or not body or len(body) > MAX_BODY:
            size = len(body) if isinstance(body, str) else type(body).__name__
            return f"the body must be 1..{MAX_BODY} characters, got {size}"
        return None

    def keep(self, updates: list[tuple[int, str]]) -> list[int]:
        """Store (update_id, JSON text) pairs in one transaction; returns the ids that were new.

        An id seen before (handled or not) is left as it is. Raises InvalidArgument for a bad id or a
        body over 1 MB.
        """
        for update_id, body in updates:
            _check_update_id(update_id)
            why = self.problem(update_id, body)
            if why is not None:
                raise InvalidArgument(f"update {update_id}: {why}")
        if not updates:
            return []
        now = self._store._now_ms()
        with self._store.transaction() as conn:
            fresh = []
            for update_id, body in updates:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO inbox (update_id, body, received_at) VALUES (?, ?, ?)",
                    (update_id, body, now),
                )
                if cursor.rowcount:
                    fresh.append(update_id)
            return fresh

    def set_aside(self, update_id: int) -> bool:
        """Store an update that cannot be kept as handled, without a body; True when it was new.

        A row stored before (handled or not) is left as it is.
        """
        now = self._store._now_ms()
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO inbox (update_id, body, received_at, done_at) VALUES (?, ?, ?, ?)",
                (_check_update_id(update_id), DONE_BODY, now, now),
            )
            return bool(cursor.rowcount)

    def done(self, update_id: int) -> bool:
        """Mark an update handled and drop its body; True when this call marked it (False: unknown or
        already done)."""
        now = self._store._now_ms()
        with self._store.transaction() as conn:
            cursor = conn.execute(
                "UPDATE inbox SET done_at = MAX(?, received_at), body = ? WHERE update_id = ? AND done_at IS NULL",
                (now, DONE_BODY, _check_update_id(update_id)),
            )
            return bool(cursor.rowcount)

    def is_done(self, update_id: int) -> bool:
        """True when this update was stored and its handling finished."""
        rows = self._store._read("SELECT done_at FROM inbox WHERE update_id = ?", (_check_update_id(update_id),))
        return bool(rows) and rows[0][0] is not None

    def pending(self) -> list[InboxEntry]:
        """Updates stored but not handled, oldest first."""
        rows = self._store._read(
            "SELECT update_id, body, received_at FROM inbox WHERE done_at IS NULL ORDER BY update_id"
        )
        return [InboxEntry(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def prune(self, before_ms: int) -> int:
        """Delete rows handled before `before_ms` (unix ms); returns how many.

        Then truncates the write-ahead log if no other connection is reading it (else it is left as is):
        its old frames may still hold the bodies of handled updates.
        """
        with self._store.transaction() as conn:
            count = conn.execute(
                "DELETE FROM inbox WHERE done_at IS NOT NULL AND done_at < ?", (int(before_ms),)
            ).rowcount
        with self._store._guard:
            if not self._store._conn.in_transaction:  # not inside a caller's transaction
                # busy or locked: the next pruning tries again
                with contextlib.suppress(sqlite3.OperationalError):
                    self._store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return count
