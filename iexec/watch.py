"""Follow any number of iExec tasks at a cost that does not grow with their number.

    watcher = TaskWatcher(w3, hub_address, load_cursor=db_load, save_cursor=db_save)
    watcher.follow_deal(deal_id)                 # or follow_task(task_id, final_deadline=...)
    watcher.follow_request(request_hash)         # after a crash: find the deal of a signed request order
    for event in await watcher.poll():           # one tracking cycle
        ...  # DealMatched, DealScheduled, TaskInitialized, TaskFinalized (carries results), TaskClaimed,
             # TaskDeadlinePassed (final deadline passed on block time without a terminal event)

One cycle is: `eth_getBlockByNumber(latest)` (head and block time) and one `eth_getLogs` per chunk of at most
`max_range` blocks, filtered by the hub's address and the five event topics (never per task), starting a few
blocks before the persisted cursor to survive shallow reorgs (events are deduplicated). `viewTask` is read
only for tasks whose final deadline passed on block time without a terminal event, once per task; `viewDeal`
once per deal whose deadline is unknown. The cursor is saved after each chunk through the caller's hook.

Delivery is at least once: a watcher restarted from a saved cursor re-reads the re-scan window, so an
event may come again after a restart (handlers must be idempotent); within one watcher, events are
deduplicated. A log removed by a reorg deeper than the window is not retracted.
It never sends a transaction: claiming is the caller's decision (see `Hub.claim`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.types import FilterParams

from iexec.hub import Hub, HubEvent, Task, TaskStatus, decode_hub_log, event_topic
from iexec.retry import RetryPolicy
from iexec.tx import with_retry

log = logging.getLogger(__name__)

WATCHED_EVENTS = ("OrdersMatched", "SchedulerNotice", "TaskInitialize", "TaskFinalize", "TaskClaimed")
FINAL_DEADLINE_RATIO = 10  # PoCo: final deadline = deal start + 10 x category time ref


# ----------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class WatchEvent:
    """Base of what the watcher emits: where on chain it was seen (block 0 for state reads)."""

    block_number: int
    tx_hash: str


@dataclass(frozen=True)
class DealMatched(WatchEvent):
    """OrdersMatched for a followed request order: the deal id and the hashes of its orders."""

    deal_id: bytes
    request_hash: bytes
    app_hash: bytes
    workerpool_hash: bytes
    volume: int


@dataclass(frozen=True)
class DealScheduled(WatchEvent):
    """SchedulerNotice: the workerpool was told about a followed deal."""

    deal_id: bytes
    workerpool: str


@dataclass(frozen=True)
class TaskInitialized(WatchEvent):
    """TaskInitialize: the task is ACTIVE, its deadlines run."""

    task_id: bytes
    workerpool: str


@dataclass(frozen=True)
class TaskFinalized(WatchEvent):
    """TaskFinalize: the task is COMPLETED; `results` is what the workerpool published (JSON bytes)."""

    task_id: bytes
    results: bytes


@dataclass(frozen=True)
class TaskClaimed(WatchEvent):
    """TaskClaimed: the task FAILED past its deadline and the requester was refunded."""

    task_id: bytes


@dataclass(frozen=True)
class TaskDeadlinePassed(WatchEvent):
    """The final deadline passed on block time without a terminal event; `task` is the viewTask read
    (status UNSET: never initialized -> initialize_and_claim_array; ACTIVE/REVEALING -> claim)."""

    task_id: bytes
    task: Task


# ----------------------------------------------------------------------------------------------- log scans

#: Words of a node's refusal of an eth_getLogs block range as too wide (or of its answer as too large).
RANGE_REFUSALS = ("range", "limit", "too many")


class _LogCounts(Protocol):
    get_logs: int


class LogScanner(Protocol):
    """What get_logs_narrowing reads and updates on its owner (TaskWatcher, iexec.deposits.DepositWatcher)."""

    w3: AsyncWeb3
    retry: RetryPolicy
    max_range: int

    @property
    def stats(self) -> _LogCounts: ...


async def get_logs_narrowing(
    owner: LogScanner, params: FilterParams, logger: logging.Logger, event: str
) -> list[Any] | None:
    """eth_getLogs under the owner's retry policy, counted in `owner.stats.get_logs`.

    When the node refuses the block range as too wide, halve `owner.max_range`, log `event=<event>` on `logger`
    and return None: the caller asks again over the narrower window. At a one-block range, or for any other RPC
    error, raise.
    """
    try:
        logs = await with_retry(lambda: owner.w3.eth.get_logs(params), owner.retry, "get_logs")
    except Web3RPCError as exc:
        owner.stats.get_logs += 1
        if owner.max_range > 1 and any(w in str(exc).lower() for w in RANGE_REFUSALS):
            owner.max_range = max(1, owner.max_range // 2)
            logger.warning("event=%s max_range=%d", event, owner.max_range)
            return None
        raise
    owner.stats.get_logs += 1
    return list(logs)


# ----------------------------------------------------------------------------------------------- state


@dataclass
class _Followed:
    task_id: bytes
    deal_id: bytes | None
    final_deadline: int | None
    deadline_reported: bool = False


@dataclass
class WatchStats:
    """Counters of the watcher's own RPC calls, by kind."""

    cycles: int = 0
    block_reads: int = 0
    get_logs: int = 0
    view_task: int = 0
    view_deal: int = 0
    view_category: int = 0

    @property
    def calls(self) -> int:
        return self.block_reads + self.get_logs + self.view_task + self.view_deal + self.view_category


