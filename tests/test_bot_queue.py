"""Pictures beyond the ones in progress wait in line instead of being refused (issue 14, "Queue instead of
refusal"): reserved at intake, their place shown in the status message and /status, started in arrival order
as slots free up, taken out (and paid back) by /cancel, kept across a restart (the line is in the books).

Through the real bot (PTB over HTTP) on the devnet and the Telegram stand-in. The workerpool's `no_show`
fault keeps bought tasks from running, so the line stays still while a test looks at it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bot.texts import ordinal
from devnet.telegram import TgUser
from devnet.up import Devnet
from tests.fixtures_bot import BotNet, bot_on, photo_bytes

pytestmark = pytest.mark.asyncio(loop_scope="session")

RLC = 10**9


def _texts(msg: Any) -> list[str]:
    """Every text a bot message showed: its former versions, then the current one."""
    return [r.text or "" for r in msg.edits] + [msg.text or ""]


def _ever_said(bn: BotNet, user: TgUser, needle: str) -> bool:
    return any(needle in t for m in bn.sent(user) for t in _texts(m))


def _jobs_in_arrival_order(bn: BotNet, user: TgUser) -> list[Any]:
    """The user's jobs in the order they were taken in (reserved): the order of the line. Two pictures sent at
    once are downloaded side by side, so it may differ from the order of the messages by a few ms."""
    return sorted(bn.ledger.user_jobs(user.id, limit=100), key=lambda j: (j.created_at, j.user_message_id))


async def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 103, 111)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "103rd",
        "111th",
    ]


async def test_five_at_once_three_run_two_wait_in_line_then_cancel_pays_the_waiting_ones_back(
    devnet_module: Devnet, tmp_path: Path
) -> None:
    async with bot_on(devnet_module, tmp_path) as bn:
        devnet_module.pool.set_fault("no_show")  # bought tasks stay unstarted: the line does not move
        user = bn.new_user(credit_nrlc=5 * RLC)
        price = bn.settings.max_price_nrlc
        for seed in range(5):
            bn.tg.inject_photo(user, photo_bytes(seed=100 + seed))
        await bn.wait_for_text(user, "Queued: 2nd in line")
        await bn.wait_for_text(user, "Queued: 1st in line")
        await bn.tg.wait_for(lambda: sum(j.state.value == "MATCHED" for j in bn.ledger.user_jobs(user.id)) == 3, 30)
        jobs = _jobs_in_arrival_order(bn, user)
        assert [j.state.value for j in jobs] == ["MATCHED"] * 3 + ["RECEIVED"] * 2
        assert not any("in progress; wait" in (m.text or "") for m in bn.sent(user)), "nothing was refused"
        bal = bn.ledger.balance(user.id)
        assert bal.pending == 5 * price and bal.posted == 5 * RLC  # all five reserved, nothing charged

        bn.tg.inject_command(user, "/status")
        status = await bn.wait_for_text(user, "queued, 2nd in line")
        assert "queued, 1st in line" in status.text and status.text.count("waiting for the worker") == 3

        bn.tg.inject_command(user, "/cancel")
        await bn.tg.wait_for(lambda: sum("Cancelled job" in (m.text or "") for m in bn.sent(user)) == 2, 20)
        jobs = _jobs_in_arrival_order(bn, user)
        assert [j.state.value for j in jobs] == ["MATCHED"] * 3 + ["CANCELLED"] * 2
        bal = bn.ledger.balance(user.id)
        assert bal.pending == 3 * price and bal.posted == 5 * RLC  # the two waiting ones paid back in full
        await bn.bot.services.board.drain()
        queued_status = [m for m in bn.sent(user) if any("Queued:" in t for t in _texts(m))]
        assert len(queued_status) == 2 and all("Cancelled" in m.text for m in queued_status)
        bn.ledger.audit()
    devnet_module.pool.faults.clear()


async def test_a_full_line_refuses_with_the_cap_and_reserves_nothing(devnet_module: Devnet, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, max_jobs_in_flight=1, max_queued_per_user=2) as bn:
        devnet_module.pool.set_fault("no_show")
        user = bn.new_user(credit_nrlc=5 * RLC)
        for seed in range(4):
            bn.tg.inject_photo(user, photo_bytes(seed=200 + seed))
        refusal = await bn.wait_for_text(user, "waiting in line")
        assert "at most 2 can wait" in refusal.text and "Nothing was charged" in refusal.text
        await bn.wait_for_text(user, "Queued: 2nd in line")
        await bn.tg.wait_for(lambda: len(bn.ledger.user_jobs(user.id)) == 3, 20)
        assert bn.ledger.balance(user.id).pending == 3 * bn.settings.max_price_nrlc  # the refused one: nothing
        await bn.bot.services.board.drain()
        assert len(bn.ledger.user_jobs(user.id, limit=100)) == 3
    devnet_module.pool.faults.clear()


async def test_waiting_pictures_start_in_arrival_order_as_slots_free_and_all_are_delivered(
    devnet_module: Devnet, tmp_path: Path
) -> None:
    async with bot_on(devnet_module, tmp_path) as bn:
        user = bn.new_user(credit_nrlc=5 * RLC)
        for seed in range(5):
            bn.tg.inject_photo(user, photo_bytes(seed=300 + seed))

        def results() -> list[Any]:
            return [m for m in bn.sent(user) if m.kind in ("photo", "document") and m.data]

        await bn.tg.wait_for(lambda: len(results()) == 5, 120)
        await bn.settle()
        jobs = _jobs_in_arrival_order(bn, user)
        assert [j.state.value for j in jobs] == ["DELIVERED"] * 5
        assert sorted(m.reply_to for m in results()) == sorted(j.user_message_id for j in jobs)  # answers its photo
        signed = [j.state_times["ORDER_SIGNED"] for j in jobs]
        ended = sorted(j.state_times["DELIVERED"] for j in jobs[:3])
        # the 4th started only once one of the first three was done, the 5th after the 4th and a second end
        assert signed[3] >= ended[0] and signed[4] >= ended[1] and signed[3] <= signed[4]
        charged = sum(j.app_price + j.workerpool_price for j in jobs) + 5 * bn.settings.fee_nrlc
        bal = bn.ledger.balance(user.id)
        assert bal.pending == 0 and bal.posted == 5 * RLC - charged
        bn.ledger.audit()


async def test_a_restart_keeps_the_line_and_resumes_it_in_order(devnet_module: Devnet, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, max_jobs_in_flight=1) as bn:
        user = bn.new_user(credit_nrlc=5 * RLC)
        for seed in range(4):
            bn.tg.inject_photo(user, photo_bytes(seed=400 + seed))
        await bn.tg.wait_for(lambda: len(bn.ledger.user_jobs(user.id)) == 4, 30)
    # stopped: the line is in the books only
    async with bot_on(devnet_module, tmp_path, max_jobs_in_flight=1) as bn:
        before = _jobs_in_arrival_order(bn, user)
        assert sum(j.state.value == "RECEIVED" for j in before) >= 2, [j.state.value for j in before]

        def delivered() -> int:
            return sum(j.state.value == "DELIVERED" for j in bn.ledger.user_jobs(user.id))

        await bn.tg.wait_for(lambda: delivered() == 4, 120)
        await bn.settle()
        jobs = _jobs_in_arrival_order(bn, user)
        for earlier, later in itertools.pairwise(jobs):  # one at a time, in arrival order
            assert later.state_times["ORDER_SIGNED"] >= earlier.state_times["DELIVERED"], [
                (j.id, [(k, v % 100000) for k, v in j.state_times.items()]) for j in jobs
            ]
        assert bn.ledger.balance(user.id).pending == 0
        bn.ledger.audit()
