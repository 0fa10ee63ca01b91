"""The deposit watcher service: final RLC transfers to the hot wallet become credit, exactly once.

    service = DepositService.build(book, w3, chain_id=..., rlc=..., hot_wallet=..., hub=...,
                                   confirmations=network.deposit_confirmations, min_deposit_nrlc=...)
    await service.cycle()                        # one watcher cycle: credits and holds, in the books
    for notice in service.notices():             # credited deposits not told yet (survive a restart)
        await send(notice.user_id, notice.text); service.told(notice)
    service.unclaimed() / service.assign("0xTX:3", user, admin)   # /unclaimed and its assignment
    service.pending_for(user)                    # seen, not final yet (for /balance)

Each final transfer is recorded by `ledger.DepositBook.record`, keyed by (tx hash, log index), in one
`BEGIN IMMEDIATE` transaction with its credit: a restart, a replayed range or a crash between the credit and
the cursor's save credits nothing twice. A transfer from an unlinked address (or below the minimum) is held
for admins. Credits hang on finality only (iexec.deposits): a reorg before it changes what `pending_for`
shows, never the books. The user's notice is at least once: a crash between sending and `told` repeats it.

`run` is the supervised loop the bot starts as its own task (bot.app): a cycle, then the notices, then a
wait of `DEPOSIT_POLL_S`; a failed cycle (RPC down, books busy, a bug) is logged and tried again after the
retry policy's wait, and never ends the loop nor the bot. It imports only `ledger`, `iexec` and
`bot.errors`. It must never send a transaction nor move RLC on chain.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from web3 import AsyncWeb3

from bot.errors import AssignRefused
from iexec.deposits import DepositPoll, DepositWatcher, RlcTransfer
from iexec.retry import RetryPolicy
from ledger import Deposit, DepositConflict, Ledger, UnknownDeposit, format_rlc
from ledger.errors import InvalidArgument

log = logging.getLogger(__name__)
_NATURAL_RE = re.compile(r"(0x[0-9a-fA-F]{64}):([0-9]{1,6})")


def short_address(address: str) -> str:
    """0xab…cd: enough to recognise one's own address, short enough for a notice."""
    return f"{address[:4]}…{address[-2:]}".lower()


def notice_text(amount: int, sender: str, balance: int) -> str:
    """ "Received 2 RLC from 0xab…cd; balance 4.7 RLC"."""
    return f"Received {format_rlc(amount)} from {short_address(sender)}; balance {format_rlc(balance)}"


def natural_id(deposit: Deposit | RlcTransfer) -> str:
    """ "0x<tx hash>:<log index>": how an admin names a deposit."""
    return f"{deposit.tx_hash}:{deposit.log_index}"


@dataclass(frozen=True)
class DepositNotice:
    """A message owed to a user about a credited deposit."""

    user_id: int
    tx_hash: str
    log_index: int
    text: str


