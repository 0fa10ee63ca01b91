"""The user commands and messages, answered as a user expects, without a devnet.

The real python-telegram-bot application with the bot's own handlers (`bot.app.register_handlers`) polls the
Telegram stand-in over HTTP, in process; behind the handlers are the real books (SQLite in a temporary
folder), a real pipeline and status board, and the fake chain gateway (tests/fakes.py): no job is driven
here, jobs are put in the books as intake leaves them. Every expected answer is a text of `bot.texts`.
The slow tier (test_bot_commands.py) runs the same commands on a devnet with jobs that really run.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot import texts
from bot.admin_ops import AdminOps
from bot.app import register_handlers
from bot.pipeline import Pipeline, job_id_of
from bot.services import KEY, Services
from bot.settings import Settings
from bot.status_board import StatusBoard
from devnet.telegram import RateLimits, SentMessage, TelegramStandIn, TgUser
from ledger import Job, JobState, Ledger
from tests.fakes import FakeChain, FakeInputs
from tests.fixtures_telegram import BOT_USERNAME, TOKEN, polling, ptb_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = TgUser(id=900_001, first_name="Ada", username="admin")
_ids = itertools.count(610_001)
_messages = itertools.count(1)


@dataclass
class Chat:
    """The stand-in, and the parts behind the bot's handlers."""

    tg: TelegramStandIn
    ledger: Ledger
    settings: Settings

    def user(self, credit: int = 0) -> TgUser:
        user = TgUser(id=next(_ids), first_name="User", username=None)
        if credit:
            self.ledger.grant(f"grant-{user.id}", user.id, credit)
        return user

    def job_of(self, user: TgUser) -> Job:
        """A picture of `user` taken in (RECEIVED, its maximum price reserved), as intake leaves it."""
        message = next(_messages)
        return self.ledger.create_job(
            job_id_of(user.id, message), user.id, user.id, self.settings.max_price_nrlc, user_message_id=message
        )

    async def answer(self, user: TgUser, command: str = "", *, text: str | None = None) -> SentMessage:
        """Send `/command` (or `text`) as `user`; the bot's first answer."""
        return (await self.answers(user, command, text=text))[0]

    async def answers(
        self, user: TgUser, command: str = "", *, text: str | None = None, n: int = 1
    ) -> list[SentMessage]:
        before = len(self.tg.sent(user.id))
        if text is not None:
            self.tg.inject_text(user, text)
        else:
            self.tg.inject_command(user, command)
        return (await self.tg.wait_sent(user.id, before + n))[before:]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chat(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chat]:
    books: Path = tmp_path_factory.mktemp("handlers")
    async with TelegramStandIn(rate_limits=RateLimits.off()) as tg:
        tg.add_bot(TOKEN, BOT_USERNAME)
        settings = Settings(  # type: ignore[call-arg]  # a pydantic-settings option
            _env_file=None, data_dir=books, db_path=books / "books.db", admin_ids=str(ADMIN.id), fee_nrlc=10_000_000
        )
        ledger = Ledger(str(settings.db_path))
        app = ptb_app(tg)
        chain = FakeChain()
        board = StatusBoard(app.bot)
        pipeline = Pipeline(settings, ledger, chain, FakeInputs(), app.bot, board)  # type: ignore[arg-type]  # the fakes stand where the real parts go
        app.bot_data[KEY] = Services(
            settings=settings,
            ledger=ledger,
            pipeline=pipeline,
            admin_ops=AdminOps(ledger, chain, pipeline),  # type: ignore[arg-type]  # as Pipeline above
            board=board,
        )
        register_handlers(app)
        async with polling(app, timeout=1):
            yield Chat(tg, ledger, settings)
        await pipeline.stop()
        ledger.close()


async def test_start_says_the_price_the_fee_the_balance_and_the_privacy(chat: Chat) -> None:
    user = chat.user(credit=2 * 10**9)
    reply = await chat.answer(user, "/start")
    assert reply.raw_text == texts.START.format(
        price="0.31 RLC", fee="0.01 RLC", available="2 RLC", demo="", privacy=texts.PRIVACY_STANDARD
    )


