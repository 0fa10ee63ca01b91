"""Telling the user is part of a job: a bot killed after a refund (or a hold) but before telling it tells it
after the restart, once, and a later restart does not tell it again (the books record that it was told).

At least once: a kill between Telegram's answer and the record in the books tells twice (named point
`after_tell`); never zero times. The bot runs as a real process on the devnet (see tests/fixtures_e2e.py).
"""

from __future__ import annotations

import contextlib
import signal

import pytest

from ledger import JobState
from tests.fixtures_bot import photo_bytes
from tests.fixtures_e2e import ADMIN, E2E, BotDied

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def notices(e2e: E2E, user: object) -> list[str]:
    """The refund messages the user got (the status message says "Refunded in full" without "was")."""
    return [m.text for m in e2e.sent(user) if m.text and "was refunded in full" in m.text]


@pytest.mark.parametrize("point", ["before_tell", "after_tell"])
async def test_a_refund_killed_before_it_was_told_is_told_after_the_restart(e2e: E2E, point: str) -> None:
    e2e.net.pool.set_fault("app_error")  # the task completes with an error archive: refunded by the operator
    user = e2e.new_user()
    await e2e.start_bot(crash_at=point)
    e2e.tg.inject_photo(user, photo_bytes(seed=80 + len(point)))
    assert await e2e.wait_dead(timeout=60) == -signal.SIGKILL, e2e.bot.log_tail()
    assert f"point={point}" in e2e.logs()
    [job] = e2e.jobs(user)
    assert job.state.value == "REFUNDED", (job.state, job.error)
    told_before = len(notices(e2e, user))
    assert told_before == (0 if point == "before_tell" else 1)

    await e2e.start_bot()
    await e2e.wait_for(lambda: e2e.ledger.seen_event("told", f"REFUNDED:{job.id}"), 30, "the refund told")
    texts = notices(e2e, user)
    assert len(texts) == told_before + 1  # at least once; twice only after a kill at after_tell
    assert "could not process the picture" in texts[-1]
    await e2e.wait_for(
        lambda: any((m.text or "").startswith("↩️ Refunded in full") for m in e2e.sent(user)),
        30,
        "the status message's last stage",
    )

    e2e.stop_bot()  # one more restart: told already, so not told again
    bot = await e2e.start_bot()
    await e2e.wait_for(
        lambda: "event=resume jobs=0 untold=0" in bot.log_path.read_text(errors="replace"),
        30,
        "the third start's resume",
    )
    assert len(notices(e2e, user)) == told_before + 1
    bal = e2e.ledger.balance(user.id)
    assert (bal.posted, bal.pending) == (10**9, 0)
    e2e.ledger.audit()


async def test_a_hold_killed_before_it_was_told_is_told_after_the_restart(e2e: E2E) -> None:
    """Books that saw a task start which the chain calls not started (a chain reset between the two) hold
    the job at start-up; killed before telling it, the next start tells the user and the admins once."""
    e2e.net.pool.set_fault("no_show")  # the task stays UNSET on chain
    user = e2e.new_user()
    await e2e.start_bot()
    e2e.tg.inject_command(ADMIN, "/start")  # the admin's chat, where holds are reported
    await e2e.tg.wait_for(lambda: bool(e2e.tg.sent(ADMIN.id)), timeout=20)
    e2e.tg.inject_photo(user, photo_bytes(seed=90))
    await e2e.wait_for(lambda: bool(e2e.jobs(user)) and e2e.jobs(user)[0].state is JobState.MATCHED, 60, "a deal")
    [job] = e2e.jobs(user)
    assert (await e2e.net.pool.wait_task(job.task_id, 30)).state == "no_show"
    e2e.stop_bot()
    e2e.ledger.transition(job.id, JobState.MATCHED, JobState.RUNNING)  # what the books knew before a reset

    with contextlib.suppress(BotDied):  # it may die before it first polls Telegram
        await e2e.start_bot(crash_at="before_tell")
    assert await e2e.wait_dead(timeout=60) == -signal.SIGKILL, e2e.bot.log_tail()
    held = e2e.ledger.get_job(job.id)
    assert held.state is JobState.NEEDS_ADMIN and "not started" in held.error, held.error

    def told() -> list[str]:
        return [m.text for m in e2e.sent(user) if m.text and "is held for an operator" in m.text]

    def admin_told() -> list[str]:
        return [m.text for m in e2e.tg.sent(ADMIN.id) if m.text and "needs an admin" in m.text and job.id in m.text]

    assert told() == [] and admin_told() == []
    await e2e.start_bot()
    await e2e.wait_for(lambda: bool(told()), 30, "the hold told")
    await e2e.wait_for(lambda: bool(admin_told()), 30, "the admin told")
    await e2e.wait_for(
        lambda: e2e.ledger.seen_event("admin_told", f"NEEDS_ADMIN:{held.id}:{held.state_times['NEEDS_ADMIN']}"),
        30,
        "admin_told recorded",
    )
    bot = await e2e.start_bot()  # stops the running one first
    await e2e.wait_for(
        lambda: "untold=0 unannounced=0" in bot.log_path.read_text(errors="replace"), 30, "the third start's resume"
    )
    assert len(told()) == 1 and "Your money is safe" in told()[0]
    assert len(admin_told()) == 1 and "not started" in admin_told()[0]
    assert e2e.ledger.get_job(job.id).state is JobState.NEEDS_ADMIN  # held until an admin decides
    bal = e2e.ledger.balance(user.id)
    assert (bal.posted, bal.pending) == (10**9, job.max_price)
    e2e.ledger.audit()
