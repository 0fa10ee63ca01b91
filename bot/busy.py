"""Calls on the books while the database is busy: tried again after a pause instead of failing.

Another process (the ledger CLI, a backup) may hold SQLite's write lock for a while; the books then raise
`LedgerBusy`. What was sent must still be recorded, and the event loop must not wait on the lock, so the
bot's calls on the books that must not be lost go through `when_free`.

Never here: a call that is not idempotent when retried (every ledger write is one transaction: a busy one
did nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from iexec.retry import RetryPolicy
from ledger import LedgerBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The pauses while the books are busy: 0.25, 0.5, 1, then 2 s (jittered). `when_free` uses `wait_s` only: its
#: bound is the caller's `limit_s`, or none (what was sent must be recorded).
BUSY_RETRY = RetryPolicy(base_delay_s=0.25, max_delay_s=2.0, deadline_s=None, attempts=1)


async def when_free(call: Callable[..., T], *args: Any, limit_s: float | None = None) -> T:
    """`call(*args)` on the books, tried again after a pause (BUSY_RETRY: doubling from 0.25 s, at most 2 s)
    while the database is busy (LedgerBusy).

    With `limit_s`, the LedgerBusy of the last try is raised once that much time has passed."""
    pauses = 0
    start = time.monotonic()
    name = getattr(getattr(call, "func", call), "__name__", "?")
    while True:
        try:
            return call(*args)
        except LedgerBusy as exc:
            pauses += 1
            pause = BUSY_RETRY.wait_s(pauses)
            if limit_s is not None and time.monotonic() - start + pause > limit_s:
                log.warning("event=books_busy_gave_up call=%s pauses=%d error=%r", name, pauses, str(exc)[:200])
                raise
            log.warning("event=books_busy call=%s pauses=%d error=%r", name, pauses, str(exc)[:200])
            await asyncio.sleep(pause)
