"""The status board: what a chat's status messages show, and when, while Telegram limits each chat to about
one message a second.

The board reads its `clock` and waits with its `sleep`; here both are a fake clock that moves only when the test
advances it, so "within the pacing window" and "after RetryAfter" are exact, never wall-clock. The Bot API
is the fake of tests/fakes.py, which records each edit and raises Telegram's errors on demand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from bot.status_board import StatusBoard
from tests.fakes import FakeBot, FakeClock, settle

PACE = 1.0
ALICE, BOB = 4242, 4343


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=5_000.0)


@pytest.fixture
def bot(clock: FakeClock) -> FakeBot:
    return FakeBot(clock=clock)


@pytest.fixture
async def board(bot: FakeBot, clock: FakeClock) -> AsyncIterator[StatusBoard]:
    board = StatusBoard(bot, min_interval=PACE, clock=clock.monotonic, sleep=clock.sleep)
    yield board
    for queue in board._chats.values():  # a test may end with edits still queued: do not leak their tasks
        if queue.task is not None:
            queue.task.cancel()


def edits(bot: FakeBot, chat: int | None = None) -> list[tuple[int, str]]:
    return [(c.kwargs["message_id"], c.kwargs["text"]) for c in bot.of("edit_message_text", chat)]


async def test_stages_shown_in_one_turn_become_one_edit_with_the_last_text(board: StatusBoard, bot: FakeBot) -> None:
    for text in ("received", "order signed", "matching"):
        board.show(ALICE, 7, text)
    await settle()
    assert edits(bot) == [(7, "matching")]
    assert board.edits_sent == 1


async def test_edits_within_the_pacing_window_are_coalesced_into_one_with_the_last_text(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    board.show(ALICE, 7, "received")
    await settle()
    assert edits(bot) == [(7, "received")]

    board.show(ALICE, 7, "order signed")
    await clock.advance(0.3)
    board.show(ALICE, 7, "matching")
    await clock.advance(0.3)
    board.show(ALICE, 7, "matched")
    await clock.advance(0.3)  # 0.9 s after the first edit: still inside the window
    assert edits(bot) == [(7, "received")]

    await clock.advance(0.2)
    assert edits(bot) == [(7, "received"), (7, "matched")]
    first, second = bot.of("edit_message_text")
    assert second.at - first.at >= PACE


async def test_two_messages_of_one_chat_each_get_their_latest_text_one_per_window(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    board.show(ALICE, 7, "job 1 received")
    board.show(ALICE, 8, "job 2 received")
    board.show(ALICE, 7, "job 1 matched")
    await settle()
    assert edits(bot) == [(7, "job 1 matched")]
    await clock.advance(PACE)
    assert edits(bot) == [(7, "job 1 matched"), (8, "job 2 received")]


async def test_a_message_just_sent_to_the_chat_delays_the_next_edit(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    board.touch(ALICE)  # e.g. the result photo went out just now
    board.show(ALICE, 7, "delivered")
    await clock.advance(PACE / 2)
    assert edits(bot) == []
    await clock.advance(PACE / 2)
    assert edits(bot) == [(7, "delivered")]


async def test_different_chats_do_not_wait_for_each_other(board: StatusBoard, bot: FakeBot, clock: FakeClock) -> None:
    board.show(ALICE, 7, "alice received")
    await settle()
    board.show(ALICE, 7, "alice matched")  # waits for Alice's window
    board.show(BOB, 9, "bob received")
    await settle()
    assert edits(bot, BOB) == [(9, "bob received")]
    assert edits(bot, ALICE) == [(7, "alice received")]
    await clock.advance(PACE)
    assert edits(bot, ALICE) == [(7, "alice received"), (7, "alice matched")]


async def test_a_chat_told_to_retry_later_does_not_hold_up_another_chat(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    bot.fail("edit_message_text", RetryAfter(dt.timedelta(seconds=30)))
    board.show(ALICE, 7, "alice received")
    await settle()
    board.show(BOB, 9, "bob received")
    await settle()
    assert edits(bot, BOB) == [(9, "bob received")]


async def test_message_is_not_modified_is_not_an_error(
    board: StatusBoard, bot: FakeBot, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.status_board")
    bot.fail(
        "edit_message_text",
        BadRequest("Message is not modified: specified new message content and reply markup are exactly the same"),
    )
    board.show(ALICE, 7, "matched")
    await settle()
    board.show(ALICE, 7, "running")
    await clock.advance(PACE)
    assert edits(bot) == [(7, "matched"), (7, "running")]
    assert "status_edit" not in caplog.text  # neither refused nor failed: nothing to report
    assert board.edits_sent == 1

    bot.fail("edit_message_text", BadRequest("Message is not modified"))
    told = asyncio.get_running_loop().create_task(board.show_now(ALICE, 7, "running"))
    await clock.advance(PACE)
    assert await told is True


async def test_a_message_that_vanished_is_forgotten_not_retried(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    bot.fail("edit_message_text", BadRequest("Message to edit not found"))
    board.show(ALICE, 7, "matched")
    await settle()
    await clock.advance(10 * PACE)
    assert edits(bot) == [(7, "matched")]  # tried once, never again


async def test_show_now_sends_at_once_and_supersedes_a_pending_text(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    board.show(ALICE, 7, "got it")  # queued, not sent yet
    told = await board.show_now(ALICE, 7, "That is not a picture. Nothing was charged.")
    assert told is True
    assert edits(bot) == [(7, "That is not a picture. Nothing was charged.")]
    await clock.advance(2 * PACE)
    assert edits(bot) == [(7, "That is not a picture. Nothing was charged.")]  # the older text never follows


async def test_show_now_respects_the_pacing_window(board: StatusBoard, bot: FakeBot, clock: FakeClock) -> None:
    board.show(ALICE, 7, "received")
    await settle()
    task = asyncio.get_running_loop().create_task(board.show_now(ALICE, 8, "refused"))
    await settle()
    assert not task.done() and edits(bot) == [(7, "received")]
    await clock.advance(PACE)
    assert await task is True
    assert edits(bot) == [(7, "received"), (8, "refused")]


async def test_show_now_refused_for_good_is_known_as_told(board: StatusBoard, bot: FakeBot) -> None:
    bot.fail("edit_message_text", Forbidden("bot was blocked by the user"))
    assert await board.show_now(ALICE, 7, "refused") is True
    assert len(edits(bot)) == 1  # refused: trying again cannot help


async def test_show_now_returns_false_when_telegram_stays_unreachable(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    bot.fail("edit_message_text", *[NetworkError("connection reset")] * 4)
    task = asyncio.get_running_loop().create_task(board.show_now(ALICE, 7, "refused"))
    await clock.advance(60)
    assert await task is False  # the caller keeps the update for later: the user has not read it
    assert len(edits(bot)) == 4


async def test_show_now_gets_through_after_a_network_blip(board: StatusBoard, bot: FakeBot, clock: FakeClock) -> None:
    bot.fail("edit_message_text", NetworkError("connection reset"))
    task = asyncio.get_running_loop().create_task(board.show_now(ALICE, 7, "refused"))
    await clock.advance(60)
    assert await task is True
    assert edits(bot) == [(7, "refused"), (7, "refused")]


async def test_retry_after_is_honoured_then_the_latest_text_is_sent(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    bot.fail("edit_message_text", RetryAfter(dt.timedelta(seconds=5)))
    board.show(ALICE, 7, "matched")
    await settle()
    board.show(ALICE, 7, "running")
    await clock.advance(4.9)
    assert edits(bot) == [(7, "matched")]  # nothing before Telegram's 5 s are over
    await clock.advance(0.2)
    assert edits(bot) == [(7, "matched"), (7, "running")]


async def test_an_edit_refused_with_retry_after_is_sent_again_when_it_passes(
    board: StatusBoard, bot: FakeBot, clock: FakeClock
) -> None:
    bot.fail("edit_message_text", RetryAfter(dt.timedelta(seconds=5)))
    board.show(ALICE, 7, "matched")
    await settle()
    await clock.advance(5.1)
    assert edits(bot) == [(7, "matched"), (7, "matched")]
