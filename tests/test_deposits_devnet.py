"""Users fund themselves on the devnet: anvil with real PoCo and the real RLC token of the devnet deploy.

A test account links its address with a real signature (made in Python, and made by ethers, the library
wallets use, as the independent peer), sends RLC to the bot's hot wallet, and is credited exactly once
however the watcher is restarted, its range replayed, or its cycle broken after the books were written. A
transfer from an unlinked address is held for admins. An anvil snapshot/revert (a reorg) before finality
credits nothing. Cost: a watcher cycle makes the same JSON-RPC calls with 1 and with 1000 linked users.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from web3 import AsyncWeb3

from bot.deposits import DepositService
from bot.linking import Linking, LinkSettings
from devnet.accounts import BOT, SPARE_1, SPARE_2
from devnet.anvil import rpc_call
from devnet.chain import fund_rlc, mine, rlc_balance
from iexec.link import verify_link
from iexec.tx import rpc_calls
from ledger import Ledger
from tests.fixtures_chain import ChainEnv
from tests.sdk_peer import ETHERS, run_sdk_script

pytestmark = pytest.mark.slow

USER, STRANGER_USER, ADMIN = 7001, 7002, 1
RLC = 10**9


def make_service(
    book: Ledger,
    chain: ChainEnv,
    rpc: Callable[..., AsyncWeb3],
    confirmations: int = 0,
    start_block: int | None = None,
) -> DepositService:
    """A deposit service on the books, watching the test's chain over an `rpc()` connection (closed after the
    test by the fixture)."""
    return DepositService.build(
        book,
        rpc(),
        chain_id=31337,
        rlc=chain.deployment.rlc,
        hot_wallet=BOT.address,
        hub=chain.deployment.hub,
        confirmations=confirmations,
        min_deposit_nrlc=RLC // 100,
        start_block=start_block,
    )


def link(book: Ledger, user: int, account: object) -> None:
    linking = Linking(book, LinkSettings(31337, BOT.address, RLC // 100))
    request, _ = linking.start(user)
    signature = account.sign_message(request.signable("eip712")).signature  # type: ignore[attr-defined]  # eth_account's signed message has no stubs for .signature
    linking.finish(user, "0x" + bytes(signature).hex())


def send(chain: ChainEnv, sender: object, nrlc: int) -> str:
    receipt = fund_rlc(chain.rpc_url, chain.deployment, BOT.address, nrlc, sender=sender)  # type: ignore[arg-type]  # sender: an eth_account account, typed loosely here
    return "0x" + bytes(receipt["transactionHash"]).hex()


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "books.db") as ledger:
        yield ledger


async def test_a_linked_transfer_credits_exactly_once_through_restarts_and_replays(
    chain: ChainEnv, rpc: Callable[..., AsyncWeb3], book: Ledger
) -> None:
    start = chain.w3.eth.block_number
    link(book, USER, SPARE_1)
    service = make_service(book, chain, rpc, start_block=start)
    await service.cycle()
    before = rlc_balance(chain.rpc_url, chain.deployment, BOT.address)
    tx_hash = send(chain, SPARE_1, 2 * RLC)
    stranger_tx = send(chain, SPARE_2, 3 * RLC)
    assert rlc_balance(chain.rpc_url, chain.deployment, BOT.address) == before + 5 * RLC
    await service.cycle()
    assert book.balance(USER).available == 2 * RLC
    [notice] = service.notices()
    assert (
        notice.text
        == "Received 2 RLC from 0x"
        + SPARE_1.address[2:4].lower()
        + "…"
        + SPARE_1.address[-2:].lower()
        + "; balance 2 RLC"
    )
    [held] = service.unclaimed()
    assert held.tx_hash == stranger_tx and held.amount == 3 * RLC and held.sender == SPARE_2.address.lower()

    # a restarted watcher (new service, same books), then a replay of the whole range from the start
    again = make_service(book, chain, rpc)
    await again.cycle()
    book.set_value(f"deposits_cursor:31337:{BOT.address.lower()}", str(start))
    replayed = make_service(book, chain, rpc)
    result = await replayed.cycle()
    assert [t.tx_hash for t in result.final] == [tx_hash, stranger_tx]  # seen again, credited once
    assert book.balance(USER).available == 2 * RLC and book.deposits.totals().credited == 2 * RLC

    # a cycle broken after the books were written and before the cursor moved: the next one credits nothing new
    send(chain, SPARE_1, RLC)

    async def crash_after_recording(transfers: list) -> None:
        await replayed._record(transfers)
        raise RuntimeError("killed between the credit and the cursor")

    with pytest.raises(RuntimeError):
        await replayed.watcher.poll(on_final=crash_after_recording)
    await make_service(book, chain, rpc).cycle()
    assert book.balance(USER).available == 3 * RLC

    # the admin gives the held transfer to its owner; the books balance; operator:deposits = credited deposits
    service.assign(f"{stranger_tx}:{held.log_index}", STRANGER_USER, ADMIN)
    assert book.balance(STRANGER_USER).available == 3 * RLC
    totals = book.deposits.totals()
    assert totals.credited == totals.account_net == 6 * RLC and totals.unclaimed == 0
    book.audit()


async def test_a_reorg_before_finality_credits_nothing(
    chain: ChainEnv, rpc: Callable[..., AsyncWeb3], book: Ledger
) -> None:
    link(book, USER, SPARE_1)
    service = make_service(book, chain, rpc, confirmations=2, start_block=chain.w3.eth.block_number)
    await service.cycle()
    snapshot = rpc_call(chain.rpc_url, "evm_snapshot")
    send(chain, SPARE_1, 2 * RLC)
    mine(chain.rpc_url, 1)  # one block on top: seen, not final (2 needed)
    result = await service.cycle()
    assert [t.amount for t in result.pending] == [2 * RLC] and result.final == []
    assert [t.amount for t in service.pending_for(USER)] == [2 * RLC]
    assert any("Pending: 2 RLC" in line for line in service.balance_lines(USER))
    assert book.balance(USER).available == 0
    assert rpc_call(chain.rpc_url, "evm_revert", [snapshot]) is True  # the transfer's block is gone
    mine(chain.rpc_url, 5)
    result = await service.cycle()
    assert result.final == [] and result.pending == [] and service.pending_for(USER) == []
    assert book.balance(USER).available == 0 and book.deposits.totals().credited == 0
    # a transfer that does reach finality is credited, once
    send(chain, SPARE_1, RLC)
    await service.cycle()
    assert book.balance(USER).available == 0  # 0 blocks on top yet
    mine(chain.rpc_url, 2)
    await service.cycle()
    await service.cycle()
    assert book.balance(USER).available == RLC
    book.audit()


async def test_calls_per_cycle_do_not_grow_with_linked_users(
    chain: ChainEnv, rpc: Callable[..., AsyncWeb3], book: Ledger
) -> None:
    start = chain.w3.eth.block_number
    calls = {}
    for users in (1, 1000):
        for i in range(book.links.count(), users):
            nonce = "0x" + secrets.token_hex(32)
            book.links.issue(100 + i, nonce)
            book.links.link(100 + i, "0x" + (100 + i).to_bytes(20, "big").hex(), nonce, "eip712")
        assert book.links.count() == users
        service = make_service(book, chain, rpc, confirmations=1, start_block=start)
        await service.cycle()
        send(chain, SPARE_2, RLC)
        mine(chain.rpc_url, 1)
        before = rpc_calls(service.watcher.w3)
        await service.cycle()
        calls[users] = rpc_calls(service.watcher.w3) - before
    assert calls[1] == calls[1000] <= 3


async def test_ethers_signatures_verify_in_both_forms(tmp_path: Path) -> None:
    book = Ledger(tmp_path / "books.db")
    linking = Linking(book, LinkSettings(31337, BOT.address, RLC))
    request, _ = linking.start(USER)
    typed = request.typed_data()
    types = {k: v for k, v in typed["types"].items() if k != "EIP712Domain"}
    script = (
        "const { Wallet } = await import(process.env.ETHERS);\n"
        "const w = new Wallet(process.env.KEY);\n"
        "const t = JSON.parse(process.env.TYPED);\n"
        "const typed = await w.signTypedData(t.domain, JSON.parse(process.env.TYPES), t.message);\n"
        "const text = await w.signMessage(process.env.TEXT);\n"
        "console.log(JSON.stringify({ typed, text, address: w.address }));\n"
    )
    env = {
        "ETHERS": ETHERS.as_posix(),
        "KEY": "0x" + bytes(SPARE_1.key).hex(),
        "TYPED": json.dumps(typed),
        "TYPES": json.dumps(types),
        "TEXT": request.text(),
    }
    signed = await run_sdk_script(script, env, needs=(ETHERS,), timeout=60)
    assert signed["address"] == SPARE_1.address
    assert verify_link(request, signed["typed"]).address == SPARE_1.address
    assert verify_link(request, signed["text"], SPARE_1.address).form == "personal_sign"
    link = linking.finish(USER, signed["typed"])
    assert link.address == SPARE_1.address.lower()
