"""Nothing a user sends is lost or dropped in silence: the books' inbox of Telegram updates.

The bot stores each update before Telegram forgets it (the next getUpdates confirms it), so a SIGKILL
between receiving a picture and writing its job still ends with the job after a restart; a redelivered
update does nothing twice; and a message that maps to an existing job but carries another picture is
answered, never ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
from pathlib import Path

import pytest
from telegram import Update

from bot.inbox import UpdateInbox
from ledger import InvalidArgument, Ledger
from ledger.schema import SCHEMA_VERSION
from tests.fixtures_bot import BotNet, photo_bytes
from tests.fixtures_e2e import E2E

on_loop = pytest.mark.asyncio(loop_scope="session")
ACK = "Got it"


# --- the inbox table ------------------------------------------------------------------------------------


def test_inbox_keeps_once_forgets_the_body_when_done_and_prunes(tmp_path: Path) -> None:
    clock = [1_000.0]
    with Ledger(tmp_path / "b.db", clock=lambda: clock[0]) as book:
        assert book.inbox.keep([(7, '{"update_id": 7}'), (8, '{"update_id": 8}')]) == [7, 8]
        assert book.inbox.keep([(7, '{"update_id": 7, "other": 1}'), (9, "{}")]) == [9]  # 7 stays as it was
        assert [(e.update_id, e.body) for e in book.inbox.pending()] == [
            (7, '{"update_id": 7}'),
            (8, '{"update_id": 8}'),
            (9, "{}"),
        ]
        assert book.inbox.done(8) and not book.inbox.done(8) and not book.inbox.done(123)
        assert book.inbox.is_done(8) and not book.inbox.is_done(7)
        assert [e.update_id for e in book.inbox.pending()] == [7, 9]
        body = book._conn.execute("SELECT body FROM inbox WHERE update_id = 8").fetchone()[0]
        assert body == ""  # nothing of the user's message is kept once it was handled
        clock[0] += 10
        assert book.inbox.prune(before_ms=int(clock[0] * 1000)) == 1
        assert [e.update_id for e in book.inbox.pending()] == [7, 9]
        for bad in ((-1, "{}"), (True, "{}"), (10, ""), (11, "x" * 1_000_001)):
            with pytest.raises(InvalidArgument):
                book.inbox.keep([bad])  # type: ignore[list-item]  # the wrong type is the point


def test_a_handled_body_leaves_no_bytes_in_the_file(tmp_path: Path) -> None:
    secret = "my-private-words-" * 40
    with Ledger(tmp_path / "b.db") as book:
        book.inbox.keep([(7, json.dumps({"update_id": 7, "text": secret}))])
        book.inbox.done(7)
        book.inbox.prune(before_ms=0)  # deletes nothing here; truncates the write-ahead log
        files = [p for p in tmp_path.iterdir() if p.name.startswith("b.db")]
        assert all(b"my-private-words" not in p.read_bytes() for p in files), [p.name for p in files]


def test_books_of_version_3_get_the_inbox(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with Ledger(path) as book:
        book.grant("g", 1, 10, "")
    raw = sqlite3.connect(path)  # as the previous version left the file
    raw.execute("DROP TABLE inbox")
    for table in ("wallet_links", "link_challenges", "deposits"):  # version 5's tables came later
        raw.execute(f"DROP TABLE {table}")
    raw.execute("DELETE FROM schema_migrations WHERE version >= 4")
    raw.commit()
    raw.close()
    with Ledger(path) as book:
        assert book.schema_version() == SCHEMA_VERSION >= 4
        assert book.inbox.keep([(1, "{}")]) == [1]
        assert book.balance(1).posted == 10
        book.audit()


def _update(update_id: int, text: str) -> Update:
    return Update.de_json(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "date": 0,
                "chat": {"id": 5, "type": "private"},
                "from": {"id": 5, "is_bot": False, "first_name": "A"},
                "text": text,
            },
        },
        None,
    )


def test_an_update_too_long_to_keep_is_set_aside_and_the_others_are_kept(tmp_path: Path, caplog) -> None:
    # 200,000 line separators: 600 KB as Telegram sends them, 1.2 M characters as to_json writes them.
    big = _update(21, "\u2028" * 200_000)
    with Ledger(tmp_path / "b.db") as book, caplog.at_level(logging.ERROR, logger="bot.inbox"):
        inbox = UpdateInbox(book)
        assert inbox.store([_update(20, "hi"), big, _update(22, "there")]) == ([20, 22], [21])
        assert [e.update_id for e in book.inbox.pending()] == [20, 22]  # the others wait to be handled
        assert book.inbox.is_done(21)  # a redelivery of it is recognised and never handled
        assert book._conn.execute("SELECT body FROM inbox WHERE update_id = 21").fetchone()[0] == ""
        assert inbox.keep([big, _update(23, "more")]) == [23]
    assert sum("event=update_set_aside update=21" in r.getMessage() for r in caplog.records) == 1


# --- the running bot ---------------------------------------------------------------------------------------


@on_loop
async def test_every_update_is_marked_handled(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_command(user, "/balance")
    await botnet.wait_for_text(user, "Available")
    botnet.tg.inject_photo(user, photo_bytes(seed=80))
    await botnet.result_for(user)
    botnet.tg.inject_text(user, "hello")
    await botnet.wait_for_text(user, "Send me a photo")
    await botnet.settle()
    conn = botnet.ledger._conn
    rows = conn.execute("SELECT update_id, body, done_at FROM inbox ORDER BY update_id").fetchall()
    assert len(rows) >= 3 and all(r[2] is not None and r[1] == "" for r in rows), rows
    assert botnet.ledger.inbox.pending() == []


@on_loop
async def test_a_message_too_long_to_keep_does_not_stop_polling(botnet: BotNet) -> None:
    user = botnet.new_user()
    botnet.tg.inject_text(user, "\u2028" * 200_000)  # 1.2 M characters once PTB writes it as JSON
    botnet.tg.inject_command(user, "/balance")
    await botnet.wait_for_text(user, "Available")  # the update after it is handled: polling went on
    for _ in range(200):  # the last handler group marks /balance done just after its answer was sent
        if botnet.ledger.inbox.pending() == []:
            break
        await asyncio.sleep(0.05)
    assert botnet.ledger.inbox.pending() == []
    rows = botnet.ledger._conn.execute("SELECT COUNT(*) FROM inbox WHERE done_at IS NOT NULL").fetchone()[0]
    assert rows == 2  # the long one is kept as handled (set aside), so a redelivery is ignored


@on_loop
async def test_a_message_id_reused_for_another_picture_is_answered(
    botnet: BotNet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = botnet.new_user()
    first = botnet.tg.inject_photo(user, photo_bytes(seed=81))
    await botnet.result_for(user)
    await botnet.settle()
    [job] = botnet.ledger.user_jobs(user.id)
    balance = botnet.ledger.balance(user.id)
    # A Telegram that forgot its numbering (the stand-in before its counters were kept): the next message
    # gets the number of the first one.
    botnet.tg.bot().counters.messages[user.id] = first["message_id"] - 1
    second = botnet.tg.inject_photo(user, photo_bytes(seed=82))
    assert second["message_id"] == first["message_id"]
    answer = await botnet.wait_for_text(user, "could not take this picture")
    assert job.id[-8:] in answer.text and "Nothing was charged" in answer.text
    assert "event=message_id_reused" in caplog.text
    await botnet.settle()
    assert botnet.ledger.user_jobs(user.id) == [botnet.ledger.get_job(job.id)]
    assert botnet.ledger.balance(user.id) == balance


# --- SIGKILL between receiving a picture and writing its job -------------------------------------------------


@on_loop
async def test_killed_after_telegram_forgot_the_photo_the_job_is_made_after_restart(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot(crash_at="after_ack")  # killed after the "got it", before the download and the job
    msg = e2e.tg.inject_photo(user, photo_bytes(seed=83))
    assert await e2e.wait_dead(timeout=60) == -signal.SIGKILL, e2e.bot.log_tail()
    assert "point=after_ack" in e2e.logs()
    assert e2e.tg.pending_updates() == 0  # Telegram was told it was received: it will not send it again
    assert e2e.jobs(user) == []
    [entry] = e2e.ledger.inbox.pending()
    assert json.loads(entry.body)["message"]["message_id"] == msg["message_id"]

    await e2e.start_bot()
    [job] = await e2e.wait_terminal(user, timeout=90)
    assert job.state.value == "DELIVERED", (job.state, job.error, e2e.bot.log_tail())
    assert job.user_message_id == msg["message_id"]
    result = await e2e.result_for(user)
    assert result.reply_to == msg["message_id"]
    assert "event=inbox_replay" in e2e.logs()
    # The "got it" sent before the kill goes on as the job's status message: no second one, none left behind.
    [status] = [m for m in e2e.replies_to(user, msg["message_id"]) if m.kind == "text"]
    assert job.status_message_id == status.message_id and ACK in (status.edits[0].text or "")
    await e2e.wait_for(lambda: ACK not in (e2e.tg.sent(user.id)[0].text or ""), 10, "the status edited")
    await e2e.wait_for(lambda: e2e.ledger.inbox.pending() == [], 10, "the update marked handled")
    assert e2e.ledger.balance(user.id).posted == 10**9 - e2e.charged(job)
    e2e.ledger.audit()


@on_loop
async def test_killed_right_after_get_updates_the_photo_is_taken_in_once(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot(crash_at="after_inbox")  # killed once the fetched update is in the books
    msg = e2e.tg.inject_photo(user, photo_bytes(seed=84))
    assert await e2e.wait_dead(timeout=60) == -signal.SIGKILL, e2e.bot.log_tail()
    assert e2e.tg.pending_updates() == 1  # not confirmed: Telegram sends it again, and the inbox has it too
    assert len(e2e.ledger.inbox.pending()) == 1

    await e2e.start_bot()
    [job] = await e2e.wait_terminal(user, timeout=90)
    assert job.state.value == "DELIVERED", (job.state, job.error, e2e.bot.log_tail())
    await e2e.result_for(user)
    assert "event=duplicate_update" in e2e.logs()  # the redelivery was recognised
    acks = [
        m
        for m in e2e.replies_to(user, msg["message_id"])
        if any(ACK in (t or "") for t in (m.text, *(r.text for r in m.edits)))
    ]
    assert len(acks) == 1 and len(e2e.results(user)) == 1
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    e2e.ledger.audit()