async def test_help_lists_the_user_commands(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/help")
    assert reply.raw_text is not None and reply.raw_text.startswith(texts.HELP)
    assert texts.ADMIN_HELP not in reply.raw_text  # admin commands stay hidden


async def test_help_shows_admins_their_commands_too(chat: Chat) -> None:
    reply = await chat.answer(ADMIN, "/help")
    assert reply.raw_text is not None and reply.raw_text.startswith(texts.HELP)
    assert texts.ADMIN_HELP.strip() in reply.raw_text


async def test_balance_of_a_new_user_is_zero(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/balance")
    assert reply.raw_text == texts.BALANCE.format(available="0 RLC", pending="0 RLC")


async def test_balance_shows_what_a_job_in_progress_holds(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    chat.job_of(user)
    reply = await chat.answer(user, "/balance")
    assert reply.raw_text == texts.BALANCE.format(available="0.69 RLC", pending="0.31 RLC")


async def test_status_with_nothing_in_progress(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/status")
    assert reply.raw_text == texts.NO_ACTIVE
    assert reply.buttons() == [("🔄 Refresh", "status")]


async def test_status_lists_a_job_in_progress_with_its_stage(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    job = chat.job_of(user)
    reply = await chat.answer(user, "/status")
    assert reply.raw_text is not None
    assert reply.raw_text.startswith(
        texts.STATUS_LINE.format(short=job.id[-8:], stage=texts.STAGE_NAMES["RECEIVED"], elapsed="")
    )


async def test_jobs_of_a_new_user(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/jobs")
    assert reply.raw_text == texts.NO_JOBS


async def test_jobs_lists_recent_jobs_and_how_they_ended(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    job = chat.job_of(user)
    chat.ledger.refund_job(job.id, f"{job.id}:refund", error="no_offer: ")
    reply = await chat.answer(user, "/jobs")
    refunded = chat.ledger.get_job(job.id)
    assert refunded is not None
    assert reply.raw_text == "<b>Recent jobs</b>\n" + texts.job_line(refunded)
    assert "refunded" in (reply.text or "")


async def test_cancel_with_nothing_to_cancel(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/cancel")
    assert reply.raw_text == texts.CANCEL_NONE


async def test_cancel_returns_a_job_not_bought_yet(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    job = chat.job_of(user)
    reply = await chat.answer(user, "/cancel")
    assert reply.raw_text == texts.CANCELLED.format(short=job.id[-8:], amount="0.31 RLC")
    cancelled = chat.ledger.get_job(job.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert chat.ledger.balance(user.id).available == 10**9


async def test_cancel_leaves_a_job_already_bought(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    job = chat.job_of(user)
    chat.ledger.transition(job.id, JobState.RECEIVED, JobState.ORDER_SIGNED)
    chat.ledger.transition(job.id, JobState.ORDER_SIGNED, JobState.MATCHING)  # the match is being sent
    reply = await chat.answer(user, "/cancel")
    assert reply.raw_text == texts.CANCEL_NONE
    assert chat.ledger.balance(user.id).pending == chat.settings.max_price_nrlc


async def test_an_unknown_command(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), "/frobnicate")
    assert reply.raw_text == texts.UNKNOWN_COMMAND


async def test_an_admin_command_from_a_user_is_unknown_and_does_nothing(chat: Chat) -> None:
    user = chat.user()
    reply = await chat.answer(user, f"/fund {user.id} 5")
    assert reply.raw_text == texts.UNKNOWN_COMMAND
    assert chat.ledger.balance(user.id).available == 0


async def test_a_text_that_is_not_a_link_gets_a_hint(chat: Chat) -> None:
    reply = await chat.answer(chat.user(), text="what can you do?")
    assert reply.raw_text == texts.HINT


async def test_a_link_that_is_not_http_is_refused(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    reply = await chat.answer(user, text="ftp://example.org/cat.jpg")
    assert reply.raw_text == texts.REJECTED.format(reason="Only http:// and https:// links work.")
    assert chat.ledger.user_jobs(user.id) == []


async def test_a_sticker_is_not_a_picture(chat: Chat) -> None:
    user = chat.user()
    before = len(chat.tg.sent(user.id))
    chat.tg.inject_sticker(user)
    [reply] = (await chat.tg.wait_sent(user.id, before + 1))[before:]
    assert reply.raw_text == texts.UNSUPPORTED.format(what="A sticker")


async def test_a_voice_message_is_not_a_picture(chat: Chat) -> None:
    user = chat.user()
    before = len(chat.tg.sent(user.id))
    chat.tg.inject_voice(user)
    [reply] = (await chat.tg.wait_sent(user.id, before + 1))[before:]
    assert reply.raw_text == texts.UNSUPPORTED.format(what="A voice")


async def test_a_file_that_is_not_an_image_is_refused_by_its_type(chat: Chat) -> None:
    user = chat.user(credit=10**9)
    before = len(chat.tg.sent(user.id))
    chat.tg.inject_document(user, b"%PDF-1.4 not a picture", "report.pdf", "application/pdf")
    [reply] = (await chat.tg.wait_sent(user.id, before + 1))[before:]
    assert reply.raw_text == texts.UNSUPPORTED.format(what="A application/pdf file")
    assert chat.ledger.user_jobs(user.id) == []


async def test_a_picture_without_credit_is_refused_before_anything_is_downloaded(chat: Chat) -> None:
    user = chat.user()
    reply = await chat.answer(user, text="https://example.org/cat.jpg")
    assert reply.raw_text == texts.NO_CREDIT.format(available="0 RLC", price="0.31 RLC")
    assert chat.ledger.user_jobs(user.id) == []


async def test_link_and_unlink_say_self_funding_is_off_on_a_bot_without_it(chat: Chat) -> None:
    user = chat.user()
    for command in ("/link", "/unlink 0x" + "ab" * 20):
        reply = await chat.answer(user, command)
        assert reply.raw_text == texts.FUNDING_OFF
    assert chat.ledger.links.addresses(user.id) == []
