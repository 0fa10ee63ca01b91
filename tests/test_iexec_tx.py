"""The one nonce-owning sender on anvil: concurrency, persist-before-broadcast, crash resume, outages,
stuck transactions replaced within the fee cap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from devnet.accounts import SPARE_1, SPARE_2
from devnet.anvil import rpc_call
from iexec.errors import ChainUnavailable, TransactionError
from iexec.tx import RetryPolicy, SenderConfig, TxRecord, TxSender

FAST = SenderConfig(stuck_after_s=0.3, poll_interval_s=0.05, receipt_timeout_s=30)


class Store:
    """A persisted record list, as a database would hold it; optionally 'crashes' after writing."""

    def __init__(self, rpc_url: str, crash_after_write: bool = False) -> None:
        self.records: list[TxRecord] = []
        self.rpc_url = rpc_url
        self.crash_after_write = crash_after_write
        self.known_at_persist: list[bool] = []

    async def persist(self, raw_tx: bytes, tx_hash: str, nonce: int, meta: Mapping[str, Any]) -> None:
        self.records.append(TxRecord(raw_tx, tx_hash, nonce, dict(meta)))
        self.known_at_persist.append(rpc_call(self.rpc_url, "eth_getTransactionByHash", [tx_hash]) is not None)
        if self.crash_after_write:
            raise KeyboardInterrupt("simulated crash between persist and broadcast")


def nonce_of(rpc_url: str, address: str) -> int:
    return int(rpc_call(rpc_url, "eth_getTransactionCount", [address, "latest"]), 16)


async def until_true(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until `check()` holds; fails loudly, naming `what`, after `timeout` s."""

    async def held() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(held(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def logged(caplog: pytest.LogCaptureFixture, line: str, times: int = 1, timeout: float = 30.0) -> None:
    """Wait until a log message containing `line` was emitted `times` times; fails loudly after `timeout` s."""

    def count() -> int:
        return sum(line in record.getMessage() for record in caplog.records)

    async def seen() -> None:
        while count() < times:
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(seen(), timeout)
    except TimeoutError:
        raise AssertionError(f"{line!r} logged {count()} times, not {times}, within {timeout} s") from None


async def test_twenty_concurrent_sends_consecutive_nonces(chain, rpc) -> None:
    store = Store(chain.rpc_url)
    sender = TxSender(rpc(), SPARE_1, persist=store.persist, config=FAST)
    first = nonce_of(chain.rpc_url, SPARE_1.address)
    receipts = await asyncio.gather(*(sender.send(SPARE_2.address, value=i + 1, meta={"i": i}) for i in range(20)))
    assert all(r["status"] == 1 for r in receipts)
    nonces = sorted(
        int(
            rpc_call(chain.rpc_url, "eth_getTransactionByHash", ["0x" + bytes(r["transactionHash"]).hex()])["nonce"], 16
        )
        for r in receipts
    )
    assert nonces == list(range(first, first + 20))
    assert nonce_of(chain.rpc_url, SPARE_1.address) == first + 20
    assert len(store.records) == 20 and not any(store.known_at_persist)  # persisted before broadcast
    assert sender.inflight() == {}


async def test_crash_between_persist_and_broadcast_mines_exactly_once(chain, rpc) -> None:
    store = Store(chain.rpc_url, crash_after_write=True)
    first = nonce_of(chain.rpc_url, SPARE_1.address)
    crashed = TxSender(rpc(), SPARE_1, persist=store.persist, config=FAST)
    with pytest.raises(KeyboardInterrupt):
        await crashed.send(SPARE_2.address, value=123)
    assert rpc_call(chain.rpc_url, "eth_getTransactionByHash", [store.records[0].tx_hash]) is None
    # restart: a new sender on the same persisted state
    store.crash_after_write = False
    sender = TxSender(rpc(), SPARE_1, persist=store.persist, config=FAST)
    resumed = await sender.resume(store.records)
    assert [(r.nonce, r.status) for r in resumed] == [(first, "pending")]
    receipt = await sender.wait(first)
    assert "0x" + bytes(receipt["transactionHash"]).hex() == store.records[0].tx_hash
    # a second restart finds it mined and sends nothing
    again = await TxSender(rpc(), SPARE_1, config=FAST).resume(store.records)
    assert [r.status for r in again] == ["mined"]
    assert nonce_of(chain.rpc_url, SPARE_1.address) == first + 1
    # the next transaction takes the next nonce
    await sender.send(SPARE_2.address, value=1)
    assert nonce_of(chain.rpc_url, SPARE_1.address) == first + 2 and len(store.records) == 2


@pytest.mark.slow  # over ~2 s
async def test_chain_frozen_mid_wait_retries_then_finishes(chain, rpc, caplog) -> None:
    caplog.set_level(logging.INFO, logger="iexec.tx")
    config = SenderConfig(stuck_after_s=60, poll_interval_s=0.05, retry=RetryPolicy(deadline_s=30))
    w3 = rpc(timeout_s=0.5)
    sender = TxSender(w3, SPARE_1, config=config)
    rpc_call(chain.rpc_url, "evm_setAutomine", [False])
    record = await sender.submit(SPARE_2.address, value=7)
    polls = w3.provider.calls.get("eth_getTransactionReceipt", 0)
    waiting = asyncio.create_task(sender.wait(record.nonce))
    await until_true(lambda: w3.provider.calls.get("eth_getTransactionReceipt", 0) > polls, "a receipt poll")
    chain.anvil.freeze()
    try:
        await logged(caplog, "event=rpc_retry what=get_receipt", times=3)  # polls timed out, retried
        assert not waiting.done()
    finally:
        chain.anvil.thaw()
    rpc_call(chain.rpc_url, "evm_mine", [])
    receipt = await asyncio.wait_for(waiting, 20)
    assert receipt["status"] == 1 and "0x" + bytes(receipt["transactionHash"]).hex() == record.tx_hash


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_chain_down_too_long_is_chain_unavailable(chain, rpc) -> None:
    config = SenderConfig(poll_interval_s=0.05, retry=RetryPolicy(base_delay_s=0.1, deadline_s=1.0))
    sender = TxSender(rpc(timeout_s=0.3), SPARE_1, config=config)
    chain.anvil.freeze()
    try:
        with pytest.raises(ChainUnavailable, match="unreachable"):
            await sender.send(SPARE_2.address, value=1)
    finally:
        chain.anvil.thaw()
    await sender.send(SPARE_2.address, value=1)  # and works again once the node answers


async def test_stuck_transaction_replaced_within_fee_cap(chain, rpc, caplog) -> None:
    caplog.set_level(logging.INFO, logger="iexec.tx")
    store = Store(chain.rpc_url)
    probe = TxSender(rpc(), SPARE_1, config=FAST)
    await probe.send(SPARE_2.address, value=1)
    base = int(rpc_call(chain.rpc_url, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
    cap = base * 2 + 10**9 + (base * 2 + 10**9) // 3  # room for two bumps of 15%, not three
    sender = TxSender(
        rpc(),
        SPARE_1,
        persist=store.persist,
        config=SenderConfig(
            fee_cap_wei=cap, priority_fee_wei=10**9, stuck_after_s=0.2, poll_interval_s=0.05, receipt_timeout_s=30
        ),
    )
    rpc_call(chain.rpc_url, "evm_setAutomine", [False])
    record = await sender.submit(SPARE_2.address, value=9)
    waiting = asyncio.create_task(sender.wait(record.nonce))
    await logged(caplog, "event=tx_stuck_at_cap")  # replaced twice; a third bump would pass the cap
    rpc_call(chain.rpc_url, "evm_mine", [])
    receipt = await asyncio.wait_for(waiting, 10)
    fees = [r.max_fee_per_gas for r in store.records]
    assert len(store.records) == 3 and fees == sorted(set(fees)) and max(fees) <= cap
    assert {r.nonce for r in store.records} == {record.nonce}
    assert "0x" + bytes(receipt["transactionHash"]).hex() == store.records[-1].tx_hash
    assert store.records[-1].meta["replaces"] == store.records[-2].tx_hash
    assert nonce_of(chain.rpc_url, SPARE_1.address) == record.nonce + 1


async def test_dropped_transaction_is_rebroadcast(chain, rpc) -> None:
    sender = TxSender(rpc(), SPARE_1, config=FAST)
    rpc_call(chain.rpc_url, "evm_setAutomine", [False])
    record = await sender.submit(SPARE_2.address, value=5)
    rpc_call(chain.rpc_url, "anvil_dropTransaction", [record.tx_hash])
    rpc_call(chain.rpc_url, "evm_setAutomine", [True])
    receipt = await sender.wait(record.nonce)
    assert "0x" + bytes(receipt["transactionHash"]).hex() == record.tx_hash


async def test_rejected_transaction_is_typed_and_frees_the_nonce(chain, rpc) -> None:
    store = Store(chain.rpc_url)
    sender = TxSender(rpc(), SPARE_1, persist=store.persist, config=FAST)
    first = nonce_of(chain.rpc_url, SPARE_1.address)
    with pytest.raises(TransactionError, match="insufficient funds"):
        await sender.send(SPARE_2.address, value=10**30)  # more ETH than the wallet holds
    # the node refused it outright, so the nonce is still free: the next transaction takes it
    await sender.send(SPARE_2.address, value=1)
    assert [r.nonce for r in store.records] == [first, first]
    assert nonce_of(chain.rpc_url, SPARE_1.address) == first + 1
    resumed = await TxSender(rpc(), SPARE_1, config=FAST).resume(store.records)
    assert [r.status for r in resumed] == ["mined"]
