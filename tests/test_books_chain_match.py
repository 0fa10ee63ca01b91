"""The bot's start-up check that its books belong to the chain (bot/consistency.py), on a real anvil with
PoCo and real books: a chain that has not reached a mined nonce of the books, or does not know the deal of
a job in progress, is refused with what differs and what to do; books that match pass."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.consistency import BooksDoNotMatchChain, check_books_match_chain
from devnet import chain as devchain
from devnet.accounts import REQUESTER
from iexec.hub import Hub
from iexec.tx import connect
from ledger import JobState, Ledger

USER = 4242


def _mined(ledger: Ledger, nonce: int) -> None:
    tx_hash = os.urandom(32)
    ledger.record_tx(b"\x02" + os.urandom(40), tx_hash, nonce, REQUESTER.address, "matchOrders")
    ledger.update_tx(tx_hash, "mined", block_number=1)


async def _check(ledger: Ledger, chain) -> None:  # type: ignore[no-untyped-def]
    w3 = connect(chain.rpc_url)
    await check_books_match_chain(ledger, w3, Hub(None, chain.deployment.hub, w3=w3), REQUESTER.address,
                                  chain.rpc_url)


@pytest.fixture
def books(tmp_path: Path):  # type: ignore[no-untyped-def]
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
    books.grant("g1", USER, 10**9)
    books.create_job("job-1", USER, USER, 10**8)
    books.transition("job-1", JobState.RECEIVED, JobState.ORDER_SIGNED)
    books.transition("job-1", JobState.ORDER_SIGNED, JobState.MATCHING)
    deal = "0x" + os.urandom(32).hex()
    books.transition("job-1", JobState.MATCHING, JobState.MATCHED, deal_id=deal)
    with pytest.raises(BooksDoNotMatchChain) as caught:
        await _check(books, chain)
    assert deal in str(caught.value) and "job-1" in str(caught.value)
