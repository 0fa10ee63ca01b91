"""Load: 20 users send 3 photos each at once to the bot (a subprocess) on the devnet's small test app.

Every job is delivered, each user is charged exactly the matched prices plus the fee for each of their
jobs, the Telegram stand-in (with Telegram's flood limits on) never had to answer 429, and the books
balance.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures_bot import photo_bytes
from tests.fixtures_e2e import E2E

pytestmark = pytest.mark.asyncio(loop_scope="session")
USERS, PHOTOS, CREDIT = 20, 3, 2 * 10**9


@pytest.mark.slow
async def test_twenty_users_three_photos_each_at_once(e2e: E2E) -> None:
    users = [e2e.new_user(CREDIT) for _ in range(USERS)]
    limited_before = e2e.tg.rate_limited
    await e2e.start_bot()
    for i, user in enumerate(users):
        for k in range(PHOTOS):
            e2e.tg.inject_photo(user, photo_bytes(seed=i * PHOTOS + k))
    for user in users:
        jobs = await e2e.wait_terminal(user, PHOTOS, timeout=240)
        assert [j.state.value for j in jobs] == ["DELIVERED"] * PHOTOS
    for user in users:
        jobs = e2e.jobs(user)
        await e2e.wait_for(lambda u=user: len(e2e.results(u)) >= PHOTOS, 30, "every reply")
        assert len(e2e.results(user)) == PHOTOS
        bal = e2e.ledger.balance(user.id)
        assert (bal.posted, bal.pending) == (CREDIT - sum(e2e.charged(j) for j in jobs), 0)
        for job in jobs:
            assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
            assert e2e.settlements(job) == [(f"{job.id}:post", "post")]
    e2e.ledger.audit()
    methods = sorted({c.method for c in e2e.tg.calls() if c.status == 429})
    assert e2e.tg.rate_limited == limited_before, f"the bot was answered 429 Too Many Requests ({methods})"
