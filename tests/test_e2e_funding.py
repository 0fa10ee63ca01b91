"""Deposits survive a bot SIGKILLed at random instants: each transfer is credited exactly once and told at least once.

The bot runs as a real process (`python -m bot`) on the devnet. A user links an address through the chat
(/link, a signature made with eth_account, the reply), then that address sends RLC to the bot's wallet at
random instants while the bot is killed (SIGKILL, no cleanup) and restarted again and again, each life a
uniform random length (seeded: the seed is printed and named in a failure; `FUNDING_SEED=<n>` replays it).
Transfers keep landing whether the bot is up or down (the chain does not wait). At the end, with the bot
running: the books hold one credit per transfer and the user's balance is their sum (the audit passes), and
the chat says "Received <amount> RLC from 0x…" for every transfer at least once.

Every check is on the end state (books, chat), so it holds for every kill instant; the waits poll with
timeouts. This module never imports the bot's code (the bot is a black box).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from devnet.accounts import SPARE_1
from devnet.chain import fund_rlc
from ledger import LedgerBusy
from tests.fixtures_e2e import E2E

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

RLC = 10**9
TRANSFERS = 8
LIVES = 7


def _read(fn: Any) -> Any:
    """A read of the books the bot writes all the time: read again while they are busy."""
    for _ in range(200):
        try:
            return fn()
        except LedgerBusy:
            time.sleep(0.02)
    return fn()


def _rlc_text(nrlc: int) -> str:
    return f"{nrlc / RLC:g} RLC"


async def _link(e2e: E2E, user: Any) -> None:
    e2e.tg.inject_command(user, "/link")
    text = await e2e.wait_text(user, "Link a wallet")
    typed = json.loads(next(line for line in text.splitlines() if line.startswith('{"types"')))
    signed = Account.sign_message(encode_typed_data(full_message=typed), SPARE_1.key)
    e2e.tg.inject_text(user, "0x" + bytes(signed.signature).hex())
    await e2e.wait_text(user, f"Linked {SPARE_1.address.lower()}")


async def test_transfers_while_the_bot_is_killed_are_credited_once_and_told(e2e: E2E) -> None:
    seed = int(os.environ.get("FUNDING_SEED") or random.randrange(1 << 30))
    print(f"funding kill test seed={seed}")
    rng = random.Random(seed)
    assert e2e.ledger is not None and e2e.net.anvil is not None and e2e.net.deployment is not None
    books, rpc, deployment = e2e.ledger, e2e.net.anvil.rpc_url, e2e.net.deployment
    e2e.write_env(DEPOSIT_POLL_S="0.2", MIN_DEPOSIT_RLC="0.01")
    user = e2e.new_user(credit_nrlc=0)
    await e2e.start_bot()
    await _link(e2e, user)
    cursor = f"deposits_cursor:{deployment.chain_id}:{e2e.net.bot_address.lower()}"
    await e2e.wait_for(lambda: _read(lambda: books.get_value(cursor)) is not None, 20, "the deposit cursor")

    amounts = [(i + 1) * RLC // 10 for i in range(TRANSFERS)]  # 0.1, 0.2, ... 0.8 RLC: each its own notice
    sent: list[str] = []

    async def send_all() -> None:
        for nrlc in amounts:
            await asyncio.sleep(rng.uniform(0.2, 2.0))  # a random instant (not a synchronisation)
            receipt = await asyncio.to_thread(fund_rlc, rpc, deployment, e2e.net.bot_address, nrlc, SPARE_1)
            sent.append("0x" + bytes(receipt["transactionHash"]).hex())

    sender = asyncio.create_task(send_all())
    lives = []
    try:
        for _ in range(LIVES):
            e2e.kill_bot()
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # down for a while: transfers land meanwhile
            e2e.spawn_bot()
            life = rng.uniform(0.3, 3.0)
            lives.append(round(life, 2))
            await asyncio.sleep(life)  # the random instant of the next kill (not a synchronisation)
        await sender
    finally:
        if not sender.done():
            sender.cancel()
    e2e.kill_bot()
    await e2e.start_bot()
    what = f"seed={seed} lives={lives}"

    def credited() -> int:
        return _read(lambda: books.deposits.totals().credited_count)

    await e2e.wait_for(lambda: credited() == TRANSFERS, 60, f"{TRANSFERS} credited deposits ({what})")
    for nrlc in amounts:
        await e2e.wait_text(user, f"Received {_rlc_text(nrlc)} from", timeout=30)
    totals = _read(books.deposits.totals)
    assert (totals.credited, totals.credited_count, totals.account_net) == (sum(amounts), TRANSFERS, sum(amounts)), what
    assert totals.unclaimed_count == 0, what
    assert _read(lambda: books.balance(user.id)).available == sum(amounts), what
    mine = _read(lambda: books.deposits.of_user(user.id, limit=100))
    assert sorted(d.tx_hash for d in mine) == sorted(sent), what
    told = [m.text or "" for m in e2e.sent(user) if (m.text or "").startswith("Received ")]
    for nrlc in amounts:
        assert any(t.startswith(f"Received {_rlc_text(nrlc)} from") for t in told), (nrlc, what)
    print(f"funding kill test: {len(lives)} kills, {len(told)} notices for {TRANSFERS} transfers ({what})")
    _read(books.audit)
