"""The bot in a group chat (issue 14, "Group chats"): on request only, with Telegram's privacy mode on.

A reply `/segment` to a picture, or a picture whose caption mentions the bot, is segmented with the credit
of the member who asked, and the result answers the picture; anything else in the group is ignored without
a word; admin commands work only in a private chat. Through the real bot (PTB over HTTP) and the Telegram
stand-in, whose groups have several members and whose privacy mode gives the bot only commands, mentions
and replies to it (the bot must not rely on it: the last test turns it off).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from devnet import telegram_inject as inject
from devnet.telegram import TelegramStandIn, TgChat, TgUser
from tests.fixtures_bot import ADMIN, BotNet, photo_bytes
from tests.fixtures_telegram import BOT_USERNAME, TOKEN, alice

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["alice"]  # the fixture, used by the stand-in test

RLC = 10**9
_group_ids = itertools.count(-100_700, -1)


@pytest.fixture
def group() -> TgChat:
    """A group of its own for each test (the stand-in's chats outlive a test: one devnet per module)."""
    return TgChat(id=next(_group_ids), type="supergroup", title="Photo club")


def _bot_messages(bn: BotNet, chat: TgChat) -> list[Any]:
    return [m for m in bn.tg.sent(chat.id) if m.from_bot]


def _member(bn: BotNet, name: str, credit: int = RLC) -> TgUser:
    user = bn.new_user(credit_nrlc=credit)
    return TgUser(id=user.id, first_name=name, username=None)


async def _result_for(bn: BotNet, chat: TgChat, photo_message_id: int, timeout: float = 60.0) -> Any:
    def find() -> Any:
        return next(
            (m for m in _bot_messages(bn, chat) if m.kind in ("photo", "document") and m.reply_to == photo_message_id),
            None,
        )

    await bn.tg.wait_for(lambda: find() is not None, timeout=timeout)
    return find()


async def test_privacy_mode_gives_the_bot_only_commands_mentions_and_replies_to_it(
    tg: TelegramStandIn, alice: TgUser
) -> None:
    state = tg.bot(TOKEN)
    bob = TgUser(id=4343, first_name="Bob")
    group = TgChat(id=-4242, type="group", title="Friends")
    delivered = len(state.updates)

    def got() -> list[dict[str, Any]]:
        return [u.get("message", {}) for u in state.updates[delivered:]]

    tg.inject_photo(alice, photo_bytes(seed=1), chat=group)
    tg.inject_text(bob, "nice picture", chat=group)
    tg.inject_command(bob, "/start@another_bot", chat=group)
    photo = tg.inject_photo(alice, photo_bytes(seed=2), chat=group, caption=f"what is it @{BOT_USERNAME}?")
    tg.inject_command(bob, "/segment", chat=group, reply_to=photo["message_id"])
    tg.inject_command(bob, f"/segment@{BOT_USERNAME}", chat=group)
    tg.inject_text(alice, "hello", chat=TgChat.private(alice))  # private chats: everything
    assert [m.get("caption") or m.get("text") for m in got()] == [
        f"what is it @{BOT_USERNAME}?",
        "/segment",
        f"/segment@{BOT_USERNAME}",
        "hello",
    ]
    assert got()[1]["reply_to_message"]["message_id"] == photo["message_id"]
    state.privacy_mode = False
    tg.inject_text(bob, "now the bot reads this", chat=group)
    assert got()[-1]["text"] == "now the bot reads this"


async def test_a_reply_segment_is_paid_by_who_asks_and_answers_the_picture(botnet: BotNet, group: TgChat) -> None:
    ann, bob = _member(botnet, "Ann"), _member(botnet, "Bob")
    photo = botnet.tg.inject_photo(ann, photo_bytes(seed=11), chat=group)
    botnet.tg.inject_command(bob, "/segment", chat=group, reply_to=photo["message_id"])
    result = await _result_for(botnet, group, photo["message_id"])
    assert "Charged" in (result.caption or "")
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(bob.id)
    assert job.state.value == "DELIVERED" and job.chat_id == group.id and job.user_message_id == photo["message_id"]
    charged = job.app_price + job.workerpool_price + botnet.settings.fee_nrlc
    assert botnet.ledger.balance(bob.id).posted == RLC - charged
    assert botnet.ledger.balance(ann.id).posted == RLC and botnet.ledger.user_jobs(ann.id) == []
    status = next(m for m in _bot_messages(botnet, group) if m.kind == "text" and "Done" in (m.text or ""))
    assert status.reply_to == photo["message_id"]  # the status message answers the picture too
    botnet.ledger.audit()


async def test_a_caption_mention_asks_and_plain_pictures_and_texts_are_ignored(botnet: BotNet, group: TgChat) -> None:
    ann, bob = _member(botnet, "Ann"), _member(botnet, "Bob")
    name = botnet.bot.app.bot.username
    botnet.tg.bot().privacy_mode = False  # the bot ignores them itself, not only because Telegram hides them
    plain = botnet.tg.inject_photo(ann, photo_bytes(seed=21), chat=group)
    botnet.tg.inject_photo(ann, photo_bytes(seed=22), chat=group, caption="my cat")
    botnet.tg.inject_text(bob, "https://example.com/cat.jpg look", chat=group)
    botnet.tg.inject_text(bob, "hello all", chat=group)
    botnet.tg.inject_command(bob, "/nosuchcommand", chat=group)  # maybe another bot's: not answered
    asked = botnet.tg.inject_photo(bob, photo_bytes(seed=23), chat=group, caption=f"@{name} what is this?")
    result = await _result_for(botnet, group, asked["message_id"])
    assert "Charged" in (result.caption or "")
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(bob.id)
    assert job.user_message_id == asked["message_id"] and botnet.ledger.user_jobs(ann.id) == []
    answered = {m.reply_to for m in _bot_messages(botnet, group)}
    assert answered == {asked["message_id"]}, [m.text for m in _bot_messages(botnet, group)]
    assert plain["message_id"] not in answered
    botnet.tg.bot().privacy_mode = True


async def test_admin_commands_only_in_a_private_chat(botnet: BotNet, group: TgChat) -> None:
    bob = _member(botnet, "Bob")
    botnet.tg.inject_command(ADMIN, "/users", chat=group)
    await botnet.tg.wait_for(lambda: any("private chat" in (m.text or "") for m in _bot_messages(botnet, group)))
    botnet.tg.inject_command(ADMIN, "/fund", f"{bob.id} 5", chat=group)
    await botnet.tg.wait_for(lambda: sum("private chat" in (m.text or "") for m in _bot_messages(botnet, group)) == 2)
    assert botnet.ledger.balance(bob.id).posted == RLC  # nothing funded, no confirmation button in the group
    assert not any(m.reply_markup for m in _bot_messages(botnet, group))
    name = botnet.bot.app.bot.username
    botnet.tg.inject_command(bob, f"/users@{name}", chat=group)  # a member: as in a private chat
    await botnet.tg.wait_for(
        lambda: any("don't know that command" in (m.text or "") for m in _bot_messages(botnet, group))
    )
    botnet.tg.inject_command(ADMIN, "/users")  # the same admin in private: answered
    await botnet.wait_for_text(ADMIN, "")
    assert not any("private chat" in (m.text or "") for m in botnet.sent(ADMIN))


async def test_balance_jobs_and_wallet_links_are_answered_only_in_private(botnet: BotNet, group: TgChat) -> None:
    carol = _member(botnet, "Carol", credit=3 * RLC)
    for command in ("/balance", "/jobs", "/link"):
        botnet.tg.inject_command(carol, command, chat=group)
    await botnet.tg.wait_for(lambda: sum("private chat" in (m.text or "") for m in _bot_messages(botnet, group)) == 3)
    said = " ".join(m.text or "" for m in _bot_messages(botnet, group))
    assert "3 RLC" not in said and "3.00" not in said  # the group never reads her credit
    assert "0x" not in said  # nor a link challenge or an address
    botnet.tg.inject_command(carol, "/balance")  # in private: answered with her credit
    await botnet.wait_for_text(carol, "RLC")


async def test_segment_without_a_picture_says_how(botnet: BotNet, group: TgChat) -> None:
    bob = _member(botnet, "Bob")
    name = botnet.bot.app.bot.username
    text = botnet.tg.inject_text(bob, "a message without a picture", chat=group)
    botnet.tg.inject_command(bob, f"/segment@{name}", chat=group, reply_to=text["message_id"])
    await botnet.tg.wait_for(lambda: any("Reply /segment" in (m.text or "") for m in _bot_messages(botnet, group)))
    assert botnet.ledger.user_jobs(bob.id) == []


def _album_replies(bn: BotNet, chat: TgChat) -> list[Any]:
    return [m for m in _bot_messages(bn, chat) if m.kind == "photo" and m.api.get("media_group_id")]


async def test_an_album_in_a_group_with_privacy_mode_segments_the_captioned_photo_and_says_why(
    botnet: BotNet, group: TgChat
) -> None:
    """Privacy mode on: Telegram gives the bot only the album's photo whose caption mentions it. That one is
    segmented (as an ordinary photo, paid by who sent it) and the sender reads, in words, why not the others
    and how to have them all."""
    ann, bob = _member(botnet, "Ann"), _member(botnet, "Bob")
    name = botnet.bot.app.bot.username
    state = botnet.tg.bot()
    updates = state.counters.update_id
    sent = inject.album(state, ann, [photo_bytes(seed=31 + i) for i in range(3)], f"@{name} these three", group)
    botnet.tg.inject_text(bob, "lovely", chat=group)
    assert state.counters.update_id == updates + 1  # only the captioned photo reached the bot
    result = await _result_for(botnet, group, sent[0]["message_id"])
    assert "Charged" in (result.caption or "") and not result.api.get("media_group_id")
    note = next(m for m in _bot_messages(botnet, group) if "In a group I see only the photo" in (m.text or ""))
    assert note.reply_to == sent[0]["message_id"] and "private chat" in note.text and "/segment" in note.text
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(ann.id)
    assert "album" not in job.options and job.user_message_id == sent[0]["message_id"]
    assert job.state.value == "DELIVERED"
    charged = job.app_price + job.workerpool_price + botnet.settings.fee_nrlc  # one photo's price, no album fee
    assert botnet.ledger.balance(ann.id).posted == RLC - charged
    answered = {m.reply_to for m in _bot_messages(botnet, group)}
    assert answered == {sent[0]["message_id"]}  # nothing answers the photos the bot never saw
    assert botnet.ledger.user_jobs(bob.id) == []
    # the others can still be asked for one by one: a member's reply /segment reaches the bot
    botnet.tg.inject_command(bob, "/segment", chat=group, reply_to=sent[1]["message_id"])
    await _result_for(botnet, group, sent[1]["message_id"])
    await botnet.settle()
    [asked] = botnet.ledger.user_jobs(bob.id)
    assert asked.state.value == "DELIVERED" and asked.user_message_id == sent[1]["message_id"]
    botnet.ledger.audit()


async def test_an_album_in_a_group_without_privacy_mode_is_one_album_job(botnet: BotNet, group: TgChat) -> None:
    """Privacy mode off: every photo of the album arrives; one caption mentioning the bot asks for the whole
    album (one job, one task, one album reply answering the album). An album that does not mention the bot
    is not for it: nothing is said, nothing is charged."""
    ann, bob = _member(botnet, "Ann"), _member(botnet, "Bob")
    name = botnet.bot.app.bot.username
    state = botnet.tg.bot()
    state.privacy_mode = False
    try:
        updates = state.counters.update_id
        inject.album(state, bob, [photo_bytes(seed=41 + i) for i in range(2)], "our holiday", group)
        sent = inject.album(state, ann, [photo_bytes(seed=51 + i) for i in range(3)], f"@{name} all of them", group)
        assert state.counters.update_id == updates + 5  # the bot gets every photo of both albums
        await botnet.tg.wait_for(lambda: len(_album_replies(botnet, group)) == 3, timeout=90)
        await botnet.settle()
    finally:
        state.privacy_mode = True
    [job] = botnet.ledger.user_jobs(ann.id)
    assert job.state.value == "DELIVERED", (job.state, job.error)
    assert job.options["album"]["messages"] == [m["message_id"] for m in sent]
    replies = _album_replies(botnet, group)
    assert replies[0].caption.startswith("3 of 3 pictures segmented")
    assert replies[0].reply_to == sent[0]["message_id"]
    s = botnet.settings
    charged = job.app_price + job.workerpool_price + s.fee_nrlc + 3 * s.album_photo_fee_nrlc
    assert botnet.ledger.balance(ann.id).posted == RLC - charged
    assert botnet.ledger.user_jobs(bob.id) == [] and botnet.ledger.balance(bob.id).posted == RLC
    answered = {m.reply_to for m in _bot_messages(botnet, group)}
    assert answered == {sent[0]["message_id"]}  # Bob's album got no word
    assert not any("In a group I see only" in (m.text or "") for m in _bot_messages(botnet, group))
    assert botnet.ledger.inbox.pending() == []
    botnet.ledger.audit()
