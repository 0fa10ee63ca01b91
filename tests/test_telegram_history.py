"""The Telegram stand-in's chat history across restarts, the chat page's captions and reply quotes.

The bot is the real python-telegram-bot client over HTTP; the person uses the chat page's JSON endpoints.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from telegram import Bot, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes, MessageHandler, filters

from devnet.telegram import TelegramStandIn, TgChat, TgUser
from devnet.telegram_history import History, Snapshot
from tests.fixtures_telegram import BOT_USERNAME, TOKEN, polling, ptb_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


def jpeg(width: int, height: int, colour: tuple[int, int, int] = (20, 160, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="JPEG")
    return buf.getvalue()


async def page_messages(tg: TelegramStandIn, session: aiohttp.ClientSession, chat_id: int) -> list[dict]:
    async with session.get(f"{tg.url}/_chat/{BOT_USERNAME}/messages", params={"chat_id": chat_id}) as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def upload(
    tg: TelegramStandIn, session: aiohttp.ClientSession, user: TgUser, data: bytes, caption: str | None
) -> dict[str, Any]:
    form = aiohttp.FormData({"user_id": str(user.id), "first_name": user.first_name, "kind": "photo"})
    if caption is not None:
        form.add_field("caption", caption)
    form.add_field("file", data, filename="street.jpg", content_type="image/jpeg")
    async with session.post(f"{tg.url}/_chat/{BOT_USERNAME}/upload", data=form) as resp:
        assert resp.status == 200
        return dict((await resp.json())["message"])


async def test_history_survives_a_restart_and_ids_go_on(alice: TgUser, tmp_path: Path) -> None:
    picture = jpeg(640, 400)
    captions: list[str | None] = []

    async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        captions.append(update.message.caption)
        await update.message.reply_text("Got it", do_quote=True)
        await update.message.reply_photo(jpeg(320, 200, (200, 0, 0)), caption="1 person", do_quote=True)

    async with TelegramStandIn(data_dir=tmp_path / "tg") as first, aiohttp.ClientSession() as session:
        first.add_bot(TOKEN, BOT_USERNAME)
        app = ptb_app(first)
        app.add_handler(MessageHandler(filters.PHOTO, on_photo))
        async with polling(app):
            sent = await upload(first, session, alice, picture, "my street")
            await first.wait_sent(alice.id, 2)
        before = await page_messages(first, session, alice.id)
    assert captions == ["my street"]  # the page's caption reached the bot as message.caption
    assert sent["caption"] == "my street"
    assert [(m["message_id"], m["from_bot"], m["kind"], m["text"]) for m in before] == [
        (1, False, "photo", "my street"),
        (2, True, "text", "Got it"),
        (3, True, "photo", "1 person"),
    ]

    downloaded: list[bytes] = []
    async with TelegramStandIn(data_dir=tmp_path / "tg") as second, aiohttp.ClientSession() as session:
        second.add_bot(TOKEN, BOT_USERNAME)
        after = await page_messages(second, session, alice.id)
        assert after == before  # the page shows the same conversation, replies and all
        async with session.get(f"{second.url}/_chat/{BOT_USERNAME}/file/{after[0]['file_id']}") as resp:
            assert await resp.read() == picture
        async with Bot(TOKEN, base_url=second.bot_base_url, base_file_url=second.file_base_url) as bot:
            old = await bot.get_file(sent["photo"][-1]["file_id"])  # a job queued before the restart
            downloaded.append(bytes(await old.download_as_bytearray()))
            late = await bot.send_message(alice.id, "Done", reply_to_message_id=1)
        new = second.inject_text(alice, "/status")
    assert downloaded == [picture]
    assert late.message_id == 4 and late.reply_to_message is not None
    assert late.reply_to_message.caption == "my street"
    assert new["message_id"] == 5


async def test_replies_quote_the_message_they_answer(tg: TelegramStandIn, alice: TgUser) -> None:
    async with aiohttp.ClientSession() as session:
        photo = await upload(tg, session, alice, jpeg(400, 300), None)
        async with Bot(TOKEN, base_url=tg.bot_base_url, base_file_url=tg.file_base_url) as bot:
            ack = await bot.send_message(alice.id, "Queued, position 2", reply_to_message_id=photo["message_id"])
            again = await bot.send_message(alice.id, "Started", reply_to_message_id=ack.message_id)
            await bot.delete_message(alice.id, ack.message_id)
            with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
                await bot.send_message(alice.id, "late", reply_to_message_id=ack.message_id)
        shown = {m["message_id"]: m for m in await page_messages(tg, session, alice.id)}
    # Bot API: a reply carries the message it answers, and that one carries no reply of its own
    assert ack.reply_to_message is not None and ack.reply_to_message.photo
    assert again.reply_to_message is not None and again.reply_to_message.message_id == ack.message_id
    assert again.reply_to_message.reply_to_message is None
    quote = shown[ack.message_id]["reply_to"]
    assert quote["message_id"] == photo["message_id"] and quote["from_bot"] is False
    assert quote["text"] == "Photo" and quote["thumb_file_id"] == photo["photo"][0]["file_id"]
    assert shown[again.message_id]["reply_to"]["text"] == "Deleted message"
    assert shown[photo["message_id"]]["reply_to"] is None


async def test_history_is_bounded_and_keeps_the_newest(alice: TgUser, tmp_path: Path) -> None:
    tg = TelegramStandIn()  # in memory; its state is saved by hand with small bounds
    tg.add_bot(TOKEN, BOT_USERNAME)
    state = tg.bot()
    for n in range(6):
        tg.inject_text(alice, f"text {n}")
    bob = TgUser(id=77, first_name="Bob")
    big = [tg.inject_document(bob, bytes([n]) * 1000, f"f{n}.bin") for n in range(3)]
    history = History(tmp_path / "h", max_messages=4, max_file_bytes=2500)
    history.save(Snapshot(state.chats, state.messages, state.files))
    (tmp_path / "h" / "files" / "stale").write_bytes(b"x")  # a file no message names any more
    (tmp_path / "h" / "history.json.tmp").write_bytes(b"{torn")  # a write killed half-way
    history.save(Snapshot(state.chats, state.messages, state.files))

    back = History(tmp_path / "h").load()
    assert [m.text for m in back.messages[alice.id].values()] == ["text 2", "text 3", "text 4", "text 5"]
    kept = [m.file_name for m in back.messages[bob.id].values() if m.file_id in back.files]
    assert kept == ["f1.bin", "f2.bin"]  # 2500 bytes hold the two newest files
    assert back.files[big[2]["document"]["file_id"]].data == bytes([2]) * 1000
    names = sorted(p.name for p in (tmp_path / "h" / "files").iterdir())
    assert len(names) == 2 and "stale" not in names
    assert json.loads((tmp_path / "h" / "history.json").read_text())["chats"][0]["chat"]["id"] == alice.id
    assert TOKEN not in (tmp_path / "h" / "history.json").read_text()


async def test_a_group_chat_and_its_members_come_back(tmp_path: Path) -> None:
    group = TgChat(id=-100200, type="group", title="Friends")
    carol = TgUser(id=31, first_name="Carol")
    async with TelegramStandIn(data_dir=tmp_path / "tg") as first:
        first.add_bot(TOKEN, BOT_USERNAME)
        first.inject_text(carol, "hello group", chat=group)
    async with TelegramStandIn(data_dir=tmp_path / "tg") as second:
        second.add_bot(TOKEN, BOT_USERNAME)
        [msg] = second.conversation(group.id)
        async with Bot(TOKEN, base_url=second.bot_base_url, base_file_url=second.file_base_url) as bot:
            reply = await bot.send_message(group.id, "hi", reply_to_message_id=msg.message_id)
    assert msg.text == "hello group" and msg.api["from"]["first_name"] == "Carol"
    assert reply.chat.title == "Friends" and reply.reply_to_message is not None
    assert reply.reply_to_message.from_user is not None and reply.reply_to_message.from_user.id == carol.id


async def _page(
    tg: TelegramStandIn, session: aiohttp.ClientSession, chat_id: int, **query: Any
) -> tuple[dict[str, Any], list[tuple[int, str | None]]]:
    params = {"chat_id": str(chat_id), **{k: str(v) for k, v in query.items()}}
    async with session.get(f"{tg.url}/_chat/{BOT_USERNAME}/messages", params=params) as resp:
        assert resp.status == 200
        body = await resp.json()
    return body, [(m["message_id"], m["text"]) for m in body["messages"]]


async def test_messages_after_a_change_answer_only_what_changed_since(
    tg_unlimited: TelegramStandIn, alice: TgUser
) -> None:
    """The chat page polls `/messages?after=C` with the `changes` of its last answer: it gets the messages sent,
    edited or deleted since then, not the whole history again (which grows with every photo)."""
    tg = tg_unlimited
    async with (
        aiohttp.ClientSession() as session,
        Bot(TOKEN, base_url=tg.bot_base_url, base_file_url=tg.file_base_url) as bot,
    ):
        tg.inject_text(alice, "first")
        status = await bot.send_message(alice.id, "Queued, 1st in line")
        tg.inject_text(alice, "second")
        whole, shown = await _page(tg, session, alice.id)
        assert whole["full"] is True and [t for _, t in shown] == ["first", "Queued, 1st in line", "second"]
        seen = whole["changes"]

        late = await bot.send_message(alice.id, "Done")
        await bot.edit_message_text("Started", chat_id=alice.id, message_id=status.message_id)
        delta, shown = await _page(tg, session, alice.id, after=seen)
        assert delta["full"] is False
        assert shown == [(status.message_id, "Started"), (late.message_id, "Done")]  # not "first", "second"

        nothing, shown = await _page(tg, session, alice.id, after=delta["changes"])
        assert shown == [] and nothing["changes"] == delta["changes"]

        # a long poll answers when something of this chat changed (or at once if it already had), with that only
        poll = asyncio.create_task(_page(tg, session, alice.id, after=delta["changes"], wait=20))
        await bot.delete_message(alice.id, late.message_id)
        body, shown = await poll
        assert shown == [(late.message_id, "Done")] and body["messages"][0]["deleted"] is True

        # a count this stand-in never reached (the page polled an earlier run of it): everything again
        again, shown = await _page(tg, session, alice.id, after=10**9)
        assert again["full"] is True and [t for _, t in shown] == ["first", "Started", "second", "Done"]
        assert [m["deleted"] for m in again["messages"]] == [False, False, False, True]  # the page hides it
