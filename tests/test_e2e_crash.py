"""The bot killed with SIGKILL at each named step of a job, then restarted on the same books.

Whatever the step, the job ends with exactly one deal on chain and one settlement in the books, the user is
charged once (the matched prices plus the fee) and has the segmented picture: twice at most, and only when
the kill fell between sending the reply and recording it (`after_reply`). The devnet runs the small test app.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.fixtures_bot import photo_bytes
from tests.fixtures_e2e import E2E

pytestmark = pytest.mark.asyncio(loop_scope="session")

# after_match is the bot's point right after the match transaction is mined, before its receipt is read
# into a deal id; before_match is just before it is handed to the sender. Together they surround the
# broadcast (the sender's submit and wait are one call of the iExec client).
CRASH_POINTS = [
    "after_reserve",
    "after_sign",
    "before_match",
    "after_broadcast",
    "after_match",
    "after_deal",
    "after_download",
    "after_settle",
    "after_reply",
]
POINT_NAMES = [p if isinstance(p, str) else p.values[0] for p in CRASH_POINTS]


async def test_photo_delivered_once_without_a_crash(e2e: E2E) -> None:
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.tg.inject_photo(user, photo_bytes(seed=3))
    result = await e2e.result_for(user)
    assert result.kind == "photo" and "Charged" in (result.caption or "")
    [job] = await e2e.wait_terminal(user)
    assert job.state.value == "DELIVERED"
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    assert e2e.ledger.balance(user.id).posted == 10**9 - e2e.charged(job)
    e2e.ledger.audit()


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_killed_at_a_named_step_then_restarted(e2e: E2E, point: str) -> None:
    user = e2e.new_user()
    await e2e.start_bot(crash_at=point)
    e2e.tg.inject_photo(user, photo_bytes(seed=10 + POINT_NAMES.index(point)))
    code = await e2e.wait_dead(timeout=60)
    assert code == -signal.SIGKILL, e2e.bot.log_tail()
    assert f"point={point}" in e2e.logs()
    e2e.ledger.audit()  # the books balance even at the instant of the kill

    await e2e.start_bot()
    outcome = await e2e.expire_if_abandoned(user)
    [job] = await e2e.wait_terminal(user, timeout=90)
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    bal = e2e.ledger.balance(user.id)
    if outcome in ("completed", "unmatched"):
        assert job.state.value == "DELIVERED", (job.state, job.error, e2e.bot.log_tail())
        assert e2e.settlements(job) == [(f"{job.id}:post", "post")]
        assert (bal.posted, bal.pending) == (10**9 - e2e.charged(job), 0)
        assert (job.app_price, job.workerpool_price) == (e2e.net.config.app_price, e2e.net.config.pool_price)
        await e2e.wait_for(lambda: bool(e2e.results(user)), 30, "the reply")
        replies = len(e2e.results(user))
        assert replies == 1 or (point == "after_reply" and replies == 2), replies
    else:
        # The bot was down when the worker came for the input (it is served by the bot): the task failed
        # on chain, so the bot claimed it and refunded the user, who is told why.
        assert point in ("after_match", "after_deal"), (point, outcome)
        assert job.state.value == "REFUNDED", (job.state, job.error, e2e.bot.log_tail())
        assert [kind for _, kind in e2e.settlements(job)] == ["void"]
        assert (bal.posted, bal.pending) == (10**9, 0)
        await e2e.wait_text(user, "did not finish before its deadline")
        assert e2e.results(user) == []
    e2e.ledger.audit()
