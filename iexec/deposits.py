"""Follow RLC `Transfer`s to one address (the bot's hot wallet) and hand over only final ones.

    watcher = DepositWatcher(w3, rlc_address, hot_wallet, confirmations=network.deposit_confirmations,
                             load_cursor=db_load, save_cursor=db_save, ignore_senders=[hub_address])
    result = await watcher.poll(on_final=credit)     # credit(transfers) is awaited before the cursor moves
    result.pending                                   # seen, not final yet (for "/balance")

One cycle costs `eth_blockNumber`, one `eth_getLogs` per chunk of at most `max_range` final blocks (filtered by
the token's address, the Transfer topic and the recipient topic: never per sender or per user) and, when
confirmations > 0, one `eth_getLogs` over the blocks not final yet. So its cost does not grow with the number
of users who linked an address.

Finality: a transfer in block N is final when the head is at least N + `confirmations`. Only final blocks are
scanned for credit, and the cursor (the next block to scan) is saved through the caller's hook only after
`on_final` returned: a crash or a restart scans the last chunk again, so `on_final` must be idempotent on
(tx hash, log index) (the ledger's DepositBook.record is). A reorg of blocks not final yet changes only what
`pending` shows; a reorg deeper than `confirmations` is not detected (choose the depth per network).

Transfers from `ignore_senders` (the hub, when the operator withdraws stake to the wallet), from the wallet
itself and of zero amount are skipped. This module never sends a transaction and never decides who is credited.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.types import FilterParams

from iexec.retry import RetryPolicy
from iexec.tx import with_retry
from iexec.watch import get_logs_narrowing

log = logging.getLogger(__name__)

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

CursorLoad = Callable[[], Awaitable["int | None"]]
CursorSave = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class RlcTransfer:
    """One Transfer log to the watched address: natural id (tx hash, log index), where, who and how much.

    Hashes are lowercase 0x-hex, addresses checksummed; `amount` is in the token's smallest unit (nRLC)."""

    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    sender: str
    to: str
    amount: int

    @property
    def key(self) -> tuple[str, int]:
        return self.tx_hash, self.log_index


FinalHandler = Callable[[list[RlcTransfer]], Awaitable[None]]


@dataclass(frozen=True)
class DepositPoll:
    """What one cycle saw: transfers handed over as final, transfers not final yet, the head and the cursor."""

    final: list[RlcTransfer]
    pending: list[RlcTransfer]
    head: int
    cursor: int


@dataclass
class DepositStats:
    """Counters of the watcher's own RPC calls."""

    cycles: int = 0
    block_reads: int = 0
    get_logs: int = 0

    @property
    def calls(self) -> int:
        return self.block_reads + self.get_logs


def _hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text.lower() if text.startswith("0x") else "0x" + text.lower()


def _topic_address(topic: Any) -> str:
    return to_checksum_address("0x" + _hex(topic)[-40:])


def decode_transfer(raw: Any) -> RlcTransfer | None:
    """An RlcTransfer from a raw Transfer log (ERC-20: from and to indexed, value in data); None otherwise."""
    topics = [_hex(t) for t in raw.get("topics", [])]
    if len(topics) != 3 or topics[0] != TRANSFER_TOPIC or raw.get("removed"):
        return None
    data = _hex(raw.get("data", b""))
    if len(data) != 66:
        return None
    return RlcTransfer(
        tx_hash=_hex(raw["transactionHash"]),
        log_index=int(raw["logIndex"]),
        block_number=int(raw["blockNumber"]),
        block_hash=_hex(raw["blockHash"]),
        sender=_topic_address(topics[1]),
        to=_topic_address(topics[2]),
        amount=int(data, 16),
    )


class DepositWatcher:
    """Cursor-based follower of one token's Transfers to one address, handing over final ones."""

    def __init__(
        self,
        w3: AsyncWeb3,
        token: str,
        to: str,
        *,
        confirmations: int,
        load_cursor: CursorLoad | None = None,
        save_cursor: CursorSave | None = None,
        start_block: int = 0,
        max_range: int = 2000,
        ignore_senders: Iterable[str] = (),
        retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(confirmations, bool) or not isinstance(confirmations, int) or confirmations < 0:
            raise ValueError(f"confirmations must be a non-negative int, got {confirmations!r}")
        self.w3 = w3
        self.token = to_checksum_address(token)
        self.to = to_checksum_address(to)
        self.confirmations = confirmations
        self._load_cursor = load_cursor
        self._save_cursor = save_cursor
        self._cursor: int | None = None
        self.start_block = max(0, start_block)
        self.max_range = max(1, max_range)
        self.ignore = {to_checksum_address(a) for a in ignore_senders} | {self.to}
        self.retry = retry or RetryPolicy()
        self.stats = DepositStats()
        self._to_topic = "0x" + "00" * 12 + self.to[2:].lower()

    @property
    def cursor(self) -> int | None:
        """The next block to scan for final transfers (None before the first cycle)."""
        return self._cursor

    async def poll(self, on_final: FinalHandler | None = None) -> DepositPoll:
        """One cycle: hand final transfers to `on_final` chunk by chunk (the cursor is saved after each
        returns), then read the transfers not final yet. Raises ChainUnavailable after the retry bound;
        an exception from `on_final` propagates and leaves the cursor where it was."""
        self.stats.cycles += 1
        head = int(await with_retry(lambda: self.w3.eth.block_number, self.retry, "block_number"))
        self.stats.block_reads += 1
        if self._cursor is None:
            loaded = await self._load_cursor() if self._load_cursor else None
            self._cursor = self.start_block if loaded is None else max(int(loaded), 0)
        final_head = head - self.confirmations
        final: list[RlcTransfer] = []
        start = self._cursor
        while start <= final_head:
            end = min(start + self.max_range - 1, final_head)
            found = await self._transfers(start, end)
            if found is None:  # the node refused the range: it was halved, try again
                continue
            if found and on_final is not None:
                await on_final(found)
            final.extend(found)
            start = end + 1
            self._cursor = start
            if self._save_cursor:
                await self._save_cursor(start)
        pending: list[RlcTransfer] = []
        if self.confirmations and final_head < head:
            low = max(self._cursor, final_head + 1, head - self.max_range + 1)
            pending = await self._transfers(low, head) or []
        return DepositPoll(final, pending, head, self._cursor)

    async def _transfers(self, start: int, end: int) -> list[RlcTransfer] | None:
        params: FilterParams = {
            "address": self.token,
            "fromBlock": start,
            "toBlock": end,
            "topics": [TRANSFER_TOPIC, None, self._to_topic],
        }
        logs = await get_logs_narrowing(self, params, log, "deposit_logs_range_reduced")
        if logs is None:
            return None
        out: list[RlcTransfer] = []
        for raw in logs:
            if _hex(raw.get("address", "")) != self.token.lower():
                continue
            transfer = decode_transfer(raw)
            if transfer is None or transfer.to != self.to or transfer.sender in self.ignore or transfer.amount <= 0:
                continue
            out.append(transfer)
        out.sort(key=lambda t: (t.block_number, t.log_index))
        return out
