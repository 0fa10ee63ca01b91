"""iexec.watch.get_logs_narrowing, shared by the task watcher and the deposit watcher: a node that refuses wide
eth_getLogs ranges (as hosted providers do) gets narrower ones, and no block is skipped or read twice."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from web3.exceptions import Web3RPCError

from iexec.deposits import TRANSFER_TOPIC, DepositWatcher
from iexec.retry import RetryPolicy
from iexec.watch import get_logs_narrowing

TOKEN = "0x" + "11" * 20
BOT = "0x" + "22" * 20
USER = "0x" + "33" * 20


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:]


@dataclass
class CappedNode:
    """A node answering eth_getLogs over at most `cap` blocks; a wider range gets the provider's refusal."""

    head: int
    cap: int
    transfers: dict[int, int]  # block -> amount sent from USER to BOT
    refusal: str = "query exceeds max block range {cap}"
    asked: list[tuple[int, int]] = field(default_factory=list)

    @property
    def eth(self) -> CappedNode:
        return self

    @property
    def block_number(self) -> Any:
        async def head() -> int:
            return self.head

        return head()

    async def get_logs(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        low, high = params["fromBlock"], params["toBlock"]
        self.asked.append((low, high))
        if high - low + 1 > self.cap:
            raise Web3RPCError(self.refusal.format(cap=self.cap))
        return [
            {
                "address": TOKEN,
                "topics": [TRANSFER_TOPIC, _topic(USER), _topic(BOT)],
                "data": "0x" + amount.to_bytes(32, "big").hex(),
                "transactionHash": "0x" + block.to_bytes(32, "big").hex(),
                "logIndex": 0,
                "blockNumber": block,
                "blockHash": "0x" + (block + 1).to_bytes(32, "big").hex(),
                "removed": False,
            }
            for block, amount in self.transfers.items()
            if low <= block <= high
        ]


async def test_a_deposit_scan_narrows_until_the_node_answers_and_reads_each_block_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="iexec")
    node = CappedNode(head=40, cap=10, transfers={0: 5, 17: 7, 40: 9})
    watcher = DepositWatcher(node, TOKEN, BOT, confirmations=0, max_range=2000, retry=RetryPolicy().no_wait())
    polled = await watcher.poll()
    assert [(t.block_number, t.amount) for t in polled.final] == [(0, 5), (17, 7), (40, 9)]
    assert polled.cursor == 41 and watcher.max_range == 7  # 2000 halved until a range is answered
    answered = [(low, high) for low, high in node.asked if high - low + 1 <= node.cap]
    blocks = [b for low, high in answered for b in range(low, high + 1)]
    assert blocks == list(range(41))  # every block once, in order
    assert watcher.stats.get_logs == len(node.asked)  # refusals count as calls too
    assert caplog.text.count("event=deposit_logs_range_reduced") == len(node.asked) - len(answered)


async def test_a_node_refusing_even_one_block_and_other_errors_are_raised() -> None:
    @dataclass
    class Counts:
        get_logs: int = 0

    @dataclass
    class Owner:
        w3: Any
        max_range: int
        retry: RetryPolicy = field(default_factory=lambda: RetryPolicy().no_wait())
        stats: Counts = field(default_factory=Counts)

    log = logging.getLogger("tests.logscan")
    params: Any = {"fromBlock": 0, "toBlock": 0}
    one_block = Owner(CappedNode(head=5, cap=0, transfers={}), max_range=1)
    with pytest.raises(Web3RPCError, match="max block range"):
        await get_logs_narrowing(one_block, params, log, "x")
    assert one_block.stats.get_logs == 1
    other = Owner(CappedNode(head=5, cap=0, transfers={}, refusal="execution reverted"), max_range=64)
    with pytest.raises(Web3RPCError, match="execution reverted"):
        await get_logs_narrowing(other, {"fromBlock": 0, "toBlock": 3}, log, "x")
    assert other.max_range == 64  # not a range refusal: the window stays
