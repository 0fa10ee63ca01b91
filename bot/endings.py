"""Telling users how their jobs ended (refunded, or held for an admin), with the telling recorded in the books.

`Endings` is one part of `bot.pipeline.Pipeline` (it holds one): the pipeline changes a job's state and
money, then calls `endings.tell_soon(job)`; the message goes out in a task of its own (a reply to
the user's picture, so that they get a notification, unlike the status message's edits), and only once
Telegram has taken it do the books record the event ("told", "REFUNDED:<job>") or ("told",
"NEEDS_ADMIN:<job>:<hold time ms>"). At least once: killed in between, the next start tells again.

At start-up `untold()` lists the endings not told yet, from the time the books first recorded telling on
(`tell.since` in the kv table): books of an older version told their endings by status edits only, and
their users are not told twice.

Never here: a change of a job's state or money.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telegram.error import BadRequest, ChatMigrated, Forbidden, TelegramError

from bot import texts
from bot.busy import when_free
from iexec.retry import RetryPolicy
from ledger import Job, JobState, Ledger, RefundReason

log = logging.getLogger(__name__)

#: Telegram's answers that no retry changes (the request itself is refused).
PERMANENT_TELEGRAM = (BadRequest, Forbidden, ChatMigrated)
TELL_SINCE_KEY = "tell.since"
#: From when the books record that admins were told of a hold ("admin_told" events); holds before it were
#: announced by an older version and are not announced again.
ADMIN_TOLD_SINCE_KEY = "admin_told.since"


@dataclass(frozen=True)
class Refund:
    """Why a job is refunded (a `RefundReason`: mypy refuses a bare string) and details for the user."""

    reason: RefundReason
    detail: str = ""
    operator_pays: bool = False

    def text(self) -> str:
        """The reason in the bot's HTML: the detail comes from outside (an app's error.txt, a gateway's
        answer) and is escaped, so that Telegram shows it as it is and it can never add a tag or a link."""
        return texts.REFUND_REASONS[self.reason].format(detail=html.escape(self.detail or "unknown error"))

    @property
    def error(self) -> str:
        """What the books keep (`jobs.error`): `reason: detail`, read back by `from_error`."""
        return self.reason.error(self.detail)

    @classmethod
    def from_error(cls, error: str | None) -> Refund:
        """The refund a job's stored `error` tells; an error of no known reason reads as an admin's refund."""
        reason, detail = RefundReason.parse(error)
        return cls(reason, detail) if reason is not None else cls(RefundReason.ADMIN)


class Endings:
    """Owns telling users how their jobs ended: the ending's message, the task that sends it (one per ending,
    `tasks`) and the books' record that Telegram took it. It never changes a job."""

    def __init__(
        self,
        ledger: Ledger,
        bot: Any,
        board: Any,
        *,
        clock: Callable[[], float],
        retry: RetryPolicy,
        crash_point: Callable[[str], None],
    ) -> None:
        self.ledger = ledger
        self.bot = bot
        self.board = board
        self.clock = clock
        #: the backoff between tries of a telling Telegram did not take (`wait_s` only: it never gives up)
        self.retry = retry
        self.crash_point = crash_point
        #: The telling tasks in flight, by "tell:" + the ending's told key.
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        """Cancel the tellings in flight (they are told again at the next start: not recorded yet)."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()

    def idle(self) -> bool:
        """True when no telling is in flight."""
        return all(t.done() for t in self.tasks.values())

    def untold(self) -> list[Job]:
        """Refunded and held jobs whose user was not told yet (since telling is recorded in the books)."""
        since = self._since(TELL_SINCE_KEY)  # books from before: their endings were told by status edits
        refunded = self.ledger.untold_jobs("told", [JobState.REFUNDED], since_ms=int(since))
        held = [
            j
            for j in self.ledger.jobs_in_states(JobState.NEEDS_ADMIN)
            if j.updated_at >= int(since) and not self.ledger.seen_event("told", self.told_key(j))
        ]
        return refunded + held

    def unannounced_holds(self) -> list[Job]:
        """Held jobs whose admins were not told yet (killed between the hold and the admins' message)."""
        since = int(self._since(ADMIN_TOLD_SINCE_KEY))
        return [
            j
            for j in self.ledger.jobs_in_states(JobState.NEEDS_ADMIN)
            if j.updated_at >= since and not self.ledger.seen_event("admin_told", self.told_key(j))
        ]

    def _since(self, key: str) -> str:
        """The time (ms) kept under `key`, set to now the first time it is asked for."""
        since = self.ledger.get_value(key)
        if since is None:
            since = str(int(self.clock() * 1000))
            self.ledger.set_value(key, since)
        return since

    @staticmethod
    def told_key(job: Job) -> str:
        """The "told" event of a job's ending: one per refund, one per hold (a job may be held again)."""
        if job.state is JobState.NEEDS_ADMIN:
            return f"NEEDS_ADMIN:{job.id}:{job.state_times.get('NEEDS_ADMIN', job.updated_at)}"
        return f"{job.state.value}:{job.id}"

    def ending_text(self, job: Job) -> str:
        short = job.id[-8:]
        if job.state is JobState.REFUNDED:
            return texts.REFUND_NOTICE.format(short=short, reason=Refund.from_error(job.error).text())
        return texts.HELD.format(short=short, money=self.held_money(job))

    def held_money(self, job: Job) -> str:
        charged = self.ledger.reservation_state(job.reservation) == "posted"
        return texts.HELD_CHARGED if charged else texts.HELD_RESERVED

    def tell_soon(self, job: Job | None) -> None:
        """Tell the user how their job ended, in a task of its own (a driver may be ending meanwhile)."""
        if job is None or job.state not in (JobState.REFUNDED, JobState.NEEDS_ADMIN):
            return
        key = "tell:" + self.told_key(job)
        task = self.tasks.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._tell(job), name=key)
            self.tasks[key] = task
            task.add_done_callback(lambda t: self.tasks.pop(key, None) if self.tasks.get(key) is t else None)

    async def _tell(self, job: Job) -> None:
        """Send the ending's message, then record in the books that it was sent (at least once).

        A temporary failure is retried with backoff; a refusal (the user blocked the bot, the chat is
        gone) is recorded too: nobody can be told, and trying again would not change it."""
        key = self.told_key(job)
        if await when_free(self.ledger.seen_event, "told", key):
            return
        text = await when_free(self.ending_text, job)
        failures = 0
        parse_mode: str | None = "HTML"
        while True:
            try:
                await self.bot.send_message(
                    chat_id=job.chat_id,
                    text=text,
                    parse_mode=parse_mode,
                    reply_to_message_id=job.user_message_id,
                    allow_sending_without_reply=True,
                )
                self.board.touch(job.chat_id)
                outcome = "sent" if parse_mode else "sent as plain text"
                break
            except BadRequest as exc:
                if parse_mode and "can't parse entities" in str(exc).lower():
                    # A text Telegram cannot read as HTML (a bug of ours): the user must still be told.
                    log.warning("event=tell_plain job=%s error=%r", job.id, str(exc)[:200])
                    text, parse_mode = texts.plain(text), None
                    continue
                outcome = f"refused: {exc}"[:300]
                break
            except PERMANENT_TELEGRAM as exc:
                outcome = f"refused: {exc}"[:300]
                break
            except TelegramError as exc:
                failures += 1
                delay = self.retry.wait_s(failures)
                log.warning("event=tell_retry job=%s error=%r delay=%s", job.id, str(exc)[:200], delay)
                await asyncio.sleep(delay)
        self.crash_point("after_tell")
        await when_free(self.ledger.record_event, "told", key, {"outcome": outcome})
        log.info("event=told job=%s state=%s outcome=%r", job.id, job.state.value, outcome)
