"""Telegram's rate limits on the bot's requests: PTB's `AIORateLimiter` plus Telegram's per-private-chat limit.

`ChatRateLimiter` is given to the PTB bot (`rate_limiter=`) by `bot.app.build_bot`; every request passes
through it. The coalescing of status-message edits is the status board's job (`bot.status_board`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from telegram.ext import AIORateLimiter


class ChatRateLimiter(AIORateLimiter):
    """PTB's limiter (overall and per-group rates, RetryAfter retries) plus Telegram's per-private-chat limit.

    PTB's `AIORateLimiter` leaves private chats unlimited; Telegram answers 429 beyond about one message a
    second per chat (a short burst of a few is tolerated). Each private chat gets a token bucket of `burst`
    messages refilled at `per_second`, applied to what Telegram counts: sends and edits, not chat actions.
    Both are kept below Telegram's (burst 2 against about 3, 0.9/s against 1/s): the margin absorbs the
    difference between when a request leaves here and when Telegram counts it.
    """

    def __init__(self, *, per_second: float = 0.9, burst: int = 2, overall_per_second: int = 28, **kwargs: Any) -> None:
        # PTB's overall limiter is a leaky bucket that lets a full burst through on top of its rate (up to
        # twice the rate within one second); Telegram counts a sliding second, so this one does too.
        super().__init__(overall_max_rate=0, overall_time_period=0, **kwargs)
        self.per_second = per_second
        self.burst = burst
        self.overall_per_second = overall_per_second
        self._buckets: dict[int, tuple[float, float]] = {}
        self._window: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # chat -> (lock, users)

    async def _take_overall(self, limit: int) -> None:
        """Wait for a slot: requests in flight plus those finished within the last second stay under the rate.

        A request counts from its start until a second after its answer, so requests that queue in the HTTP
        client and reach Telegram late never bunch up over the limit there.
        """
        span = 1.05  # a little over a second: the two clocks never agree exactly
        while True:
            now = time.monotonic()
            while self._window and self._window[0] <= now - span:
                self._window.popleft()
            if len(self._window) + self._in_flight < limit:
                self._in_flight += 1
                return
            wait = self._window[0] + span - now if self._window else 0.02
            await asyncio.sleep(max(wait, 0.005))

    def _release_overall(self) -> None:
        self._in_flight -= 1
        self._window.append(time.monotonic())

    @staticmethod
    def _counted(endpoint: str) -> bool:
        name = endpoint.lower()
        return (name.startswith("send") and name != "sendchataction") or name.startswith("edit")

    def _tokens(self, chat_id: int, now: float) -> float:
        tokens, at = self._buckets.get(chat_id, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_second)

    async def _wait_token(self, chat_id: int) -> None:
        """Wait until the chat's bucket holds a token (it is taken when Telegram has answered)."""
        while True:
            tokens = self._tokens(chat_id, time.monotonic())
            if tokens >= 1.0:
                return
            await asyncio.sleep((1.0 - tokens) / self.per_second)

    def _consume(self, chat_id: int) -> None:
        # Counted when the answer came back: the request reached Telegram at that time at the latest, so
        # the bucket here never holds more than Telegram's (a request delayed in the HTTP client cannot
        # bunch up with the next ones there), and one request per chat is in flight at a time.
        now = time.monotonic()
        self._buckets[chat_id] = (max(0.0, self._tokens(chat_id, now) - 1.0), now)
        if len(self._buckets) > 4096:  # forget chats whose bucket is full again
            full = [c for c in self._buckets if self._tokens(c, now) >= self.burst and c not in self._locks]
            for c in full[:2048]:
                self._buckets.pop(c, None)

    async def process_request(
        self,
        callback: Any,
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        chat_id = data.get("chat_id")
        try:
            chat = int(chat_id) if chat_id is not None else 0
        except (TypeError, ValueError):
            chat = 0
        if chat_id is None or not self._counted(endpoint):
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
        if chat <= 0:
            return await self._send(callback, args, kwargs, endpoint, data, rate_limit_args)
        # One lock per chat while anyone uses it: a lock released to a waiter still reads "unlocked" until
        # the waiter runs, so it is dropped only when its last user is done (else a second lock would
        # let two requests of one chat through at once).
        lock, users = self._locks.get(chat, (asyncio.Lock(), 0))
        self._locks[chat] = (lock, users + 1)
        try:
            async with lock:
                await self._wait_token(chat)
                try:
                    return await self._send(callback, args, kwargs, endpoint, data, rate_limit_args)
                finally:
                    self._consume(chat)
        finally:
            lock, users = self._locks[chat]
            if users <= 1:
                del self._locks[chat]
            else:
                self._locks[chat] = (lock, users - 1)

    async def _send(
        self,
        callback: Any,
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        # Edits of status messages leave room for new replies (acknowledgements) when the bot is busy.
        edit = endpoint.lower().startswith("edit")
        await self._take_overall(self.overall_per_second - (8 if edit else 0))
        try:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
        finally:
            self._release_overall()
