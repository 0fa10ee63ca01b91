"""Jobs that go wrong on iExec, and a bot restarted in the middle of a job, on a devnet.

Deadlines are reached by moving chain time (category 0: 300 s x 10), never by waiting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devnet import chain as devchain
from ledger import JobState
from tests.fixtures_bot import BotNet, bot_on, photo_bytes, start_botnet

pytestmark = pytest.mark.asyncio(loop_scope="session")
CREDIT = 10**9
FINAL_DEADLINE_S = 10 * 300


async def wait_state(bn: BotNet, user_id: int, *states: JobState, timeout: float = 30) -> object:
    """The user's latest job once it is in one of `states` (polled); fails loudly, with the state it is in,
    after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = bn.ledger.user_jobs(user_id)
        if jobs and jobs[0].state in states:
            return jobs[0]
        if asyncio.get_running_loop().time() > deadline:
            now = f"{jobs[0].state.value} ({jobs[0].error})" if jobs else "no job"
            raise AssertionError(
                f"the job of user {user_id} not in {[s.value for s in states]} after {timeout} s: {now}"
            )
        await asyncio.sleep(0.05)


def assert_refunded(bn: BotNet, user_id: int) -> object:
    [job] = bn.ledger.user_jobs(user_id)
    assert job.state is JobState.REFUNDED
    bal = bn.ledger.balance(user_id)
    assert (bal.posted, bal.pending) == (CREDIT, 0)
    bn.ledger.audit()
    return job


@pytest.mark.parametrize("fault", ["no_show", "crash_before_contribute"])
async def test_a_task_past_its_deadline_is_claimed_and_refunded(devnet_module, tmp_path: Path, fault: str) -> None:
    async with bot_on(devnet_module, tmp_path, start_warning_s=1) as bn:
        bn.net.pool.set_fault(fault)
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=60))
        job = await wait_state(bn, user.id, JobState.MATCHED, JobState.RUNNING)
        if fault == "no_show":
            await bn.wait_for_text(user, "has not started yet")  # told, with the deadline
        else:
            await wait_state(bn, user.id, JobState.RUNNING)
        await asyncio.to_thread(devchain.increase_time, bn.net.anvil.rpc_url, FINAL_DEADLINE_S + 60)
        await bn.wait_for_text(user, "did not finish before its deadline", timeout=40)
        await bn.settle()
        assert_refunded(bn, user.id)
        task = await bn.bot.chain.hub.view_task(bytes.fromhex(job.task_id[2:]))
        assert int(task.status) == 4  # FAILED: claimed, the hub gave our stake back


async def test_an_app_error_is_refunded_at_the_operators_expense(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path) as bn:
        bn.net.pool.set_fault("app_error")
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=61))
        await bn.wait_for_text(user, "could not process the picture", timeout=40)
        await bn.settle()
        assert_refunded(bn, user.id)
        expense = bn.ledger.account("operator:refund_expense")
        assert expense is not None and expense.debits_posted == 150_000_000  # app + pool paid on chain


async def test_a_lost_result_is_refunded_after_retries(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, fast_retries=True) as bn:
        bn.net.pool.set_fault("gateway_lose")
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=62))
        await bn.wait_for_text(user, "could not be downloaded", timeout=40)
        await bn.settle()
        job = assert_refunded(bn, user.id)
        assert job.attempts == 3


async def test_no_offer_within_the_price_is_refunded_after_the_timeout(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, workerpool_max_price_nrlc=1, match_timeout_s=2) as bn:
        user = bn.new_user()
        bn.tg.inject_photo(user, photo_bytes(seed=63))
        await bn.wait_for_text(user, "no iExec worker was available", timeout=20)
        await bn.settle()
        job = assert_refunded(bn, user.id)
        assert job.deal_id is None and bn.ledger.txs_for_job(job.id) == []


async def test_a_failing_market_means_refund_after_the_timeout(devnet_module, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, match_timeout_s=2) as bn:
        bn.net.pool.set_fault("market_500", count=10_000)
        try:
            user = bn.new_user()
            bn.tg.inject_photo(user, photo_bytes(seed=64))
            await bn.wait_for_text(user, "no iExec worker was available", timeout=20)
            await bn.settle()
            assert_refunded(bn, user.id)
        finally:
            bn.net.market._fail_queue.clear()  # the stand-in has no public "stop failing"


@pytest.mark.parametrize("stop_at", [JobState.MATCHED, JobState.RUNNING])
async def test_restart_in_the_middle_finishes_with_one_deal_and_one_settlement(
    devnet_module, tmp_path: Path, stop_at: JobState
) -> None:
    first = await start_botnet(devnet_module, tmp_path, worker_args="--sleep 2")
    user = first.new_user()
    try:
        first.tg.inject_photo(user, photo_bytes(seed=65))
        # On a busy machine the worker may start before MATCHED is seen: stopping at RUNNING then is
        # just as much "in the middle" (a deal on chain, no settlement yet).
        later = (JobState.RUNNING,) if stop_at is JobState.MATCHED else ()
        job = await wait_state(first, user.id, stop_at, *later, timeout=60)
    finally:
        await first.bot.stop()
    second = await start_botnet(devnet_module, tmp_path, worker_args="--sleep 2")
    try:
        result = await second.result_for(user, timeout=60)
        assert "Charged 0.16 RLC" in result.caption
        await second.settle()
        [done] = second.ledger.user_jobs(user.id)
        assert done.state is JobState.DELIVERED and done.deal_id == job.deal_id
        matches = [t for t in second.ledger.txs_for_job(done.id) if "match" in (t.purpose or "").lower()]
        assert len(matches) == 1
        assert second.ledger.balance(user.id).posted == CREDIT - 160_000_000
        assert second.ledger.balance(user.id).pending == 0
        assert sum(m.kind == "photo" for m in second.sent(user)) == 1
        second.ledger.audit()
    finally:
        await second.bot.stop()
