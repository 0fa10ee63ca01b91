"""The Telegram Bot API stand-in, driven by the real python-telegram-bot client over HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time

import aiohttp
import pytest
from PIL import Image
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, InvalidToken
from telegram.ext import (
    AIORateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from devnet.telegram import RateLimits, StandInTimeout, TelegramStandIn, TgChat, TgUser
from devnet.telegram_model import BadInjection
from tests.fakes import until
from tests.fixtures_telegram import BOT_USERNAME, TOKEN, polling, ptb_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def api(tg: TelegramStandIn, method: str, token: str = TOKEN, **fields: object) -> tuple[int, dict]:
    """A raw form-encoded Bot API call, as PTB makes them."""
    form = {k: str(v) for k, v in fields.items()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{tg.bot_base_url}{token}/{method}", data=form) as resp,
    ):
        return resp.status, await resp.json()


# --- PTB end to end ------------------------------------------------------------------------------------


async def test_text_message_reaches_handler_and_reply_is_stored(
    tg: TelegramStandIn, alice: TgUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        await update.message.reply_text(f"you said: <b>{update.message.text}</b>", parse_mode="HTML")

    app = ptb_app(tg)
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with polling(app):
        assert app.bot.username == BOT_USERNAME
        tg.inject_text(alice, "null")
        [reply] = await tg.wait_sent(alice.id)
    assert reply.text == "you said: null"  # rendered: tags gone, "null" stayed a string
    assert reply.raw_text == "you said: <b>null</b>" and reply.kind == "text"
    assert tg.pending_updates() == 0
    ours = [r for r in caplog.records if r.name.startswith(("devnet", "aiohttp"))]
    assert not any(TOKEN in r.getMessage() for r in ours)  # no access log with the token in the URL


async def test_command_carries_bot_command_entity(tg: TelegramStandIn, alice: TgUser) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None
        await context.bot.send_message(update.effective_chat.id, f"args={context.args}")

    app = ptb_app(tg)
    app.add_handler(CommandHandler("start", start))
    async with polling(app):
        await app.bot.set_my_commands([("start", "Begin"), ("help", "How it works")])
        tg.inject_command(alice, "start", "deep link")
        [reply] = await tg.wait_sent(alice.id)
    assert reply.text == "args=['deep', 'link']"
    assert [c["command"] for c in tg.commands()] == ["start", "help"]


async def test_photo_download_and_send_back(tg: TelegramStandIn, alice: TgUser) -> None:
    original = png(1000, 600)
    downloaded: list[bytes] = []

    async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        largest = update.message.photo[-1]
        file = await largest.get_file()
        assert tg.url in str(file.file_path)  # PTB must download it, not read a local file
        data = bytes(await file.download_as_bytearray())
        buf = io.BytesIO()
        await file.download_to_memory(buf)
        assert buf.getvalue() == data
        downloaded.append(data)
        await update.message.reply_photo(png(640, 480, (0, 0, 255)), caption="1 person")

    app = ptb_app(tg)
    app.add_handler(MessageHandler(filters.PHOTO, on_photo))
    async with polling(app):
        message = tg.inject_photo(alice, original, caption="segment me")
        [reply] = await tg.wait_sent(alice.id)
    assert downloaded == [original]
    assert [(p["width"], p["height"]) for p in message["photo"]] == [(90, 54), (320, 192), (800, 480), (1000, 600)]
    assert reply.kind == "photo" and reply.caption == "1 person"
    sizes = reply.api["photo"]
    assert (sizes[-1]["width"], sizes[-1]["height"]) == (640, 480)
    assert [s["width"] for s in sizes] == [90, 320, 640]
    assert Image.open(io.BytesIO(reply.data)).size == (640, 480)
    assert tg.get_file_bytes(reply.file_id) == reply.data


async def test_document_is_stored_with_name_and_type(tg: TelegramStandIn, alice: TgUser) -> None:
    bot = Bot(TOKEN, base_url=tg.bot_base_url, base_file_url=tg.file_base_url)
    tg.add_chat(TgChat.private(alice))
    async with bot:
        msg = await bot.send_document(alice.id, png(3000, 2000), filename="result.png", caption="big")
        again = await bot.send_document(alice.id, msg.document.file_id)
        with pytest.raises(BadRequest, match=r"(?i)wrong file identifier"):
            await bot.send_document(alice.id, "no-such-file-id")
    [first, second] = tg.sent(alice.id)
    assert (first.kind, first.file_name, first.mime_type, first.caption) == (
        "document",
        "result.png",
        "image/png",
        "big",
    )
    assert first.data == png(3000, 2000) and second.file_id == first.file_id
    assert again.document.file_name == "result.png"


async def test_edit_message_text_and_not_modified(tg_unlimited: TelegramStandIn, alice: TgUser) -> None:
    tg = tg_unlimited
    bot = Bot(TOKEN, base_url=tg.bot_base_url)
    tg.add_chat(TgChat.private(alice))
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel:1")]])
    async with bot:
        msg = await bot.send_message(alice.id, "Working…", reply_markup=keyboard)
        edited = await bot.edit_message_text("Done", chat_id=alice.id, message_id=msg.message_id, reply_markup=keyboard)
        assert edited.edit_date is not None
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_text("Done", chat_id=alice.id, message_id=msg.message_id, reply_markup=keyboard)
        await bot.edit_message_text("Done", chat_id=alice.id, message_id=msg.message_id)  # drops keyboard
        with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
            await bot.edit_message_text("x", chat_id=alice.id, message_id=999)
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(alice.id, "<blink>no</blink>", parse_mode="HTML")
        assert await bot.delete_message(alice.id, msg.message_id)
    [now] = tg.sent(alice.id, include_deleted=True)
    assert now.deleted and now.text == "Done" and now.reply_markup is None
    assert [r.text for r in now.edits] == ["Working…", "Done"]
    assert tg.sent(alice.id) == []


async def test_callback_query_is_answered(tg: TelegramStandIn, alice: TgUser) -> None:
    async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None and query.message is not None
        await query.answer(f"pressed {query.data}")
        await query.edit_message_text("Cancelled")

    app = ptb_app(tg)
    app.add_handler(CallbackQueryHandler(on_press))
    async with polling(app):
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel:7")]])
        tg.add_chat(TgChat.private(alice))
        sent = await app.bot.send_message(alice.id, "Job 7 running", reply_markup=keyboard)
        with pytest.raises(BadInjection):
            tg.press_button(alice, sent.message_id, "forged")
        query_id = tg.press_button(alice, sent.message_id, "cancel:7")
        await tg.wait_calls("editMessageText")
    assert tg.callback_answer(query_id) == {"text": "pressed cancel:7", "show_alert": None, "url": None}
    assert tg.sent(alice.id)[0].text == "Cancelled"


async def test_webhook_delivery_with_secret(tg: TelegramStandIn, alice: TgUser) -> None:
    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text("hooked " + (update.message.text or ""))

    port = free_port()
    app = ptb_app(tg)
    app.add_handler(MessageHandler(filters.TEXT, echo))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_webhook(
            listen="127.0.0.1",
            port=port,
            url_path="hook",
            webhook_url=f"http://127.0.0.1:{port}/hook",
            secret_token="s3cret-Token_1",
        )
        try:
            info = await app.bot.get_webhook_info()
            assert info.url == f"http://127.0.0.1:{port}/hook"
            status, body = await api(tg, "getUpdates")
            assert status == 409 and "webhook is active" in body["description"]
            tg.inject_text(alice, "one")
            [reply] = await tg.wait_sent(alice.id)
            assert reply.text == "hooked one"
            async with aiohttp.ClientSession() as session:
                for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                    async with session.post(
                        f"http://127.0.0.1:{port}/hook", json={"update_id": 99}, headers=headers
                    ) as resp:
                        assert resp.status == 403
        finally:
            await app.updater.stop()
            await app.stop()


async def test_webhook_retries_until_the_bot_accepts(alice: TgUser) -> None:
    """A webhook that refuses (wrong secret on the bot side) is retried; the error shows in the info."""
    async with TelegramStandIn(webhook_retry_delay=0.05) as tg:
        tg.add_bot(TOKEN, BOT_USERNAME)
        port = free_port()
        seen: list[dict] = []
        refuse = [True]

        async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
            if refuse[0]:
                refuse[0] = False
                return aiohttp.web.Response(status=500)
            assert request.headers["X-Telegram-Bot-Api-Secret-Token"] == "abc"
            seen.append(await request.json())
            return aiohttp.web.Response()

        server = aiohttp.web.Application()
        server.router.add_post("/h", hook)
        runner = aiohttp.web.AppRunner(server, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            status, _ = await api(tg, "setWebhook", url=f"http://127.0.0.1:{port}/h", secret_token="abc")
            assert status == 200
            tg.inject_text(alice, "hello")
            await tg.wait_for(lambda: bool(seen))
            assert seen[0]["message"]["text"] == "hello" and tg.pending_updates() == 0
            status, body = await api(tg, "setWebhook", url="http://10.0.0.1/h")
            assert status == 400 and "loopback" in body["description"]
        finally:
            await runner.cleanup()


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_429_is_honoured_by_aio_rate_limiter(alice: TgUser) -> None:
    async with TelegramStandIn(rate_limits=RateLimits(private_burst=1)) as tg:
        tg.add_bot(TOKEN, BOT_USERNAME)
        tg.add_chat(TgChat.private(alice))
        app = ptb_app(tg, rate_limiter=AIORateLimiter(max_retries=2))
        async with app:
            started = time.monotonic()
            await app.bot.send_message(alice.id, "first")
            await app.bot.send_message(alice.id, "second")
            elapsed = time.monotonic() - started
        assert [m.text for m in tg.sent(alice.id)] == ["first", "second"]
        assert tg.rate_limited == 1 and elapsed >= 1.0
        [refused] = [c for c in tg.calls("sendMessage") if c.status == 429]
        assert refused.description == "Too Many Requests: retry after 1"


@pytest.mark.slow  # over ~2 s
async def test_long_poll_wakes_at_once_and_does_not_spin(tg: TelegramStandIn, alice: TgUser) -> None:
    arrived: list[str] = []

    async def note(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        arrived.append(update.effective_message.text if update.effective_message else "")

    app = ptb_app(tg)
    app.add_handler(MessageHandler(filters.ALL, note))
    async with polling(app, timeout=10):
        await tg.wait_for(lambda: bool(tg.calls("deleteWebhook")), timeout=5)  # polling started: a poll waits
        tg.inject_text(alice, "ping")
        # the pending poll asks for 10 s: the message arriving well within that means the poll was woken
        await tg.wait_for(lambda: arrived == ["ping"], timeout=5)
        before = len(tg.calls("getUpdates"))
        # idle again: the next poll waits too (a client spinning on empty answers would make many calls)
        with pytest.raises(StandInTimeout):
            await tg.wait_for(lambda: len(tg.calls("getUpdates")) > before + 2, timeout=1.0)


async def test_errors_map_to_ptb_exceptions(tg: TelegramStandIn, alice: TgUser) -> None:
    with pytest.raises(InvalidToken):
        async with Bot("999:not-registered", base_url=tg.bot_base_url):
            pass
    bot = Bot(TOKEN, base_url=tg.bot_base_url)
    async with bot:
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(777, "hello?")
        tg.add_chat(TgChat.private(alice))
        tg.block(alice)
        with pytest.raises(Forbidden, match=r"(?i)bot was blocked by the user"):
            await bot.send_message(alice.id, "hello?")
        with pytest.raises(Forbidden):
            await bot.send_chat_action(alice.id, "typing")
        tg.unblock(alice)
        await bot.send_message(alice.id, "welcome back")
        with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
            await bot.send_message(alice.id, " ")
    assert [m.text for m in tg.sent(alice.id)] == ["welcome back"]


# --- the wire format, spoken by hand -------------------------------------------------------------------


async def test_get_updates_offset_limit_and_negative_offset(tg: TelegramStandIn, alice: TgUser) -> None:
    for word in ("a", "b", "c", "d"):
        tg.inject_text(alice, word)
    status, body = await api(tg, "getUpdates", limit=2)
    ids = [u["update_id"] for u in body["result"]]
    assert status == 200 and len(ids) == 2 and ids[1] == ids[0] + 1
    _, body = await api(tg, "getUpdates", offset=ids[1])  # confirms the first one
    assert [u["message"]["text"] for u in body["result"]] == ["b", "c", "d"]
    _, body = await api(tg, "getUpdates", offset=-1)  # only the last one is kept
    assert [u["message"]["text"] for u in body["result"]] == ["d"]
    assert tg.pending_updates() == 1
    status, body = await api(tg, "nosuchMethod")
    assert status == 404 and body == {"ok": False, "error_code": 404, "description": "Not Found"}
    status, body = await api(tg, "getMe", token="1:other")
    assert status == 401 and body["description"] == "Unauthorized"


async def test_form_fields_keep_text_as_text_and_json_bodies_work(tg: TelegramStandIn, alice: TgUser) -> None:
    tg.add_chat(TgChat.private(alice))
    status, body = await api(
        tg,
        "sendMessage",
        chat_id=alice.id,
        text="123",
        reply_markup='{"inline_keyboard": [[{"text": "Go", "callback_data": "42"}]]}',
    )
    assert status == 200 and body["result"]["text"] == "123"
    assert tg.sent(alice.id)[0].buttons() == [("Go", "42")]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{tg.bot_base_url}{TOKEN}/sendMessage", json={"chat_id": alice.id, "text": "json body"}
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{tg.bot_base_url}{TOKEN}/getMe") as resp:
            me = (await resp.json())["result"]
    assert me["is_bot"] and me["username"] == BOT_USERNAME and me["can_join_groups"]
    status, body = await api(tg, "sendMessage", chat_id="not-a-number", text="x")
    assert status == 400 and body["description"].startswith("Bad Request:")
    assert all(url.startswith(tg.url) for url in tg.request_urls)


async def test_file_limits_and_paths(tg: TelegramStandIn, alice: TgUser, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "file_1.bin").write_bytes(b"local")  # must not shadow the stand-in's path
    small = tg.inject_document(alice, b"x" * 100, "a.bin")
    big = tg.inject_document(alice, b"\0" * (20 * 1024 * 1024 + 1), "big.bin")
    _, body = await api(tg, "getFile", file_id=small["document"]["file_id"])
    path = body["result"]["file_path"]
    assert not (tmp_path / path).exists()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{tg.file_base_url}{TOKEN}/{path}") as resp:
            assert resp.status == 200 and await resp.read() == b"x" * 100
        async with session.get(f"{tg.file_base_url}1:other/{path}") as resp:
            assert resp.status == 401
    status, body = await api(tg, "getFile", file_id=big["document"]["file_id"])
    assert status == 400 and body["description"] == "Bad Request: file is too big"
    status, body = await api(tg, "getFile", file_id="nope")
    assert status == 400 and body["description"] == "Bad Request: invalid file_id"


async def test_send_photo_checks_like_telegram(tg_unlimited: TelegramStandIn, alice: TgUser) -> None:
    tg = tg_unlimited
    bot = Bot(TOKEN, base_url=tg.bot_base_url)
    tg.add_chat(TgChat.private(alice))
    async with bot:
        with pytest.raises(BadRequest, match=r"(?i)PHOTO_INVALID_DIMENSIONS"):
            await bot.send_photo(alice.id, png(2100, 100))
        with pytest.raises(BadRequest, match=r"(?i)PHOTO_INVALID_DIMENSIONS"):
            await bot.send_photo(alice.id, png(5001, 5000))
        with pytest.raises(BadRequest, match=r"(?i)file is too big"):
            await bot.send_photo(alice.id, b"\x89PNG" + b"\0" * (10 * 1024 * 1024))
        with pytest.raises(BadRequest, match=r"(?i)IMAGE_PROCESS_FAILED"):
            await bot.send_photo(alice.id, b"not an image at all")
        with pytest.raises(BadRequest, match=r"(?i)wrong file identifier"):
            await bot.send_photo(alice.id, "http://169.254.169.254/latest")  # never fetched
        first = await bot.send_photo(alice.id, png(400, 300))
        again = await bot.send_photo(alice.id, first.photo[-1].file_id, caption="again")
    assert again.photo[-1].file_id == first.photo[-1].file_id
    form = aiohttp.FormData()
    form.add_field("chat_id", str(alice.id))
    form.add_field("photo", "attach://pic")
    form.add_field("pic", png(50, 40), filename="pic.png", content_type="image/png")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{tg.bot_base_url}{TOKEN}/sendPhoto", data=form) as resp,
    ):
        body = await resp.json()
    assert [(p["width"], p["height"]) for p in body["result"]["photo"]] == [(50, 40)]
    assert [m.kind for m in tg.sent(alice.id)] == ["photo", "photo", "photo"]


async def test_injections_for_bad_input_and_edits(tg: TelegramStandIn, alice: TgUser) -> None:
    assert "sticker" in tg.inject_sticker(alice)
    assert tg.inject_voice(alice, seconds=2)["voice"]["duration"] == 2
    assert "video" in tg.inject_video(alice)
    first = tg.inject_text(alice, "/start")
    edited = tg.inject_edit(alice, first["message_id"], "/help")
    assert edited["text"] == "/help" and "edit_date" in edited
    with pytest.raises(BadInjection):
        tg.inject_photo(alice, b"definitely not an image")
    group = TgChat(id=-1001, type="group", title="Friends")
    tg.inject_text(alice, "hi all", chat=group)  # privacy mode: not meant for the bot, not given to it
    assert tg.inject_text(alice, f"hi @{BOT_USERNAME}", chat=group)["chat"]["type"] == "group"
    _, body = await api(tg, "getUpdates")
    kinds = [next(k for k in u if k != "update_id") for u in body["result"]]
    assert kinds == ["message", "message", "message", "message", "edited_message", "message"]
    ids = [u["update_id"] for u in body["result"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_stop_wakes_pending_long_poll(alice: TgUser) -> None:
    tg = TelegramStandIn()
    tg.add_bot(TOKEN, BOT_USERNAME)
    await tg.start()
    poll = asyncio.ensure_future(api(tg, "getUpdates", timeout=30))
    await until(lambda: tg.bot(TOKEN)._poll_generation == 1)  # the poll waits inside the stand-in
    assert not poll.done()
    await tg.stop()
    status, body = await asyncio.wait_for(poll, 2)  # it asked for 30 s: answered now means stop woke it
    assert status == 200 and body["result"] == []


async def test_second_poller_gets_conflict(tg: TelegramStandIn) -> None:
    first = asyncio.ensure_future(api(tg, "getUpdates", timeout=5))
    await until(lambda: tg.bot(TOKEN)._poll_generation == 1)  # the first poll waits inside the stand-in
    second = asyncio.ensure_future(api(tg, "getUpdates", timeout=0))
    status, body = await asyncio.wait_for(first, 2)
    assert status == 409 and "terminated by other getUpdates" in body["description"]
    assert (await second)[0] == 200


async def test_wait_calls_times_out_with_a_clear_message(tg: TelegramStandIn) -> None:
    with pytest.raises(StandInTimeout, match="0 of 1 sendMessage"):
        await tg.wait_calls("sendMessage", 1, timeout=0.1)


# --- flood control with a fake clock -------------------------------------------------------------------


async def test_flood_control_private_burst_then_one_per_second() -> None:
    from devnet.telegram_model import FloodControl

    now = [100.0]
    flood = FloodControl(RateLimits(private_burst=3), clock=lambda: now[0])
    assert [flood.admit(7) for _ in range(3)] == [None, None, None]
    assert flood.admit(7) == 1
    assert flood.admit(8) is None  # another chat has its own allowance
    now[0] += 1.0
    assert flood.admit(7) is None and flood.admit(7) == 1


async def test_flood_control_overall_and_group_limits() -> None:
    from devnet.telegram_model import FloodControl

    now = [0.0]
    flood = FloodControl(RateLimits(), clock=lambda: now[0])
    assert all(flood.admit(chat) is None for chat in range(1, 31))
    assert flood.admit(31) == 1  # the 31st message within a second, whatever the chat
    now[0] += 1.0
    assert all(flood.admit(-5) is None for _ in range(20))
    now[0] += 1.0
    assert flood.admit(-5) == 59  # 20 a minute in a group
    assert FloodControl(RateLimits.off()).admit(1) is None


# --- the chat page's JSON endpoints --------------------------------------------------------------------


async def test_chat_endpoints_drive_a_conversation(tg: TelegramStandIn, alice: TgUser) -> None:
    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("OK", callback_data="ok")]])
        await update.message.reply_text("seen", reply_markup=keyboard)

    app = ptb_app(tg)
    app.add_handler(MessageHandler(filters.TEXT | filters.PHOTO, echo))
    user = {"id": alice.id, "first_name": "Alice"}
    base = f"{tg.url}/_chat/{BOT_USERNAME}"
    async with polling(app), aiohttp.ClientSession() as session:
        async with session.get(f"{tg.url}/_chat/") as resp:
            html = await resp.text()
            assert resp.status == 200 and "/_chat/bots" in html and "http" not in html.split("<script>")[1]
        async with session.get(f"{tg.url}/_chat/bots") as resp:
            bots = await resp.json()
            assert bots[0]["username"] == BOT_USERNAME and TOKEN not in str(bots)
        async with session.post(f"{base}/send", json={"user": user, "text": "hello"}) as resp:
            assert resp.status == 200
        await tg.wait_sent(alice.id, 1)
        form = aiohttp.FormData({"user_id": str(alice.id), "first_name": "Alice", "kind": "photo"})
        form.add_field("file", png(100, 80), filename="p.png", content_type="image/png")
        async with session.post(f"{base}/upload", data=form) as resp:
            photo_id = (await resp.json())["message"]["photo"][-1]["file_id"]
        await tg.wait_sent(alice.id, 2)
        async with session.get(f"{base}/messages", params={"chat_id": alice.id}) as resp:
            page = await resp.json()  # no `after`: the whole conversation
        assert [(m["from_bot"], m["kind"]) for m in page["messages"]] == [
            (False, "text"),
            (True, "text"),
            (False, "photo"),
            (True, "text"),
        ]
        assert page["messages"][1]["buttons"] == [[{"text": "OK", "data": "ok", "url": None}]]
        async with session.post(f"{base}/press", json={"user": user, "message_id": 2, "data": "ok"}) as resp:
            assert resp.status == 200 and (await resp.json())["callback_query_id"]
        async with session.post(f"{base}/press", json={"user": user, "message_id": 2, "data": "x"}) as resp:
            assert resp.status == 400
        async with session.get(f"{base}/file/{photo_id}") as resp:
            assert await resp.read() == png(100, 80)
        async with session.get(f"{tg.url}/_chat/nobody/stats") as resp:
            assert resp.status == 404
        async with session.get(f"{base}/stats") as resp:
            stats = await resp.json()
    assert stats["calls"]["sendMessage"] == 2 and stats["rate_limited"] == 0


# --- ids survive a restart; callback data within Telegram's 64 bytes -------------------------------------


async def test_a_restarted_stand_in_never_reuses_message_or_update_ids(alice: TgUser, tmp_path) -> None:
    seen: list[tuple[int, int]] = []

    async def note(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        seen.append((update.update_id, update.message.message_id))
        await update.message.reply_text("ok")

    async with TelegramStandIn(data_dir=tmp_path / "tg") as first:
        first.add_bot(TOKEN, BOT_USERNAME)
        app = ptb_app(first)
        app.add_handler(MessageHandler(filters.TEXT, note))
        async with polling(app):
            first.inject_text(alice, "one")
            first.inject_text(alice, "two")
            await first.wait_sent(alice.id, 2)
        before = [m.message_id for m in first.conversation(alice.id)]
    async with TelegramStandIn(data_dir=tmp_path / "tg") as second:  # the same data folder, a new process
        second.add_bot(TOKEN, BOT_USERNAME)
        app = ptb_app(second)
        app.add_handler(MessageHandler(filters.TEXT, note))
        async with polling(app):
            second.inject_text(alice, "three")
            *earlier, reply = await second.wait_sent(alice.id, 3)  # the history came back, then one more
    assert sorted(before) == [1, 2, 3, 4] and [m.message_id for m in earlier] == [3, 4]
    assert [m for _, m in seen] == [1, 2, 5] and reply.message_id == 6  # numbering goes on after 4
    assert [u for u, _ in seen] == [1, 2, 3]  # a reused update id 1 would be below PTB's offset (3): dropped


async def test_callback_data_over_64_bytes_is_refused(tg: TelegramStandIn, alice: TgUser) -> None:
    tg.inject_text(alice, "hi")
    async with ptb_app(tg) as app:
        ok = InlineKeyboardMarkup([[InlineKeyboardButton("a", callback_data="é" * 32)]])  # 64 bytes
        sent = await app.bot.send_message(alice.id, "fits", reply_markup=ok)
        for data in ("x" * 65, "é" * 33):
            too_long = InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data=data)]])
            with pytest.raises(BadRequest, match=r"Button_data_invalid|BUTTON_DATA_INVALID"):
                await app.bot.send_message(alice.id, "too long", reply_markup=too_long)
            with pytest.raises(BadRequest, match=r"Button_data_invalid|BUTTON_DATA_INVALID"):
                await app.bot.edit_message_reply_markup(alice.id, sent.message_id, reply_markup=too_long)
    assert [m.text for m in tg.sent(alice.id)] == ["fits"]
