"""Users fund themselves, through the Telegram stand-in and the real PTB client, on a devnet.

A user sends /link, signs the message the bot shows with a test account (eth_account, as a wallet would),
answers with the signature and is linked; an RLC transfer (the devnet's RLC token `transfer`) from that
account to the bot's wallet is credited once and told ("Received 2 RLC from 0x…; balance 2 RLC"), and
/balance shows it. A transfer from an unlinked address waits in the admin's /unclaimed and is assigned once,
after a confirmation button. Forged, replayed and wrong-chain signatures are refused in words. /wallet and
/reconcile count the deposits. The watcher's loop outlives a chain that does not answer, and a notice is
marked told only once it was taken.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from bot.deposits import DepositService
from devnet.accounts import BOT, SPARE_1, SPARE_2
from devnet.anvil import free_port
from devnet.chain import fund_rlc
from devnet.telegram import TgUser
from iexec.deposits import DepositWatcher
from iexec.retry import RetryPolicy
from iexec.tx import connect
from ledger import Ledger
from tests.fixtures_bot import ADMIN, BotNet, bot_on

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the devnet tests are slow (their fixture says so)

RLC = 10**9
FAST = {"deposit_poll_s": 0.2, "min_deposit_rlc": "0.01"}


def typed_data_in(text: str) -> dict[str, Any]:
    """The EIP-712 message the bot showed, as the user copies it into a wallet."""
    line = next(line for line in text.splitlines() if line.startswith('{"types"'))
    return json.loads(line)


def sign_typed(account: Any, typed: dict[str, Any]) -> str:
    return "0x" + bytes(Account.sign_message(encode_typed_data(full_message=typed), account.key).signature).hex()


def short(address: str) -> str:
    return f"{address[:4]}…{address[-2:]}".lower()


async def transfer(bn: BotNet, sender: Any, nrlc: int) -> str:
    """`sender` sends `nrlc` of the devnet RLC token to the bot's wallet (a plain ERC-20 transfer)."""
    assert bn.net.anvil is not None and bn.net.deployment is not None
    receipt = await asyncio.to_thread(
        fund_rlc, bn.net.anvil.rpc_url, bn.net.deployment, bn.bot.chain.address, nrlc, sender
    )
    return "0x" + bytes(receipt["transactionHash"]).hex()


async def watching(bn: BotNet) -> None:
    """Wait until the deposit watcher has saved its first cursor (it starts at the head it first saw)."""
    key = f"deposits_cursor:31337:{bn.bot.chain.address.lower()}"
    await bn.tg.wait_for(lambda: bn.ledger.get_value(key) is not None, timeout=20)


async def ask_link(bn: BotNet, user: TgUser) -> Any:
    before = len(bn.sent(user))
    bn.tg.inject_command(user, "/link")
    await bn.tg.wait_for(lambda: len(bn.sent(user)) > before and "Link a wallet" in (bn.sent(user)[-1].text or ""), 20)
    return bn.sent(user)[-1]


async def answer(bn: BotNet, user: TgUser, send: Any) -> str:
    """The bot's next message to `user` after `send()`."""
    before = len(bn.sent(user))
    send()
    await bn.tg.wait_for(lambda: len(bn.sent(user)) > before, 20)
    return bn.sent(user)[before].text or ""


async def test_link_deposit_balance_and_refusals(devnet_module: Any, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, **FAST) as bn:
        user = bn.new_user(credit_nrlc=0)
        challenge = await ask_link(bn, user)
        assert bn.bot.chain.address in challenge.text and "31337" in challenge.text
        assert "private key" in challenge.text  # the warning: never send a key
        typed = typed_data_in(challenge.text)
        assert typed["message"]["telegramUserId"] == user.id
        signature = sign_typed(SPARE_1, typed)
        reply = await answer(bn, user, lambda: bn.tg.inject_text(user, signature))
        assert reply.startswith(f"✅ Linked {SPARE_1.address.lower()}") and bn.bot.chain.address in reply

        # the same signature again: its message was used up
        reply = await answer(bn, user, lambda: bn.tg.inject_text(user, signature))
        assert reply.startswith("❌") and "/link first" in reply

        await watching(bn)
        await transfer(bn, SPARE_1, 2 * RLC)
        told = await bn.wait_for_text(user, "Received 2 RLC")
        assert told.text == f"Received 2 RLC from {short(SPARE_1.address)}; balance 2 RLC"
        bn.tg.inject_command(user, "/balance")
        msg = await bn.wait_for_text(user, "Available")
        assert "Available: 2 RLC" in msg.text and f"Linked: {SPARE_1.address.lower()}" in msg.text

        # forged: SPARE_2 signs the new message but claims SPARE_1's address
        typed = typed_data_in((await ask_link(bn, user)).text)
        forged = sign_typed(SPARE_2, typed)
        reply = await answer(bn, user, lambda: bn.tg.inject_command(user, f"/link {SPARE_1.address} {forged}"))
        assert reply.startswith("❌") and "does not prove" in reply
        # wrong chain: the right account signs the message for chain 1
        other_chain = copy.deepcopy(typed)
        other_chain["domain"]["chainId"] = 1
        wrong = sign_typed(SPARE_2, other_chain)
        reply = await answer(bn, user, lambda: bn.tg.inject_command(user, f"/link {SPARE_2.address} {wrong}"))
        assert reply.startswith("❌") and "does not prove" in reply
        assert [w.address for w in bn.ledger.links.addresses(user.id)] == [SPARE_1.address.lower()]
        # SPARE_1 is someone's already: another user's valid proof of it is refused
        other = bn.new_user(credit_nrlc=0)
        typed = typed_data_in((await ask_link(bn, other)).text)
        reply = await answer(bn, other, lambda: bn.tg.inject_text(other, sign_typed(SPARE_1, typed)))
        assert reply.startswith("❌") and "linked to another account" in reply
        # garbage is a clear usage message
        reply = await answer(bn, user, lambda: bn.tg.inject_command(user, "/link hello"))
        assert reply.startswith("❌ Use /link alone")

        bn.tg.inject_command(ADMIN, "/wallet")
        wallet = await bn.wait_for_text(ADMIN, "Deposits:")
        assert "Deposits: 2 RLC credited (1) · 0 RLC unclaimed (0)" in wallet.text and "✅ solvent" in wallet.text
        bn.tg.inject_command(ADMIN, "/reconcile")
        report = await bn.wait_for_text(ADMIN, "deposits:", timeout=30)
        assert "deposits: 2 RLC credited (1), 0 RLC unclaimed (0); operator:deposits paid out 2 RLC" in report.text
        assert "❌ operator:deposits" not in report.text
        assert bn.ledger.balance(user.id).available == 2 * RLC
        bn.ledger.audit()

        # /unlink: later transfers from the address wait for an admin
        reply = await answer(bn, user, lambda: bn.tg.inject_command(user, f"/unlink {SPARE_1.address}"))
        assert reply.startswith("Unlinked")
        await transfer(bn, SPARE_1, RLC)
        await bn.tg.wait_for(lambda: bn.ledger.deposits.totals().unclaimed == RLC, 20)
        assert bn.ledger.balance(user.id).available == 2 * RLC