@dataclass
class _Deal:
    bot_first: int
    bot_size: int
    final_deadline: int | None = None
    tasks: list[bytes] = field(default_factory=list)


CursorLoad = Callable[[], Awaitable["int | None"]]
CursorSave = Callable[[int], Awaitable[None]]


class TaskWatcher:
    """Event-driven tracker of tasks, deals and request orders on one hub."""

    def __init__(
        self,
        w3: AsyncWeb3,
        hub: str,
        *,
        load_cursor: CursorLoad | None = None,
        save_cursor: CursorSave | None = None,
        start_block: int = 0,
        max_range: int = 2000,
        reorg_depth: int = 5,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.w3 = w3
        self.hub = to_checksum_address(hub)
        self._views = Hub(None, self.hub, w3=w3, retry=retry)
        self._load_cursor = load_cursor
        self._save_cursor = save_cursor
        self._cursor: int | None = None
        self.start_block = start_block
        self.max_range = max(1, max_range)
        self.reorg_depth = max(0, reorg_depth)
        self.retry = retry or RetryPolicy()
        self.stats = WatchStats()
        self._tasks: dict[bytes, _Followed] = {}
        self._deals: dict[bytes, _Deal] = {}
        self._requests: set[bytes] = set()
        self._seen: dict[tuple[str, int], int] = {}  # log key -> block, pruned below the re-scan window
        self._topics = ["0x" + event_topic(name).hex() for name in WATCHED_EVENTS]
        self._category_refs: dict[int, int] = {}

    # -- what to follow -----------------------------------------------------------------------------------

    def follow_task(self, task_id: bytes, *, final_deadline: int | None = None, deal_id: bytes | None = None) -> None:
        """Follow one task. Without `final_deadline` (block time), it is read once from its deal."""
        task_id = bytes(task_id)
        if task_id not in self._tasks:
            self._tasks[task_id] = _Followed(task_id, deal_id, final_deadline)

    def follow_deal(
        self, deal_id: bytes, *, bot_first: int = 0, bot_size: int = 1, final_deadline: int | None = None
    ) -> list[bytes]:
        """Follow the deal's tasks (idx bot_first .. bot_first+bot_size-1); returns their ids."""
        deal_id = bytes(deal_id)
        deal = self._deals.setdefault(deal_id, _Deal(bot_first, bot_size, final_deadline))
        deal.tasks = [Hub.task_id(deal_id, idx) for idx in range(bot_first, bot_first + bot_size)]
        for task_id in deal.tasks:
            self.follow_task(task_id, final_deadline=final_deadline, deal_id=deal_id)
        return list(deal.tasks)

    def follow_request(self, request_hash: bytes) -> None:
        """Watch for the OrdersMatched of a request order; its deal is then followed automatically."""
        self._requests.add(bytes(request_hash))

    def unfollow(self, task_id: bytes) -> None:
        """Stop following a task."""
        self._tasks.pop(bytes(task_id), None)

    @property
    def following(self) -> int:
        """Number of tasks followed."""
        return len(self._tasks)

    # -- one cycle -----------------------------------------------------------------------------------------

    async def poll(self) -> list[WatchEvent]:
        """One tracking cycle; returns the new events, in chain order, then deadline reports."""
        self.stats.cycles += 1
        head = await with_retry(lambda: self.w3.eth.get_block("latest"), self.retry, "get_block")
        self.stats.block_reads += 1
        head_number, now = int(head["number"]), int(head["timestamp"])
        if self._cursor is None:
            loaded = await self._load_cursor() if self._load_cursor else None
            self._cursor = self.start_block if loaded is None else int(loaded)
        events: list[WatchEvent] = []
        start = max(self.start_block, self._cursor - self.reorg_depth)
        while start <= head_number:
            end = min(start + self.max_range - 1, head_number)
            logs = await self._get_logs(start, end)
            if logs is None:  # the node refused the range: halve it and retry
                continue
            for raw in logs:
                events.extend(await self._handle(raw))
            start = end + 1
            self._cursor = max(self._cursor, start)
            if self._save_cursor:
                await self._save_cursor(self._cursor)
        self._prune_seen(head_number)
        events.extend(await self._check_deadlines(now))
        return events

    async def _get_logs(self, start: int, end: int) -> list[Any] | None:
        params: FilterParams = {
            "address": self.hub,
            "fromBlock": start,
            "toBlock": end,
            "topics": [self._topics],
        }
        return await get_logs_narrowing(self, params, log, "get_logs_range_reduced")

    def _prune_seen(self, head: int) -> None:
        floor = head - 2 * self.reorg_depth - 1
        if len(self._seen) > 10_000 or floor > 0:
            self._seen = {k: b for k, b in self._seen.items() if b >= floor}

    async def _handle(self, raw: Any) -> list[WatchEvent]:
        event = decode_hub_log(raw, self.hub)
        if event is None or event.key in self._seen:
            return []
        self._seen[event.key] = event.block_number
        handler = getattr(self, f"_on_{event.name}", None)
        return await handler(event) if handler else []

    async def _on_OrdersMatched(self, event: HubEvent) -> list[WatchEvent]:
        request_hash = bytes(event.args["requestHash"])
        deal_id = bytes(event.args["dealid"])
        if request_hash not in self._requests and deal_id not in self._deals:
            return []
        self._requests.discard(request_hash)
        if deal_id not in self._deals:
            deal = await self._views.view_deal(deal_id)
            self.stats.view_deal += 1
            self.follow_deal(
                deal_id, bot_first=deal.bot_first, bot_size=deal.bot_size, final_deadline=await self._deadline_of(deal)
            )
        return [
            DealMatched(
                event.block_number,
                event.tx_hash,
                deal_id,
                request_hash,
                bytes(event.args["appHash"]),
                bytes(event.args["workerpoolHash"]),
                int(event.args["volume"]),
            )
        ]

    async def _on_SchedulerNotice(self, event: HubEvent) -> list[WatchEvent]:
        deal_id = bytes(event.args["dealid"])
        if deal_id not in self._deals:
            return []
        return [DealScheduled(event.block_number, event.tx_hash, deal_id, event.args["workerpool"])]

    async def _on_TaskInitialize(self, event: HubEvent) -> list[WatchEvent]:
        task_id = bytes(event.args["taskid"])
        if task_id not in self._tasks:
            return []
        return [TaskInitialized(event.block_number, event.tx_hash, task_id, event.args["workerpool"])]

    async def _on_TaskFinalize(self, event: HubEvent) -> list[WatchEvent]:
        task_id = bytes(event.args["taskid"])
        if self._tasks.pop(task_id, None) is None:
            return []
        return [TaskFinalized(event.block_number, event.tx_hash, task_id, bytes(event.args["results"]))]

    async def _on_TaskClaimed(self, event: HubEvent) -> list[WatchEvent]:
        task_id = bytes(event.args["taskid"])
        if self._tasks.pop(task_id, None) is None:
            return []
        return [TaskClaimed(event.block_number, event.tx_hash, task_id)]

    # -- deadlines -----------------------------------------------------------------------------------------

    async def _deadline_of(self, deal: Any) -> int:
        ref = self._category_refs.get(deal.category)
        if ref is None:
            refs = {c.id: c.work_clock_time_ref for c in await self._views.categories()}
            self.stats.view_category += 1 + len(refs)
            self._category_refs.update(refs)
            ref = refs[deal.category]
        return int(deal.start_time) + FINAL_DEADLINE_RATIO * ref

    async def _check_deadlines(self, now: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        for followed in list(self._tasks.values()):
            if followed.deadline_reported:
                continue
            deadline = followed.final_deadline
            if deadline is None:
                if followed.deal_id is None:
                    continue  # nothing to judge by: the caller gave no deadline and no deal
                deal = self._deals.get(followed.deal_id)
                if deal is None or deal.final_deadline is None:
                    view = await self._views.view_deal(followed.deal_id)
                    self.stats.view_deal += 1
                    deadline = await self._deadline_of(view) if view.exists else None
                    if deal is not None:
                        deal.final_deadline = deadline
                else:
                    deadline = deal.final_deadline
                followed.final_deadline = deadline
                if deadline is None:
                    continue
            if deadline > now:
                continue
            out.extend(await self._report_deadline(followed))
        return out

    async def _report_deadline(self, followed: _Followed) -> list[WatchEvent]:
        task = await self._views.view_task(followed.task_id)
        self.stats.view_task += 1
        followed.deadline_reported = True
        if task.status == TaskStatus.COMPLETED:  # its event is behind the cursor (e.g. followed late)
            self._tasks.pop(followed.task_id, None)
            return [TaskFinalized(0, "", followed.task_id, task.results)]
        if task.status == TaskStatus.FAILED:
            self._tasks.pop(followed.task_id, None)
            return [TaskClaimed(0, "", followed.task_id)]
        return [TaskDeadlinePassed(0, "", followed.task_id, task)]

    def rearm_deadline(self, task_id: bytes) -> None:
        """Report the task's deadline again on the next cycle (e.g. after a claim that did not land)."""
        followed = self._tasks.get(bytes(task_id))
        if followed is not None:
            followed.deadline_reported = False
