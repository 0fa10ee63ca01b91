"""Nothing a user sends is lost: every update is written to the books' inbox before Telegram forgets it.

python-telegram-bot confirms the updates of one getUpdates at the next call, which it makes at once, while
the handlers still run; a webhook update is gone once we answer 200. So:

- `InboxBot.get_updates` stores the updates it fetched before returning them (the next call confirms them);
  the webhook server (`bot.webhook`) stores an update before answering 200;
- a first handler group (`claim`) skips an update handled already (a redelivery after a restart) or taken
  in this process; a last group (`finish`) marks it done, except a picture: it is done when its intake has
  ended (the job exists, or the user was told why not), see `handlers._begin`;
- `replay` at start-up hands every update not done to the application again. Handling is idempotent (a job
  id is per chat and message), so a replay never makes a second job.

This module must never drop an update it could not store because the books were busy: the error reaches
PTB's retry loop, which asks Telegram again for the same updates (after `BUSY_PAUSE_S`: PTB's loop does not
wait after an error that is not Telegram's). An update that can never be stored (its JSON over
`ledger.inbox.MAX_BODY` characters, e.g. a long text of characters `to_json` escapes to six) is set aside
instead: stored as handled without a body and logged (`event=update_set_aside`), so that one such update
cannot hold the others back; it is then not handled (the claim group stops it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from telegram import Update
from telegram.ext import ApplicationHandlerStop, ContextTypes, ExtBot

from ledger import Ledger, LedgerBusy, LedgerError

log = logging.getLogger(__name__)
CLAIM_GROUP = -100
FINISH_GROUP = 100
KEEP_DONE_MS = 86_400_000  # Telegram keeps an unconfirmed update 24 h: a redelivery is recognised that long
PRUNE_EVERY = 1000  # updates handled between two prunings of done rows
_CLAIMED_MAX = 10_000
BUSY_PAUSE_S = 1.0  # after busy books, before getUpdates is asked again for the same updates


class UpdateInbox:
    """The bot's side of `ledger.Inbox`: what this process claimed, what waits for an intake to end."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.clock = clock
        self._claimed: set[int] = set()
        self._deferred: set[int] = set()
        self._finished = 0

    def keep(self, updates: Sequence[Update]) -> list[int]:
        """Store updates before Telegram may forget them; returns the ids stored and not seen before.

        One that cannot be stored is set aside (see the module's docstring). Raises LedgerBusy (nothing
        is stored then).
        """
        return self.store(updates)[0]

    def store(self, updates: Sequence[Update]) -> tuple[list[int], list[int]]:
        """`keep`, returning (ids stored and not seen before, ids set aside now)."""
        inbox = self.ledger.inbox
        good: list[tuple[int, str]] = []
        bad: list[tuple[int, str]] = []
        for update in updates:
            try:
                body: object = update.to_json()
            except Exception as exc:  # noqa: BLE001 - an update PTB cannot write back as JSON
                body = f"to_json failed: {exc!r:.100}"
                bad.append((update.update_id, body))
                continue
            why = inbox.problem(update.update_id, body)
            if why is None:
                good.append((update.update_id, str(body)))
            else:
                bad.append((update.update_id, why))
        aside: list[int] = []
        with self.ledger.transaction():
            fresh = inbox.keep(good)
            for update_id, why in bad:
                if inbox.problem(update_id, "{}") is not None:  # no id to store: it is handled as it is
                    log.error("event=update_not_stored update=%r reason=%r", update_id, why[:200])
                elif inbox.set_aside(update_id):
                    aside.append(update_id)
        for update_id, why in bad:
            if update_id in aside:
                log.error("event=update_set_aside update=%s reason=%r", update_id, why[:200])
        return fresh, aside

    def defer(self, update_id: int) -> None:
        """The update's handling goes on in a task: `finished` will be called when it ends."""
        self._deferred.add(update_id)

    def finished(self, update_id: int) -> None:
        """The update was handled (a job row exists, or the user got an answer)."""
        self._deferred.discard(update_id)
        self._mark_done(update_id)

    def _mark_done(self, update_id: int) -> None:
        try:
            self.ledger.inbox.done(update_id)
        except LedgerError as exc:  # e.g. busy: it is handled again at the next start, which is idempotent
            log.warning("event=inbox_done_failed update=%s error=%r", update_id, str(exc)[:200])

    async def claim(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """First handler group: stop here for an update handled already or taken in by this process."""
        if not isinstance(update, Update):
            return
        uid = update.update_id
        try:
            done = self.ledger.inbox.is_done(uid)
        except LedgerError as exc:  # unknown: handle it (handling is idempotent) rather than drop it
            log.warning("event=inbox_check_failed update=%s error=%r", uid, str(exc)[:200])
            done = False
        if uid in self._claimed or done:
            log.info("event=duplicate_update update=%s", uid)
            raise ApplicationHandlerStop
        if len(self._claimed) >= _CLAIMED_MAX:  # ids grow: the oldest half are long confirmed
            self._claimed = set(sorted(self._claimed)[_CLAIMED_MAX // 2 :])
        self._claimed.add(uid)

    async def finish(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Last handler group: the update was handled unless a background intake still runs for it."""
        if isinstance(update, Update) and update.update_id not in self._deferred:
            self._mark_done(update.update_id)
            self._finished += 1
            if self._finished % PRUNE_EVERY == 0:  # a bot that runs for weeks keeps only a day of ids
                try:
                    self.ledger.inbox.prune(int(self.clock() * 1000) - KEEP_DONE_MS)
                except LedgerError as exc:
                    log.warning("event=inbox_prune_failed error=%r", str(exc)[:200])

    async def replay(self, app: Any) -> int:
        """Hand every stored update not done to `app` again (start-up, before polling); prune old rows."""
        pruned = self.ledger.inbox.prune(int(self.clock() * 1000) - KEEP_DONE_MS)
        entries = self.ledger.inbox.pending()
        for entry in entries:
            try:
                update = Update.de_json(json.loads(entry.body), app.bot)
            except Exception as exc:  # noqa: BLE001 - PTB's parsers raise AttributeError, KeyError, TypeError...
                log.error("event=inbox_unreadable update=%s error=%r", entry.update_id, str(exc)[:200])
                self._mark_done(entry.update_id)
                continue
            log.info(
                "event=inbox_replay update=%s age_s=%d",
                entry.update_id,
                max(0, int(self.clock() * 1000) - entry.received_at) // 1000,
            )
            await app.update_queue.put(update)
        log.info("event=inbox_resume updates=%d pruned=%d", len(entries), pruned)
        return len(entries)


class InboxBot(ExtBot):
    """PTB's bot whose getUpdates stores what it fetched in the inbox before returning it."""

    _inbox: UpdateInbox | None = None
    _crash_hook: Callable[[str], None] | None = None

    def keep_updates_in(self, inbox: UpdateInbox, crash_hook: Callable[[str], None] | None = None) -> None:
        """Store every fetched update in `inbox` from now on (`crash_hook("after_inbox")` after each store)."""
        self._inbox = inbox
        self._crash_hook = crash_hook

    async def get_updates(self, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        updates = await super().get_updates(*args, **kwargs)
        if updates and self._inbox is not None:
            # If this raises, PTB logs it and asks again with the same offset: Telegram still has them.
            try:
                self._inbox.keep(updates)
            except Exception as exc:  # LedgerBusy, or a disk error: asked again, but not in a hot loop
                event = "inbox_busy" if isinstance(exc, LedgerBusy) else "inbox_store_failed"
                log.warning("event=%s updates=%d error=%r", event, len(updates), str(exc)[:200])
                await asyncio.sleep(BUSY_PAUSE_S)  # PTB's loop asks again at once after a non-Telegram error
                raise
            if self._crash_hook is not None:
                self._crash_hook("after_inbox")
        return updates
