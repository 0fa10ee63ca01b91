"""The bot's start-up check that its books belong to the chain (bot/consistency.py), on a real anvil with
PoCo and real books: a chain that has not reached a mined nonce of the books, or does not know the deal of
a job in progress, is refused with what differs and what to do (--fresh on the devnet preset, never on
another network); books that match pass. A node behind the block the books recorded is waited for (a lagging
RPC node is not a reset chain); a held job whose deal is unknown is a warning, not a refusal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bot.consistency import check_books_match_chain
from bot.errors import BooksDoNotMatchChain
from devnet import chain as devchain
from devnet.accounts import REQUESTER
from iexec.hub import Hub
from iexec.tx import close, connect
from ledger import JobState, Ledger
from tests.fakes import until

USER = 4242


def _mined(ledger: Ledger, nonce: int, block: int = 1, job_id: str | None = None) -> None:
    tx_hash = os.urandom(32)
    ledger.record_tx(b"\x02" + os.urandom(40), tx_hash, nonce, REQUESTER.address, "matchOrders", job_id)
    ledger.update_tx(tx_hash, "mined", block_number=block)


def _head(chain) -> int:  # type: ignore[no-untyped-def]  # chain: any fixture with an rpc_url
    return int(devchain.rpc_call(chain.rpc_url, "eth_blockNumber", []), 16)


def _sent(chain) -> int:  # type: ignore[no-untyped-def]  # as _head
    return int(devchain.rpc_call(chain.rpc_url, "eth_getTransactionCount", [REQUESTER.address, "latest"]), 16)


async def _check(ledger: Ledger, chain, network: str = "devnet", **wait) -> list[str]:  # type: ignore[no-untyped-def]  # as _head; wait: check_books_match_chain's options
    w3 = connect(chain.rpc_url)
    try:
        return await check_books_match_chain(
            ledger,
            w3,
            Hub(None, chain.deployment.hub, w3=w3),
            REQUESTER.address,
            chain.rpc_url,
            network=network,
            **wait,
        )
    finally:
        await close(w3)  # its aiohttp session


def _matched_job(books: Ledger, job_id: str) -> str:
    books.grant(f"g-{job_id}", USER, 10**9)
    books.create_job(job_id, USER, USER, 10**8)
    books.transition(job_id, JobState.RECEIVED, JobState.ORDER_SIGNED)
    books.transition(job_id, JobState.ORDER_SIGNED, JobState.MATCHING)
    deal = "0x" + os.urandom(32).hex()
    books.transition(job_id, JobState.MATCHING, JobState.MATCHED, deal_id=deal)
    return deal


@pytest.fixture
def books(tmp_path: Path):  # type: ignore[no-untyped-def]  # a pytest fixture (yields)
    ledger = Ledger(str(tmp_path / "books.db"))
    yield ledger
    ledger.close()


async def test_books_within_the_chains_nonce_pass(chain, books: Ledger) -> None:
    await _check(books, chain)  # no transaction at all
    devchain.deposit(chain.rpc_url, chain.deployment, REQUESTER, 10**9)  # the wallet's nonce 0 is mined
    _mined(books, 0)
    await _check(books, chain)


async def test_a_mined_nonce_the_chain_has_not_reached_is_refused(chain, books: Ledger) -> None:
    _mined(books, 0)
    _mined(books, 1)
    with pytest.raises(BooksDoNotMatchChain) as caught:
        await _check(books, chain)
    message = str(caught.value)
    assert "nonce 1" in message and "seen only 0 transaction(s)" in message
    assert "--fresh" in message and "RPC_URL" in message
    assert caught.value.exit_code == 4


async def test_a_job_whose_deal_the_hub_does_not_know_is_refused(chain, books: Ledger) -> None:
    deal = _matched_job(books, "job-1")
    _mined(books, 0, block=1, job_id="job-1")  # its matchOrders, mined in a block this chain has passed
    with pytest.raises(BooksDoNotMatchChain) as caught:
        await _check(books, chain, network="bellecour")
    message = str(caught.value)
    assert deal in message and "job-1" in message
    assert "--fresh" not in message and "never delete" in message and "NETWORK" in message


async def test_a_node_behind_the_recorded_block_is_waited_for(chain, books: Ledger, caplog) -> None:
    # The books saw the next nonce mined in a block this node has not reached yet (a load-balanced RPC behind).
    _mined(books, _sent(chain), block=_head(chain) + 3)
    caplog.set_level("INFO", logger="bot.consistency")
    check = asyncio.create_task(_check(books, chain, network="bellecour", lag_wait_s=60, poll_s=0.05))

    def waits() -> int:
        return sum("event=books_chain_wait" in r.getMessage() for r in caplog.records)

    await until(lambda: waits() >= 2 or check.done(), rounds=60_000)  # it looked, waited, looked again
    assert not check.done()  # not refused while the node is behind
    devchain.deposit(chain.rpc_url, chain.deployment, REQUESTER, 10**9)  # the node catches up: that nonce mined
    devchain.rpc_call(chain.rpc_url, "anvil_mine", [hex(3)])
    assert await asyncio.wait_for(check, 30) == []


async def test_a_node_that_stays_behind_is_refused_after_the_wait(chain, books: Ledger) -> None:
    _mined(books, 0, block=_head(chain) + 1000)
    with pytest.raises(BooksDoNotMatchChain) as caught:
        await _check(books, chain, network="bellecour", lag_wait_s=0.2, poll_s=0.05)
    assert "this node is at block" in str(caught.value) and "--fresh" not in str(caught.value)


async def test_a_held_job_whose_deal_is_unknown_does_not_stop_the_start(chain, books: Ledger, caplog) -> None:
    deal = _matched_job(books, "job-held")
    _mined(books, 0, block=1, job_id="job-held")
    books.transition("job-held", JobState.MATCHED, JobState.NEEDS_ADMIN)
    devchain.deposit(chain.rpc_url, chain.deployment, REQUESTER, 10**9)
    with caplog.at_level("WARNING", logger="bot.consistency"):
        assert await _check(books, chain) == ["job-held"]
    assert any(
        "books_chain_held_unknown" in r.getMessage() and "job=job-held" in r.getMessage() and deal in r.getMessage()
        for r in caplog.records
    )


async def test_on_the_devnet_a_chain_shorter_than_the_books_is_refused_at_once(chain, books: Ledger) -> None:
    # The devnet's one anvil is never behind itself: a shorter chain is a reset one (no 30 s wait).
    _mined(books, _sent(chain), block=_head(chain) + 1000)
    with pytest.raises(BooksDoNotMatchChain) as caught:
        await _check(books, chain, network="devnet")
    assert "--fresh" in str(caught.value) and "this node is at block" in str(caught.value)
