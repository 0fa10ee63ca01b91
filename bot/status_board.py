"""One status message per job, edited through its stages without tripping Telegram's per-chat limit.

Telegram allows about one message a second per chat. Stage changes can come faster than that (a job that
matches and starts within a second, or several jobs of one user), so edits are coalesced: each chat has a
queue of "latest text per message", flushed at most once per `min_interval`; an edit superseded before it is
sent is never sent. "Message is not modified" is not an error; a message that vanished is forgotten. When
Telegram answers RetryAfter, that chat sends nothing until the wait is over, then the latest text of the message
(the refused one if nothing newer came); other chats go on.
The requests themselves are paced by `bot.rate_limit.ChatRateLimiter`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

log = logging.getLogger(__name__)


@dataclass
class _ChatQueue:
    latest: dict[int, tuple[str, Any]] = field(default_factory=dict)
    last_sent: float = 0.0
    not_before: float = 0.0  # Telegram said RetryAfter: nothing goes to this chat before this time
    task: asyncio.Task[None] | None = None


class StatusBoard:
    """Coalesces edits of status messages per chat."""

    def __init__(
        self,
        bot: Any,
        min_interval: float = 1.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bot = bot
        self.min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._chats: dict[int, _ChatQueue] = {}
        self.edits_sent = 0

    def touch(self, chat_id: int) -> None:
        """Note that a message was just sent to `chat_id` (it counts towards the same limit)."""
        self._chats.setdefault(chat_id, _ChatQueue()).last_sent = self._clock()

    def show(self, chat_id: int, message_id: int, text: str, reply_markup: Any = None) -> None:
        """Make `message_id` say `text` soon; later calls for the same message replace earlier ones."""
        queue = self._chats.setdefault(chat_id, _ChatQueue())
        queue.latest[message_id] = (text, reply_markup)
        if queue.task is None or queue.task.done():
            queue.task = asyncio.get_running_loop().create_task(self._flush(chat_id, queue))

    async def show_now(self, chat_id: int, message_id: int, text: str, reply_markup: Any = None) -> bool:
        """Edit `message_id` to `text` and return once Telegram has it (paced like `show`).

        For a text that ends a conversation, such as an intake refusal: the update counts as handled only
        after the user can read why, so a crash can never leave "Got it. Checking your picture…" for ever.
        Returns True when Telegram took the edit or refused it for good (BadRequest, Forbidden: trying again
        cannot help); False when it still failed after a few tries (Telegram unreachable)."""
        queue = self._chats.setdefault(chat_id, _ChatQueue())
        queue.latest.pop(message_id, None)  # this text supersedes any pending one for the same message
        for delay in (1.0, 2.0, 5.0, None):
            await self._wait_turn(queue)
            try:
                await self.bot.edit_message_text(
                    chat_id=chat_id, message_id=message_id, text=text, parse_mode="HTML", reply_markup=reply_markup
                )
                self.edits_sent += 1
                return True
            except BadRequest as exc:
                if "not modified" in str(exc).lower():
                    return True
                log.info("event=status_edit_refused chat=%s message=%s error=%r", chat_id, message_id, str(exc))
                return True
            except Forbidden:
                log.info("event=status_edit_forbidden chat=%s", chat_id)
                return True
            except RetryAfter as exc:
                self._retry_after(chat_id, queue, exc)
                if delay is None:
                    return False
            except TelegramError as exc:
                log.warning(
                    "event=status_edit_failed chat=%s message=%s error=%r retry_in=%s",
                    chat_id,
                    message_id,
                    str(exc),
                    delay,
                )
                if delay is None:
                    return False
                await self._sleep(delay)
        return False

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every pending edit was sent (used at shutdown and in tests)."""
        tasks = [q.task for q in self._chats.values() if q.task and not q.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _flush(self, chat_id: int, queue: _ChatQueue) -> None:
        while queue.latest:
            await self._wait_turn(queue)
            message_id, (text, markup) = next(iter(queue.latest.items()))
            del queue.latest[message_id]
            if await self._edit(chat_id, message_id, text, markup, queue) is False:
                queue.latest.setdefault(message_id, (text, markup))  # a newer text for it, if any, wins

    async def _wait_turn(self, queue: _ChatQueue) -> None:
        """Sleep until the chat may be sent to again (pacing window and any RetryAfter), then take the turn."""
        wait = max(queue.last_sent + self.min_interval, queue.not_before) - self._clock()
        if wait > 0:
            await self._sleep(wait)
        queue.last_sent = self._clock()

    def _retry_after(self, chat_id: int, queue: _ChatQueue, exc: RetryAfter) -> None:
        after = exc.retry_after
        seconds = after.total_seconds() if isinstance(after, dt.timedelta) else float(after)
        queue.not_before = max(queue.not_before, self._clock() + seconds)
        log.warning("event=status_edit_retry_after chat=%s retry_in=%s", chat_id, seconds)

    async def _edit(self, chat_id: int, message_id: int, text: str, markup: Any, queue: _ChatQueue) -> bool:
        """Send one edit; False when Telegram said RetryAfter (the text should go again once the wait is over)."""
        try:
            await self.bot.edit_message_text(
                chat_id=chat_id, message_id=message_id, text=text, parse_mode="HTML", reply_markup=markup
            )
            self.edits_sent += 1
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                log.info("event=status_edit_refused chat=%s message=%s error=%r", chat_id, message_id, str(exc))
        except Forbidden:
            log.info("event=status_edit_forbidden chat=%s", chat_id)
        except RetryAfter as exc:
            self._retry_after(chat_id, queue, exc)
            return False
        except TelegramError as exc:
            log.warning("event=status_edit_failed chat=%s error=%r", chat_id, str(exc))
        return True
