"""Webhook mode and its secret, and the bot token kept out of logs, the books and every non-Telegram request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from pathlib import Path

import aiohttp
import pytest

from bot.__main__ import main as bot_main
from bot.logs import install_logging
from tests.fixtures_bot import bot_on, bot_settings, photo_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_webhook_mode_refused_without_a_secret(devnet_module, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        bot_settings(devnet_module, tmp_path, mode="webhook", webhook_url="https://bot.example.org/telegram")
    env = tmp_path / "bot.env"
    env.write_text("MODE=webhook\nWEBHOOK_URL=https://bot.example.org/telegram\nTELEGRAM_TOKEN=1:x\n")
    assert bot_main(["--env-file", str(env)]) == 2
    assert "WEBHOOK_SECRET" in capsys.readouterr().err


async def test_webhook_updates_with_a_wrong_secret_are_ignored(devnet_module, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram"
    async with bot_on(
        devnet_module,
        tmp_path,
        polling=False,
        mode="webhook",
        webhook_secret="hook-s3cret-42",
        webhook_port=port,
        webhook_url=url,
    ) as bn:
        await bn.bot.start_webhook()
        hook = bn.tg.webhook()
        assert hook is not None and hook.url == url and hook.secret_token == "hook-s3cret-42"
        user = bn.new_user(credit_nrlc=3 * 10**9)
        bn.tg.inject_command(user, "/balance")  # delivered by the stand-in with the right secret
        await bn.wait_for_text(user, "Available: 3 RLC")

        forged = {
            "update_id": 77_000_001,
            "message": {
                "message_id": 999,
                "date": 0,
                "chat": {"id": user.id, "type": "private"},
                "from": user.to_api(),
                "text": "/start",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
            },
        }
        async with aiohttp.ClientSession() as http:
            for headers in ({"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {}):
                async with http.post(url, json=forged, headers=headers) as resp:
                    assert resp.status == 403
        await bn.bot.services.board.drain()
        assert not any("Hello" in (m.text or "") for m in bn.sent(user))
    bn.tg.bot().webhook = None  # the stand-in forgets the hook for the next bots (polling)


async def test_the_token_never_leaves_telegram(devnet_module, tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    async with bot_on(devnet_module, tmp_path) as bn:
        token = bn.settings.telegram_token.get_secret_value()
        install_logging("DEBUG", secrets=[token], stream=stream)
        try:
            user = bn.new_user()
            bn.tg.inject_photo(user, photo_bytes(seed=70))
            await bn.result_for(user)
            bn.tg.inject_document(user, b"not an image", "x.jpg", "image/jpeg")
            await bn.wait_for_text(user, "Nothing was charged")
            await bn.settle()
            logging.getLogger("probe").info("url=%s/bot%s/getMe", bn.tg.url, token)
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in saved[0]:
                root.addHandler(handler)
            root.setLevel(saved[1])
        [job] = [j for j in bn.ledger.user_jobs(user.id) if j.deal_id]
        order = json.dumps(job.request_order)
        published = bn.bot.inputs.base_url
    logs = stream.getvalue()
    assert "event=delivered" in logs and "bot***/getMe" in logs
    assert token not in logs and token.split(":")[1] not in logs
    for path in tmp_path.glob("books.db*"):
        assert token.encode() not in path.read_bytes(), path.name
        assert token.split(":")[1].encode() not in path.read_bytes(), path.name
    assert token not in order and published in order  # the worker gets our own copy's URL, no token
    telegram_host = bn.tg.url
    assert all(u.startswith(telegram_host) for u in bn.tg.request_urls)
    for name in ("RPC_URL", "MARKET_URL", "IPFS_GATEWAY"):
        assert token not in devnet_module.env[name]


async def _raw_post(port: int, head: dict[str, str], body: bytes = b"", timeout: float = 10.0) -> int:
    """POST with the given headers (and maybe no body at all yet); returns the status the bot answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = ["POST /telegram HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in head.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_webhook_checks_the_secret_and_the_size_before_reading_a_body(devnet_module, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram"
    async with bot_on(
        devnet_module,
        tmp_path,
        polling=False,
        mode="webhook",
        webhook_secret="hook-s3cret-42",
        webhook_port=port,
        webhook_url=url,
    ) as bn:
        await bn.bot.start_webhook()
        huge = {"Content-Type": "application/json", "Content-Length": str(95 * 1024 * 1024)}
        # The 95 MB are never sent: an answer proves the bot did not wait to read them.
        assert await _raw_post(port, {**huge, "X-Telegram-Bot-Api-Secret-Token": "wrong"}) == 403
        assert await _raw_post(port, huge) == 403
        assert await _raw_post(port, {**huge, "X-Telegram-Bot-Api-Secret-Token": "hook-s3cret-42"}) == 413
        chunk = b"x" * (256 * 1024)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
        assert (
            await _raw_post(
                port,
                {
                    "Content-Type": "application/json",
                    "Transfer-Encoding": "chunked",
                    "X-Telegram-Bot-Api-Secret-Token": "hook-s3cret-42",
                },
                chunked,
            )
            == 413
        )
        # With the secret, a body we cannot use is answered 200: Telegram would retry a 4xx and hold the
        # updates after it back. One with an int update_id is stored as handled (a redelivery is ignored).
        chat = {"id": 9, "type": "private"}
        escaped = {
            "update_id": 900_000_002,
            "message": {"message_id": 1, "date": 0, "chat": chat, "text": "\u2028" * 200_000},
        }  # 600 KB; 1.2 M chars as to_json writes it
        for junk in (
            b"[]",
            b'{"update_id": "1"}',
            b'{"update_id": 900000001, "message": "x"}',
            b"\xff",
            json.dumps(escaped, ensure_ascii=False).encode(),
        ):
            assert (
                await _raw_post(
                    port,
                    {
                        "Content-Type": "application/json",
                        "Content-Length": str(len(junk)),
                        "X-Telegram-Bot-Api-Secret-Token": "hook-s3cret-42",
                    },
                    junk,
                )
                == 200
            )
        assert bn.ledger.inbox.is_done(900_000_001) and bn.ledger.inbox.is_done(900_000_002)

        user = bn.new_user()  # the real path: Telegram (the stand-in) posts with the secret
        msg = bn.tg.inject_photo(user, photo_bytes(seed=71))
        result = await bn.result_for(user)
        assert result.reply_to == msg["message_id"] and "Charged" in (result.caption or "")
        await bn.settle()
        assert bn.ledger.inbox.pending() == []  # kept before the 200, marked done once the job existed
        assert len(bn.ledger.user_jobs(user.id)) == 1
    bn.tg.bot().webhook = None  # the stand-in forgets the hook for the next bots (polling)
