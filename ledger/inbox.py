"""The inbox: Telegram updates kept in the books from the moment they arrive until their handling ended.

Telegram forgets an update once the bot asks for the next ones (getUpdates with a higher offset) or its
webhook answered 200, and python-telegram-bot does that before a handler has finished (a photo's download
can take seconds). The bot therefore writes each update here first; at start-up it handles again every
update not marked done. A done row keeps only its id (the body is blanked, nothing of the user's message
stays) so that a redelivered update is recognised and ignored, and is pruned after a day.

This module holds no Telegram types: an update is an id and its JSON text. It must never store a token.
"""
from __future__ import annotations

from dataclasses import dataclass

from ledger.db import Store
from ledger.errors import InvalidArgument

DONE_BODY = ""
_MAX_BODY = 1_000_000  # a Telegram update is a few KB; anything larger is not one


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

    def keep(self, updates: list[tuple[int, str]]) -> list[int]:
        """Store (update_id, JSON text) pairs in one transaction; returns the ids that were new.

        An id seen before (handled or not) is left as it is. Raises InvalidArgument for a bad id or a
        body over 1 MB.
        """
        for update_id, body in updates:
            _check_update_id(update_id)
            if not isinstance(body, str) or not body or len(body) > _MAX_BODY:
                raise InvalidArgument(f"update {update_id}: the body must be 1..{_MAX_BODY} characters")
        if not updates:
            return []
        now = self._store._now_ms()
        with self._store.transaction() as conn:
            fresh = []
            for update_id, body in updates:
                cursor = conn.execute("INSERT OR IGNORE INTO inbox (update_id, body, received_at) "
                                      "VALUES (?, ?, ?)", (update_id, body, now))
                if cursor.rowcount:
                    fresh.append(update_id)
            return fresh

    def done(self, update_id: int) -> bool:
        """Mark an update handled and drop its body; True when this call marked it (False: unknown or
        already done)."""
        now = self._store._now_ms()
        with self._store.transaction() as conn:
            cursor = conn.execute("UPDATE inbox SET done_at = MAX(?, received_at), body = ? "
                                  "WHERE update_id = ? AND done_at IS NULL",
                                  (now, DONE_BODY, _check_update_id(update_id)))
            return bool(cursor.rowcount)

    def is_done(self, update_id: int) -> bool:
        """True when this update was stored and its handling finished."""
        rows = self._store._read("SELECT done_at FROM inbox WHERE update_id = ?", (_check_update_id(update_id),))
        return bool(rows) and rows[0][0] is not None

    def pending(self) -> list[InboxEntry]:
        """Updates stored but not handled, oldest first."""
        rows = self._store._read("SELECT update_id, body, received_at FROM inbox WHERE done_at IS NULL "
                                 "ORDER BY update_id")
        return [InboxEntry(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def prune(self, before_ms: int) -> int:
        """Delete rows handled before `before_ms` (unix ms); returns how many."""
        with self._store.transaction() as conn:
            return conn.execute("DELETE FROM inbox WHERE done_at IS NOT NULL AND done_at < ?",
                                (int(before_ms),)).rowcount
