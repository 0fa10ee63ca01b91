"""The bot's rate limiter against the Telegram stand-in enforcing Telegram's flood limits: never a 429.

Many replies and status edits to the same private chats at once (what a user with several jobs finishing
together causes), plus a spread over many chats: every message arrives, none is refused.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.rate_limit import ChatRateLimiter
from devnet.telegram import TelegramStandIn, TgChat, TgUser
from tests.fixtures_telegram import ptb_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.slow  # over ~2 s
async def test_bursts_to_one_chat_and_to_many_chats_get_no_429(tg: TelegramStandIn) -> None:
    busy = [TgUser(id=61_000 + i, first_name="Busy") for i in range(3)]
    many = [TgUser(id=62_000 + i, first_name="Many") for i in range(60)]
    for user in busy + many:
        tg.add_chat(TgChat.private(user))
    app = ptb_app(tg, rate_limiter=ChatRateLimiter(max_retries=0))
    async with app:
        first = {u.id: await app.bot.send_message(u.id, "status: 0") for u in busy}

        async def chatty(user: TgUser) -> None:
            jobs = []
            for k in range(1, 7):
                jobs.append(
                    app.bot.edit_message_text(f"status: {k}", chat_id=user.id, message_id=first[user.id].message_id)
                )
                jobs.append(app.bot.send_message(user.id, f"reply {k}"))
            await asyncio.gather(*jobs)

        started = time.monotonic()
        await asyncio.gather(*(chatty(u) for u in busy), *(app.bot.send_message(u.id, "notice") for u in many))
        took = time.monotonic() - started
    assert tg.rate_limited == 0
    for user in busy:
        assert len([m for m in tg.sent(user.id) if m.from_bot]) == 7
    assert all(len(tg.sent(u.id)) == 1 for u in many)
    # 13 messages to one chat at about one a second after a burst of 3: paced, not refused
    assert took > 8
