"""Fixtures for the bot's tests: the real bot (python-telegram-bot over HTTP) on a whole devnet.

    async def test_x(botnet):
        user = botnet.new_user()               # a fresh Telegram user, credited 1 RLC by an admin grant
        botnet.tg.inject_photo(user, png)      # through the Telegram stand-in
        msg = await botnet.result_for(user)    # the bot's photo reply

`devnet_module` is one devnet per test module (anvil from the PoCo snapshot, market, gateway, workerpool
running the small test app, Telegram stand-in); `botnet` starts a bot with fresh books on it for each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from bot.app import Bot, build_bot
from bot.settings import Settings
from devnet.telegram import TelegramStandIn, TgUser
from devnet.up import Devnet, DevnetConfig

ADMIN = TgUser(id=900_001, first_name="Ada", username="admin")
_user_ids = itertools.count(500_001)


def photo_bytes(size: tuple[int, int] = (320, 240), fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A small real picture (a gradient with a disc), different for each seed."""
    img = Image.new("RGB", size, (30 + seed % 200, 90, 160))
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill=(230, 200, 40))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def phone_photo(
    width: int = 4000,
    height: int = 3000,
    orientation: int | None = None,
    quality: int = 92,
    seed: int = 0,
    fmt: str = "JPEG",
    noise: float = 12.0,
) -> bytes:
    """A picture the size a phone takes: smooth light, a few dozen shapes and sensor-like noise, so it does
    not compress to nothing (a 3000x3000 JPEG at quality 92 is about 3.5 MB, 4000x3000 about 4.5 MB).

    `orientation` is the EXIF Orientation tag (1..8; 6 = the viewer turns it 90 degrees clockwise, so a
    stored 4000x3000 picture shows as 3000x4000). `fmt` "PNG" gives a lossless file (900x700: ~1.4 MB).
    """
    import numpy as np
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = np.stack(
        [
            120 + 80 * np.sin(x / width * 3 + seed),
            100 + 60 * np.cos(y / height * 4),
            140 + 50 * np.sin((x + y) / (width + height) * 5),
        ],
        axis=-1,
    )
    img = Image.fromarray(np.clip(light, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        side = int(rng.integers(max(2, short // 20), max(3, short // 4)))
        box = (x0, y0, x0 + side, y0 + int(side * rng.uniform(0.5, 1.5)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    grain = rng.normal(0.0, noise, (height, width, 3)).astype(np.int16)
    img = Image.fromarray(np.clip(np.asarray(img).astype(np.int16) + grain, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if fmt.upper() == "JPEG":
        exif = Image.Exif()
        exif[0x010F] = "segbot test camera"  # Make
        if orientation is not None:
            exif[0x0112] = orientation
        img.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    else:
        img.save(out, fmt)
    return out.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def devnet_module(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Devnet]:
    """A devnet (test app, 2 workers) shared by the tests of one module."""
    data = tmp_path_factory.mktemp("devnet")
    async with Devnet(DevnetConfig(data_dir=data, app="test", persist_chain=False, workers=2)) as net:
        yield net


def bot_settings(net: Devnet, books: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k.lower(): v for k, v in net.env.items()}
    values.update(
        db_path=books / "books.db",
        data_dir=books,
        admin_ids=str(ADMIN.id),
        poll_interval_s=0.2,
        match_timeout_s=20,
        fee_nrlc=10_000_000,
        log_level="DEBUG",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # a pydantic-settings option


@dataclass
class BotNet:
    """A running bot on a devnet, with helpers to talk to it as users do."""

    net: Devnet
    bot: Bot
    settings: Settings
    books: Path
    users: list[TgUser] = field(default_factory=list)

    @property
    def tg(self) -> TelegramStandIn:
        return self.net.telegram

    @property
    def ledger(self) -> Any:
        return self.bot.services.ledger

    def new_user(self, credit_nrlc: int = 10**9) -> TgUser:
        user = TgUser(id=next(_user_ids), first_name="User", username=None)
        if credit_nrlc:
            self.ledger.grant(f"test-grant-{user.id}", user.id, credit_nrlc, memo="test credit")
        self.users.append(user)
        return user

    def sent(self, user: TgUser) -> list[Any]:
        return [m for m in self.tg.sent(user.id) if m.from_bot]

    async def wait_for_text(self, user: TgUser, needle: str, timeout: float = 20.0) -> Any:
        """The first bot message to `user` whose current text contains `needle`."""

        def find() -> Any:
            return next((m for m in self.sent(user) if m.text and needle in m.text), None)

        await self.tg.wait_for(lambda: find() is not None, timeout=timeout)
        return find()

    async def result_for(self, user: TgUser, timeout: float = 60.0) -> Any:
        def find() -> Any:
            return next((m for m in self.sent(user) if m.kind in ("photo", "document") and m.data), None)

        await self.tg.wait_for(lambda: find() is not None, timeout=timeout)
        return find()

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until every job is finished and the status edits are sent."""
        assert await self.bot.services.pipeline.idle(timeout), "jobs still running"
        await self.bot.services.board.drain()


async def start_botnet(
    net: Devnet,
    books: Path,
    *,
    crash_at: str | None = None,
    fast_retries: bool = False,
    polling: bool = True,
    **overrides: Any,
) -> BotNet:
    """Start a bot on `net` with the books in `books`; `fast_retries` shortens the step retry delays."""
    settings = bot_settings(net, books, **overrides)
    bot = build_bot(settings, crash_at=crash_at)
    if fast_retries:
        fast = replace(bot.services.pipeline.retry, base_delay_s=0.2, max_delay_s=0.2)
        bot.services.pipeline.retry = bot.services.pipeline.endings.retry = fast
        bot.services.pipeline.result_attempts = 3
    await bot.start(poll_timeout=1, polling=polling)
    return BotNet(net=net, bot=bot, settings=settings, books=books)


@contextlib.asynccontextmanager
async def bot_on(net: Devnet, books: Path, **overrides: Any) -> AsyncIterator[BotNet]:
    """A bot with its own settings for one test (the `botnet` fixture's bot must not run at the same time)."""
    net.pool.faults.clear()
    running = await start_botnet(net, books, **overrides)
    try:
        yield running
    finally:
        await running.bot.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def botnet(devnet_module: Devnet, tmp_path: Path) -> AsyncIterator[BotNet]:
    """A bot with fresh books, started on the module's devnet; stopped after the test."""
    devnet_module.pool.faults.clear()
    running = await start_botnet(devnet_module, tmp_path)
    try:
        yield running
    finally:
        await running.bot.stop()
        await asyncio.sleep(0)
