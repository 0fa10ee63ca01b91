"""Benchmark of the bot's Telegram side on a devnet: acknowledgement latency and send throughput.

    .venv/bin/python bench/bot.py

1. 50 users send a photo at the same moment; latency = photo injected -> the bot's first reply in that chat
   (the acknowledgement), median and p95 (target: median < 0.5 s). The bot runs as its own process
   (`python -m bot`, as in production), so the stand-in's work of taking in 50 photos does not hold up the
   bot's event loop.
2. The bot sends one message to each of 300 chats at once through its rate limiter; messages per second,
   and the number of 429 answers from the stand-in, which enforces Telegram's limits (target: >= 25/s, 0).
Last line: `RESULT ack_median_s=... ack_p95_s=... send_rate_per_s=... rate_limited=...`.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from bot.app import build_bot
from bot.settings import Settings
from devnet.telegram import TgChat, TgUser
from devnet.up import Devnet, DevnetConfig

USERS = 50
CHATS = 300


def _photo(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (seed % 256, 120, 60)).save(out, "JPEG")
    return out.getvalue()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ack_latency(net: Devnet, data: Path) -> list[float]:
    from tests.fixtures_e2e import E2E

    e2e = E2E(net, data)
    e2e.write_env(MAX_JOBS_PER_HOUR="100", LOG_LEVEL="WARNING")
    tg = net.telegram
    users = [e2e.new_user(10**9) for _ in range(USERS)]
    photos = [_photo(i) for i in range(USERS)]
    await e2e.start_bot()
    try:
        sent_at: dict[int, float] = {}
        for user, data_ in zip(users, photos, strict=True):
            tg.inject_photo(user, data_)
            sent_at[user.id] = time.monotonic()  # from when the photo is at "Telegram"
        first: dict[int, float] = {}

        def check() -> bool:
            now = time.monotonic()
            for user in users:
                if user.id not in first and any(m.from_bot for m in tg.sent(user.id)):
                    first[user.id] = now
            return len(first) == USERS

        await tg.wait_for(check, timeout=60)
        await e2e.wait_for(
            lambda: all(len(e2e.jobs(u)) == 1 and e2e.jobs(u)[0].state.is_terminal() for u in users), 180, "every job"
        )
        return [first[u] - sent_at[u] for u in (x.id for x in users)]
    finally:
        e2e.close()


async def send_rate(net: Devnet, bot: object) -> tuple[float, int]:
    tg = net.telegram
    chats = [TgUser(id=800_000 + i, first_name="Reader") for i in range(CHATS)]
    for user in chats:
        tg.add_chat(TgChat.private(user))
    await asyncio.sleep(1.5)  # let the window of the previous phase pass
    limited_before = tg.rate_limited
    started = time.monotonic()
    await asyncio.gather(*(bot.app.bot.send_message(chat_id=u.id, text="Service notice: all good.") for u in chats))
    took = time.monotonic() - started
    return CHATS / took, tg.rate_limited - limited_before


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        async with Devnet(DevnetConfig(data_dir=data / "devnet", app="test", persist_chain=False, workers=2)) as net:
            values = {k.lower(): v for k, v in net.env.items()}
            values.update(
                db_path=data / "books.db",
                data_dir=data / "bot",
                poll_interval_s=0.5,
                max_jobs_per_hour=100,
                log_level="WARNING",
            )
            settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]  # a pydantic-settings option
            latencies = await ack_latency(net, data / "acks")
            print(
                f"ack latency, {USERS} users at once: median {statistics.median(latencies):.3f} s, "
                f"p95 {_pct(latencies, 0.95):.3f} s, max {max(latencies):.3f} s"
            )
            bot = build_bot(settings)
            await bot.start(poll_timeout=1)
            try:
                rate, limited = await send_rate(net, bot)
                print(f"send rate to {CHATS} chats: {rate:.1f} messages/s, 429 answers: {limited}")
            finally:
                await bot.stop()
    print(
        f"RESULT ack_median_s={statistics.median(latencies):.3f} ack_p95_s={_pct(latencies, 0.95):.3f} "
        f"send_rate_per_s={rate:.1f} rate_limited={limited}"
    )


if __name__ == "__main__":
    asyncio.run(main())