async def test_an_unlinked_transfer_waits_for_an_admin_and_is_assigned_once(devnet_module: Any, tmp_path: Path) -> None:
    async with bot_on(devnet_module, tmp_path, **FAST) as bn:
        user = bn.new_user(credit_nrlc=0)
        await watching(bn)
        tx = await transfer(bn, SPARE_2, 3 * RLC)
        await bn.tg.wait_for(lambda: bn.ledger.deposits.totals().unclaimed_count == 1, 20)
        assert bn.ledger.balance(user.id).available == 0

        bn.tg.inject_command(ADMIN, "/unclaimed")
        listing = await bn.wait_for_text(ADMIN, "Unclaimed deposits")
        [ref] = re.findall(r"0x[0-9a-f]{64}:[0-9]+", listing.text)
        assert ref.startswith(tx) and f"3 RLC from {SPARE_2.address.lower()}" in listing.text
        bn.tg.inject_command(user, "/unclaimed")  # not an admin: not a command for them
        await bn.wait_for_text(user, "I don't know that command")

        bn.tg.inject_command(ADMIN, f"/unclaimed {ref} {user.id}")
        ask = await bn.wait_for_text(ADMIN, "Credit 3 RLC")
        [(_, data), _] = ask.buttons()
        bn.tg.press_button(ADMIN, ask.message_id, data)
        await bn.wait_for_text(ADMIN, "✅ Credited 3 RLC")
        told = await bn.wait_for_text(user, "Received 3 RLC")
        assert told.text == f"Received 3 RLC from {short(SPARE_2.address)}; balance 3 RLC"
        bn.tg.press_button(ADMIN, ask.message_id, data, must_exist=False)  # a second press (a double tap)
        await bn.wait_for_text(ADMIN, "Already done")
        assert bn.ledger.balance(user.id).available == 3 * RLC
        totals = bn.ledger.deposits.totals()
        assert (totals.credited, totals.unclaimed, totals.account_net) == (3 * RLC, 0, 3 * RLC)
        assert len([m for m in bn.sent(user) if (m.text or "").startswith("Received")]) == 1
        bn.tg.inject_command(ADMIN, "/unclaimed")
        await bn.wait_for_text(ADMIN, "No unclaimed deposits")
        bn.ledger.audit()


async def test_the_loop_outlives_a_dead_chain_and_marks_told_only_what_was_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = Ledger(tmp_path / "books.db")
    nonce = "0x" + "ab" * 32
    book.links.issue(7, nonce)
    book.links.link(7, SPARE_1.address, nonce, "eip712")
    book.deposits.record("0x" + "11" * 32, 0, 5, "0x" + "22" * 32, SPARE_1.address, 2 * RLC)
    dead = connect(f"http://127.0.0.1:{free_port()}")  # nothing listens there: every call fails at once
    watcher = DepositWatcher(
        dead, SPARE_2.address, BOT.address, confirmations=0, retry=RetryPolicy(attempts=1, deadline_s=None)
    )
    service = DepositService(book, watcher)
    taken = False
    offered: list[str] = []

    async def send(notice: Any) -> bool:
        offered.append(notice.text)
        return taken

    fast = RetryPolicy(base_delay_s=0.01, max_delay_s=0.01)
    caplog.set_level("WARNING", logger="bot.deposits")
    task = asyncio.create_task(service.run(send, interval_s=0.01, retry=fast))
    try:
        async with asyncio.timeout(30):  # bounds the polls below
            while caplog.text.count("event=deposit_cycle_failed") < 3:  # each failed cycle is logged, then retried
                assert not task.done(), task
                await asyncio.sleep(0.01)
            assert len(offered) >= 3 and book.deposits.unnotified() != []  # offered each round, never taken
            taken = True
            while book.deposits.unnotified():
                assert not task.done(), task
                await asyncio.sleep(0.01)
            told = len(offered)
            while caplog.text.count("event=deposit_cycle_failed") < 6:
                await asyncio.sleep(0.01)
            assert len(offered) == told  # taken once: not offered again
            assert offered[-1] == f"Received 2 RLC from {short(SPARE_1.address)}; balance 2 RLC"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        book.close()