class DepositService:
    """Runs the deposit watcher against the books; holds what it saw pending for /balance."""

    def __init__(self, book: Ledger, watcher: DepositWatcher, *, min_deposit_nrlc: int = 1) -> None:
        self.book = book
        self.watcher = watcher
        self.min_deposit_nrlc = max(1, min_deposit_nrlc)
        self._pending: list[RlcTransfer] = []

    @classmethod
    def build(
        cls,
        book: Ledger,
        w3: AsyncWeb3,
        *,
        chain_id: int,
        rlc: str,
        hot_wallet: str,
        hub: str,
        confirmations: int,
        min_deposit_nrlc: int = 1,
        start_block: int | None = None,
        max_range: int = 2000,
    ) -> DepositService:
        """A service whose cursor lives in the books' kv (one per chain and wallet).

        With no saved cursor, scanning starts at `start_block`, or at the block after the head seen at the first
        cycle (transfers made before the bot first ran are for an admin's /fund)."""
        key = f"deposits_cursor:{chain_id}:{hot_wallet.lower()}"

        async def load() -> int | None:
            saved = book.get_value(key)
            if saved is not None:
                return int(saved)
            first = start_block if start_block is not None else int(await w3.eth.block_number) + 1
            book.set_value(key, str(first))
            return first

        async def save(block: int) -> None:
            book.set_value(key, str(block))

        watcher = DepositWatcher(
            w3,
            rlc,
            hot_wallet,
            confirmations=confirmations,
            load_cursor=load,
            save_cursor=save,
            max_range=max_range,
            ignore_senders=[hub],
        )
        return cls(book, watcher, min_deposit_nrlc=min_deposit_nrlc)

    async def cycle(self) -> DepositPoll:
        """One watcher cycle: record every final transfer (crediting linked senders), remember the pending.

        Raises what the watcher raises (ChainUnavailable) and LedgerBusy; the cursor then stays, and the
        next cycle does the same work again without crediting twice."""
        result = await self.watcher.poll(on_final=self._record)
        self._pending = result.pending
        return result

    async def _record(self, transfers: list[RlcTransfer]) -> None:
        for t in transfers:
            try:
                deposit, new = self.book.deposits.record(
                    t.tx_hash,
                    t.log_index,
                    t.block_number,
                    t.block_hash,
                    t.sender,
                    t.amount,
                    min_credit=self.min_deposit_nrlc,
                )
            except DepositConflict as exc:  # the chain says otherwise than the books: a person must look
                log.error("event=deposit_conflict tx=%s log_index=%d error=%s", t.tx_hash, t.log_index, exc)
                continue
            if new:
                log.info(
                    "event=deposit_recorded tx=%s log_index=%d block=%d sender=%s nrlc=%d status=%s user=%s",
                    t.tx_hash,
                    t.log_index,
                    t.block_number,
                    t.sender.lower(),
                    t.amount,
                    deposit.status,
                    deposit.user_id,
                )

    def notices(self, limit: int = 100) -> list[DepositNotice]:
        """Credited deposits whose user has not been told, with the text (balance as of now)."""
        out = []
        for d in self.book.deposits.unnotified(limit):
            assert d.user_id is not None
            balance = self.book.balance(d.user_id).available
            out.append(DepositNotice(d.user_id, d.tx_hash, d.log_index, notice_text(d.amount, d.sender, balance)))
        return out

    async def tell(self, send: Callable[[DepositNotice], Awaitable[bool]]) -> int:
        """Send every notice owed; one is marked told only when `send` returned True (Telegram took it).

        `send` returns False (or raises) when the message did not go: it is sent again at the next call.
        Returns how many were told."""
        told = 0
        for notice in self.notices():
            try:
                accepted = await send(notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next cycle tries again; the credit is in the books
                log.warning("event=deposit_notice_failed user=%s tx=%s error=%r", notice.user_id, notice.tx_hash, exc)
                accepted = False
            if accepted:
                self.told(notice)
                told += 1
                log.info(
                    "event=deposit_told user=%s tx=%s log_index=%d", notice.user_id, notice.tx_hash, notice.log_index
                )
        return told

    async def run(
        self,
        send: Callable[[DepositNotice], Awaitable[bool]],
        *,
        interval_s: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Cycle and tell forever (until cancelled). A failure is logged and waited out with `retry`'s wait for
        the number of failures in a row; nothing is lost: the cursor moves only after the books were written."""
        policy = retry or RetryPolicy(base_delay_s=1.0, max_delay_s=60.0)
        failures = 0
        while True:
            failed: Exception | None = None
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a supervised loop: log, wait, try again
                failed = exc
            try:  # also when the chain is down: credits made before (or assigned by an admin) are told
                await self.tell(send)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the books were busy: the next round tells
                failed = failed or exc
            if failed is not None:
                failures += 1
                wait = policy.wait_s(failures)
                log.warning(
                    "event=deposit_cycle_failed failures=%d retry_in_s=%.1f error=%r", failures, wait, str(failed)[:300]
                )
            else:
                if failures:
                    log.info("event=deposit_cycle_recovered after_failures=%d", failures)
                failures = 0
                wait = interval_s
            await asyncio.sleep(wait)

    def told(self, notice: DepositNotice) -> None:
        """The user got the notice: do not send it again."""
        self.book.deposits.mark_notified(notice.tx_hash, notice.log_index)

    def pending_for(self, user: int) -> list[RlcTransfer]:
        """Transfers from the user's linked addresses seen in the last cycle but not final yet."""
        mine = {link.address for link in self.book.links.addresses(user)}
        return [t for t in self._pending if t.sender.lower() in mine]

    def balance_lines(self, user: int) -> list[str]:
        """Lines for /balance: linked addresses, then pending deposits with their confirmations."""
        lines = [f"Linked: {link.address}" for link in self.book.links.addresses(user)]
        head = self.watcher.cursor
        for t in self.pending_for(user):
            lines.append(
                f"Pending: {format_rlc(t.amount)} from {short_address(t.sender)} "
                f"(block {t.block_number}, credited after {self.watcher.confirmations} confirmations)"
            )
        if not lines and head is not None:
            lines.append("No linked address: /link one to fund yourself with RLC.")
        return lines

    def unclaimed(self, limit: int = 50) -> list[Deposit]:
        """Deposits held for admins (unlinked sender or below the minimum), oldest first."""
        return self.book.deposits.unclaimed(limit)

    def unclaimed_text(self, limit: int = 50) -> str:
        """The /unclaimed answer: one line per held deposit, with the id to assign it by."""
        held = self.unclaimed(limit)
        if not held:
            return "No unclaimed deposits."
        lines = [f"{format_rlc(d.amount)} from {d.sender} (block {d.block_number}) id {natural_id(d)}" for d in held]
        return "Unclaimed deposits (assign: /unclaimed ID USER):\n" + "\n".join(lines)

    def assign(self, deposit_id: str, user: int, admin: int) -> Deposit:
        """Credit held deposit "0xTX:INDEX" to `user` on `admin`'s word (idempotent). Raises AssignRefused."""
        match = _NATURAL_RE.fullmatch(deposit_id.strip())
        if match is None:
            raise AssignRefused("Name the deposit as /unclaimed lists it: 0xTXHASH:LOGINDEX.")
        try:
            return self.book.deposits.assign(match.group(1), int(match.group(2)), user, admin)
        except UnknownDeposit:
            raise AssignRefused(f"No deposit {deposit_id} is recorded.") from None
        except DepositConflict as exc:
            raise AssignRefused(f"Not assigned: {exc}.") from None
        except InvalidArgument as exc:
            raise AssignRefused(f"Not assigned: {exc}.") from None
