"""Fixtures for tests that talk to the Telegram Bot API stand-in with the real python-telegram-bot.

`tg` is a started stand-in with one bot (TOKEN, @segbot_test) and Telegram's rate limits on; `alice` is a
user; `ptb_app(tg)` builds an Application pointed at the stand-in and `polling(app)` runs it by hand
(PTB's run_polling owns the event loop, which pytest-asyncio owns here).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telegram.ext import Application, ApplicationBuilder

from devnet.telegram import RateLimits, TelegramStandIn, TgUser

TOKEN = "123456789:AAE-test-token-for-the-stand-in-000"
BOT_USERNAME = "segbot_test"


@pytest.fixture
async def tg() -> AsyncIterator[TelegramStandIn]:
    """A started stand-in with one bot and Telegram's rate limits."""
    async with TelegramStandIn() as standin:
        standin.add_bot(TOKEN, BOT_USERNAME)
        yield standin


@pytest.fixture
async def tg_unlimited() -> AsyncIterator[TelegramStandIn]:
    """A started stand-in with one bot and no rate limits (for tests that send a lot)."""
    async with TelegramStandIn(rate_limits=RateLimits.off()) as standin:
        standin.add_bot(TOKEN, BOT_USERNAME)
        yield standin


@pytest.fixture
def alice() -> TgUser:
    return TgUser(id=4242, first_name="Alice", username="alice")


def ptb_app(tg: TelegramStandIn, token: str = TOKEN, **builder_options: Any) -> Application:  # type: ignore[type-arg]  # PTB's Application has six type parameters; tests need none
    """A PTB Application whose Bot talks to the stand-in; `builder_options` name builder methods."""
    builder = ApplicationBuilder().token(token).base_url(tg.bot_base_url).base_file_url(tg.file_base_url)
    for name, value in builder_options.items():
        builder = getattr(builder, name)(value)
    return builder.build()


@contextlib.asynccontextmanager
async def polling(app: Application, timeout: int = 10) -> AsyncIterator[Application]:  # type: ignore[type-arg]  # as ptb_app
    """Run `app` with long polling for the duration of the block, then stop it cleanly."""
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0.0, timeout=timeout)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()
