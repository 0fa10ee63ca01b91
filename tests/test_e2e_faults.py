"""Faults of the outside world during jobs: the chain unreachable, the market failing, the workerpool never
showing up, the app failing, the result gateway losing the result.

Whatever happens: nothing is lost (every job ends delivered or refunded), nothing is charged twice (one
settlement per job, balances exact, `audit()` passes) and the user is always told. The bot runs as a
subprocess on a devnet running the small test app.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures_bot import photo_bytes
from tests.fixtures_e2e import E2E, FINAL_DEADLINE_S

pytestmark = pytest.mark.asyncio(loop_scope="session")
CREDIT = 10**9


async def assert_delivered_once(e2e: E2E, user, job) -> None:  # type: ignore[no-untyped-def]  # user, job: the fixtures' own shapes
    assert job.state.value == "DELIVERED", (job.state, job.error)
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    assert e2e.settlements(job) == [(f"{job.id}:post", "post")]


def assert_refunded_once(e2e: E2E, user, job) -> None:  # type: ignore[no-untyped-def]  # as assert_delivered_once
    assert job.state.value == "REFUNDED", (job.state, job.error)
    assert len(e2e.settlements(job)) == 1
    bal = e2e.ledger.balance(user.id)
    assert (bal.posted, bal.pending) == (CREDIT, 0), "a refunded job costs the user nothing"
    assert e2e.results(user) == []


async def test_chain_unreachable_for_a_while_every_job_finishes(e2e: E2E) -> None:
    users = [e2e.new_user() for _ in range(3)]
    await e2e.start_bot()
    for i, user in enumerate(users):
        e2e.tg.inject_photo(user, photo_bytes(seed=40 + i))
    await e2e.wait_for(lambda: all(e2e.jobs(u) for u in users), 20, "the jobs created")
    e2e.net.anvil.freeze()  # SIGSTOP: the port stays open, nothing answers
    in_flight = [j.state.value for u in users for j in e2e.jobs(u) if not j.state.is_terminal()]
    try:
        await asyncio.sleep(9)  # not synchronisation: the outage's length is the point (retries, not a crash)
        assert e2e.bot.alive
    finally:
        e2e.net.anvil.thaw()
    for user in users:
        [job] = await e2e.wait_terminal(user, timeout=120)
        await assert_delivered_once(e2e, user, job)
        assert e2e.ledger.balance(user.id).posted == CREDIT - e2e.charged(job)
        assert len(e2e.results(user)) == 1
    assert in_flight, "the chain was frozen after the jobs ended, not in the middle of them"
    e2e.ledger.audit()


async def test_market_answering_500_is_retried(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.net.pool.set_fault("market_500", count=6)
    e2e.tg.inject_photo(user, photo_bytes(seed=50))
    await e2e.result_for(user, timeout=60)
    [job] = await e2e.wait_terminal(user)
    await assert_delivered_once(e2e, user, job)
    assert e2e.ledger.balance(user.id).posted == CREDIT - e2e.charged(job)
    e2e.ledger.audit()


async def test_workerpool_never_showing_up_is_claimed_and_refunded(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.net.pool.set_fault("no_show")
    stake_before = await asyncio.to_thread(e2e.wallet_stake)
    e2e.tg.inject_photo(user, photo_bytes(seed=60))
    await e2e.wait_for(lambda: bool(e2e.jobs(user)) and e2e.jobs(user)[0].task_id is not None, 30, "the job matched")
    [job] = e2e.jobs(user)
    assert (await e2e.net.pool.wait_task(job.task_id, 30)).state == "no_show"  # the pool gave the task up
    await asyncio.to_thread(e2e.increase_time, FINAL_DEADLINE_S + 100)
    [job] = await e2e.wait_terminal(user, timeout=60)
    assert_refunded_once(e2e, user, job)
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    status = await asyncio.to_thread(e2e.task_status, job)
    assert status == 4, "the task is claimed (FAILED) on chain"
    assert await asyncio.to_thread(e2e.wallet_stake) == stake_before, "the claim gave the hub stake back"
    await e2e.wait_text(user, "did not finish before its deadline")
    e2e.ledger.audit()


async def test_app_failing_refunds_and_says_why(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.net.pool.set_fault("app_error")
    e2e.tg.inject_photo(user, photo_bytes(seed=70))
    [job] = await e2e.wait_terminal(user, timeout=60)
    assert_refunded_once(e2e, user, job)
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    text = await e2e.wait_text(user, "segmentation app could not process the picture")
    assert "refund" in text.lower()
    e2e.ledger.audit()


@pytest.mark.slow
async def test_gateway_losing_the_result_refunds_after_retries(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.net.pool.set_fault("gateway_lose")
    e2e.tg.inject_photo(user, photo_bytes(seed=80))
    [job] = await e2e.wait_terminal(user, timeout=150)
    assert_refunded_once(e2e, user, job)
    assert job.attempts >= 8, job.attempts
    await e2e.wait_text(user, "could not be downloaded")
    e2e.ledger.audit()


async def test_gateway_answering_500_for_a_while_then_delivers(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.net.pool.set_fault("gateway_500")
    e2e.tg.inject_photo(user, photo_bytes(seed=90))
    await e2e.wait_for(lambda: bool(e2e.jobs(user)) and e2e.jobs(user)[0].attempts >= 1, 40, "a failed download")
    e2e.net.gateway.clear_faults()
    [job] = await e2e.wait_terminal(user, timeout=60)
    await assert_delivered_once(e2e, user, job)
    assert len(e2e.results(user)) == 1
    e2e.ledger.audit()
