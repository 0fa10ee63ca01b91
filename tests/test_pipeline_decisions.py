"""The pipeline's decisions, in process: what a user reads and what the books hold when there is no offer, the
stake is short, an offer is taken, the task ends well, badly or never, or the chain does not know a deal.

The chain gateway and the Bot API are fakes (tests/fakes.py); the ledger is the real one on a SQLite file;
the slow tier drives the same decisions through a devnet. Time that decides (the match timeout) is the
pipeline's injected clock; retry pauses are made tiny; nothing here waits on wall-clock time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from telegram.error import BadRequest, Forbidden

from bot import texts
from bot.chain_gateway import ChainGateway, TaskKind
from bot.errors import ChainDisagrees, OfferTaken
from bot.pipeline import Pipeline, job_id_of
from bot.settings import Settings
from bot.status_board import StatusBoard
from iexec.errors import DecryptionError, ResultDownloadError
from ledger import IEXEC_SPEND, REFUND_EXPENSE, Job, JobState, Ledger
from tests.fakes import (
    UNKNOWN_DEAL,
    FakeBot,
    FakeChain,
    FakeClock,
    FakeInputs,
    error_result,
    good_result,
    offer,
    png,
    until,
)

ADMIN = 900_001
CREDIT = 10**9
FEE = 10_000_000


@dataclass
class World:
    """A pipeline on fakes with real books."""

    pipeline: Pipeline
    ledger: Ledger
    chain: FakeChain
    bot: FakeBot
    clock: FakeClock
    inputs: FakeInputs
    settings: Settings
    tmp: Path

    def new_job(self, n: int = 1) -> Job:
        """A user with 1 RLC whose picture was taken in (RECEIVED, max price reserved), driven at once."""
        user = chat = 7_000 + n
        job_id = job_id_of(chat, 10 + n)
        self.ledger.grant(f"grant-{user}", user, CREDIT)
        picture = self.tmp / "uploads" / f"{job_id}.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        picture.write_bytes(png())
        job = self.ledger.create_job(
            job_id,
            user,
            chat,
            self.settings.max_price_nrlc,
            user_message_id=10 + n,
            status_message_id=20 + n,
            input_ref=str(picture),
            options={"args": self.settings.worker_args},
        )
        self.pipeline.drive(job.id)
        return job

    def job(self, job_id: str) -> Job:
        job = self.ledger.get_job(job_id)
        assert job is not None
        return job

    async def reaches(self, job_id: str, *states: JobState) -> Job:
        await until(lambda: self.job(job_id).state in states)
        return self.job(job_id)

    async def told(self, chat: int, needle: str) -> str:
        """The message sent to `chat` that contains `needle` (waits for it)."""
        await until(lambda: any(needle in t for t in self.bot.texts(chat)))
        return next(t for t in self.bot.texts(chat) if needle in t)


def fast_retries(pipeline: Pipeline) -> None:
    """Retry pauses of zero (the pipeline's policy `no_wait()`; older trees: a tiny fixed delay)."""
    for part in (pipeline, pipeline.endings):
        if hasattr(part, "retry"):
            part.retry = part.retry.no_wait()
        else:  # before the retry policy came to the bot
            part.retry_delays = (0.001,)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    settings = Settings(  # type: ignore[call-arg]  # a pydantic-settings option
        _env_file=None,
        data_dir=tmp_path,
        db_path=tmp_path / "books.db",
        admin_ids=str(ADMIN),
        poll_interval_s=0.001,
        match_timeout_s=300,
        fee_nrlc=FEE,
    )
    ledger = Ledger(str(settings.db_path), clock=clock)
    chain, bot, inputs = FakeChain(), FakeBot(), FakeInputs()
    board = StatusBoard(bot, min_interval=0.0)
    pipeline = Pipeline(settings, ledger, chain, inputs, bot, board, clock=clock)  # type: ignore[arg-type]  # the fakes stand where the real parts go
    fast_retries(pipeline)
    pipeline.result_attempts = 3
    yield World(pipeline, ledger, chain, bot, clock, inputs, settings, tmp_path)
    await pipeline.stop()
    await board.drain(timeout=1)
    ledger.audit()  # whatever happened, the books balance
    ledger.close()


def matched(world: World, app_price: int = 30_000_000, pool_price: int = 50_000_000) -> None:
    world.chain.offers = [offer(app_price, pool_price)]


# ------------------------------------------------------------------------------------------ matching


async def test_no_offer_until_the_timeout_refunds_no_offer_and_releases_the_reservation(world: World) -> None:
    job = world.new_job()
    await until(lambda: world.chain.count("best_offer") >= 3)
    assert world.job(job.id).state is JobState.ORDER_SIGNED  # still looking: the timeout is not reached
    assert world.ledger.balance(job.user_id).pending == world.settings.max_price_nrlc

    world.clock.now += world.settings.match_timeout_s + 1
    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert refunded.error is not None and refunded.error.startswith("no_offer")
    balance = world.ledger.balance(job.user_id)
    assert (balance.available, balance.pending) == (CREDIT, 0)
    told = await world.told(job.chat_id, "refunded in full")
    assert texts.REFUND_REASONS["no_offer"] in told
    assert world.chain.count("match") == 0
    assert job.id in world.inputs.revoked


async def test_stake_too_low_tells_the_admin_and_refunds_no_stake(world: World) -> None:
    matched(world)
    world.chain.stake = 0
    job = world.new_job()
    await until(lambda: world.chain.count("ensure_stake") >= 2)
    assert world.job(job.id).state is JobState.ORDER_SIGNED

    world.clock.now += world.settings.match_timeout_s + 1
    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert refunded.error is not None and refunded.error.startswith("no_stake")
    assert "stake too low" in (await world.told(ADMIN, job.id)).lower()
    assert texts.REFUND_REASONS["no_stake"] in await world.told(job.chat_id, "refunded in full")
    assert world.ledger.balance(job.user_id).available == CREDIT
    assert world.chain.count("match") == 0


async def test_an_offer_taken_before_our_match_is_followed_by_the_next_offer(world: World) -> None:
    first, second = offer(30_000_000, 50_000_000), offer(40_000_000, 60_000_000)
    world.chain.offers = [first, second]
    world.chain.match_errors = [OfferTaken("app order consumed")]
    job = world.new_job()

    done = await world.reaches(job.id, JobState.MATCHED)

    assert world.chain.calls["match"] == [first, second]
    assert (done.app_price, done.workerpool_price) == (40_000_000, 60_000_000)
    assert not [t for t in world.bot.texts(job.chat_id) if "refunded" in t]


async def test_a_match_stores_the_deal_and_its_prices_and_shows_the_stage(world: World) -> None:
    matched(world, 30_000_000, 50_000_000)
    job = world.new_job()

    done = await world.reaches(job.id, JobState.MATCHED)

    assert done.deal_id is not None
    assert done.task_id == ChainGateway.task_id(done.deal_id)
    assert (done.app_price, done.workerpool_price) == (30_000_000, 50_000_000)
    assert world.chain.count("match") == 1
    # the stake checked before matching is the offer's price
    assert world.chain.calls["ensure_stake"][-1] == 80_000_000
    # still only reserved: nothing is charged before the result
    assert world.ledger.balance(job.user_id).pending == world.settings.max_price_nrlc
    await until(lambda: any("Task bought" in c.kwargs["text"] for c in world.bot.of("edit_message_text")))


async def test_a_deal_the_chain_does_not_know_holds_the_job_for_an_admin_with_the_reason(world: World) -> None:
    matched(world)
    world.chain.deal = UNKNOWN_DEAL
    job = world.new_job()

    held = await world.reaches(job.id, JobState.NEEDS_ADMIN)

    assert held.error is not None and "does not know deal" in held.error
    admin_text = await world.told(ADMIN, job.id)
    assert "needs an admin" in admin_text and "does not know deal" in admin_text
    user_text = await world.told(job.chat_id, "held for an operator")
    assert texts.HELD_RESERVED in user_text
    assert world.ledger.balance(job.user_id).pending == world.settings.max_price_nrlc  # money stays reserved


async def test_a_task_the_chain_disowns_after_the_match_is_held(world: World) -> None:
    matched(world)
    world.chain.push_error(ChainDisagrees("the chain does not know deal 0xab of task 0xcd: was the chain reset?"))
    job = world.new_job()

    held = await world.reaches(job.id, JobState.NEEDS_ADMIN)

    assert held.error is not None and "was the chain reset" in held.error
    assert "was the chain reset" in await world.told(ADMIN, job.id)


async def test_cancel_before_the_match_returns_the_whole_reservation(world: World) -> None:
    job = world.new_job()  # no offer: it stays ORDER_SIGNED
    await world.reaches(job.id, JobState.ORDER_SIGNED)

    cancelled = await world.pipeline.cancel(job.user_id)

    assert cancelled == [(job.id, world.settings.max_price_nrlc)]
    assert world.job(job.id).state is JobState.CANCELLED
    assert world.ledger.balance(job.user_id).available == CREDIT


# ------------------------------------------------------------------------------------------ results


async def test_a_good_result_is_charged_app_and_pool_price_plus_fee_and_sent(world: World) -> None:
    matched(world, 30_000_000, 50_000_000)
    world.chain.results = [good_result(["person", "person", "dog"])]
    world.chain.push(TaskKind.INITIALIZED)
    world.chain.push(TaskKind.FINALIZED, results=b"result-location")
    job = world.new_job()

    done = await world.reaches(job.id, JobState.DELIVERED)

    charged = 30_000_000 + 50_000_000 + FEE
    balance = world.ledger.balance(job.user_id)
    assert (balance.available, balance.pending) == (CREDIT - charged, 0)
    assert world.chain.calls["fetch_result"] == [b"result-location"]
    [photo] = world.bot.of("send_photo", job.chat_id)
    assert photo.kwargs["reply_to_message_id"] == job.user_message_id
    assert photo.kwargs["photo"] == (world.tmp / "results" / job.id / "result.png").read_bytes()
    assert "2 persons, 1 dog" in photo.kwargs["caption"]
    assert "Charged 0.09 RLC (task 0.08 RLC + fee 0.01 RLC)" in photo.kwargs["caption"]
    assert done.error is None
    assert job.id in world.inputs.revoked
    fees_and_spend = world.ledger.account(IEXEC_SPEND)
    assert fees_and_spend is not None and fees_and_spend.credits_posted == 80_000_000


async def test_a_result_telegram_refuses_as_a_photo_goes_as_a_file(world: World) -> None:
    matched(world)
    world.chain.results = [good_result()]
    world.bot.fail("send_photo", BadRequest("Photo_invalid_dimensions"))
    world.chain.push(TaskKind.FINALIZED, results=b"r")
    job = world.new_job()

    done = await world.reaches(job.id, JobState.DELIVERED)

    [doc] = world.bot.of("send_document", job.chat_id)
    assert doc.kwargs["filename"] == "result.png"
    assert done.error is not None and "photo refused" in done.error
    assert world.ledger.balance(job.user_id).pending == 0


async def test_a_user_who_blocked_the_bot_is_charged_and_the_books_say_why_nothing_was_sent(world: World) -> None:
    matched(world)
    world.chain.results = [good_result()]
    world.bot.fail("send_photo", Forbidden("bot was blocked by the user"))
    world.chain.push(TaskKind.FINALIZED, results=b"r")
    job = world.new_job()

    done = await world.reaches(job.id, JobState.DELIVERED)

    assert done.error is not None and "blocked" in done.error
    assert world.ledger.balance(job.user_id).available == CREDIT - 80_000_000 - FEE


async def test_an_error_archive_is_refunded_at_the_operators_cost_with_the_apps_message(world: World) -> None:
    matched(world, 30_000_000, 50_000_000)
    world.chain.results = [error_result("picture has no <pixels>")]
    world.chain.push(TaskKind.FINALIZED, results=b"r")
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert refunded.error == "app_error: picture has no <pixels>"
    balance = world.ledger.balance(job.user_id)
    assert (balance.available, balance.pending) == (CREDIT, 0)
    expense = world.ledger.account(REFUND_EXPENSE)
    assert expense is not None and expense.debits_posted == 80_000_000  # the operator paid the task
    told = await world.told(job.chat_id, "refunded in full")
    assert "picture has no &lt;pixels&gt;" in told  # the app's words, escaped
    assert not world.bot.of("send_photo")


async def test_a_result_that_will_not_download_is_refunded_after_the_attempts(world: World) -> None:
    matched(world)
    world.chain.results = [ResultDownloadError("gateway answered 504")]
    world.chain.push(TaskKind.FINALIZED, results=b"r")
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert world.chain.count("fetch_result") == world.pipeline.result_attempts == 3
    assert refunded.error == "bad_result: the result could not be downloaded"
    assert world.ledger.balance(job.user_id).available == CREDIT
    assert "could not be downloaded" in await world.told(job.chat_id, "refunded in full")


async def test_a_result_the_bots_key_cannot_open_is_refunded_without_retrying(world: World) -> None:
    matched(world)
    world.chain.results = [DecryptionError("wrong key")]
    world.chain.push(TaskKind.FINALIZED, results=b"r")
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert world.chain.count("fetch_result") == 1
    assert refunded.error is not None and "could not be decrypted" in refunded.error
    assert world.ledger.balance(job.user_id).available == CREDIT


# ------------------------------------------------------------------------------------------ deadlines


async def test_a_deadline_claims_the_task_then_refunds_expired(world: World) -> None:
    matched(world)
    world.chain.push(TaskKind.DEADLINE, initialized=False)
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert world.chain.calls["claim"] == [(refunded.deal_id, refunded.task_id, False)]
    assert refunded.task_id in world.chain.calls["unfollow"]
    assert refunded.error is not None and refunded.error.startswith("expired")
    assert world.ledger.balance(job.user_id).available == CREDIT
    assert texts.REFUND_REASONS["expired"] in await world.told(job.chat_id, "refunded in full")


async def test_a_started_task_past_its_deadline_is_claimed_as_started(world: World) -> None:
    matched(world)
    world.chain.push(TaskKind.INITIALIZED)
    world.chain.push(TaskKind.DEADLINE, initialized=True)
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert world.chain.calls["claim"] == [(refunded.deal_id, refunded.task_id, True)]
    assert "RUNNING" in refunded.state_times


async def test_a_task_claimed_by_someone_else_is_refunded_without_a_claim(world: World) -> None:
    matched(world)
    world.chain.push(TaskKind.CLAIMED)
    job = world.new_job()

    refunded = await world.reaches(job.id, JobState.REFUNDED)

    assert world.chain.count("claim") == 0
    assert refunded.error is not None and refunded.error.startswith("expired")


# ------------------------------------------------------------------------------------------ the driver


async def test_a_step_that_returns_at_once_without_change_is_paused(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A watcher that answers "initialized" at once for a running job (a missing wait) must not spin."""
    matched(world)
    for _ in range(200):
        world.chain.push(TaskKind.INITIALIZED)
    caplog.set_level(logging.WARNING, logger="bot.pipeline")
    job = world.new_job()

    await until(lambda: "event=step_spinning" in caplog.text)
    calls = world.chain.count("wait_task")
    for _ in range(50):  # plenty of turns for a spinning driver to ask again
        await until(lambda: True)
    assert world.chain.count("wait_task") == calls  # paused (for SPIN_PAUSE_S), not asking again
    assert calls < 20
    assert world.job(job.id).state is JobState.RUNNING
