"""The event-based task watcher on anvil with the real PoCo: events for followed tasks only, results from
TaskFinalize, deadlines on block time, a persisted cursor, chunks, re-scans without duplicates, and a cost
per cycle that does not grow with the number of tasks."""

from __future__ import annotations

import pytest

from devnet.accounts import POOL_OWNER, WORKER
from devnet.chain import increase_time, mine
from iexec.hub import Hub, TaskStatus
from iexec.pool import WorkerpoolClient
from iexec.tx import rpc_calls
from iexec.watch import (
    DealMatched,
    TaskClaimed,
    TaskDeadlinePassed,
    TaskFinalized,
    TaskInitialized,
    TaskWatcher,
)
from tests.test_iexec_hub import Setup, app_order, make_setup, pool_order, request

RESULTS = b'{"storage":"ipfs","location":"/ipfs/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}'


class Cursor:
    def __init__(self) -> None:
        self.value: int | None = None
        self.saves = 0

    async def load(self) -> int | None:
        return self.value

    async def save(self, block: int) -> None:
        self.value, self.saves = block, self.saves + 1


@pytest.fixture
async def s(chain, rpc) -> Setup:
    """The hub test set-up (deposits, app, workerpool, a requester's Hub) on the test's chain; the Hub runs on
    an `rpc()` connection, closed after the test."""
    return await make_setup(chain, rpc)


def kinds(events) -> list[tuple[str, bytes]]:
    return [(type(e).__name__, getattr(e, "task_id", getattr(e, "deal_id", b""))) for e in events]


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_events_results_deadlines_and_cost(chain, rpc, s: Setup) -> None:
    start = await s.hub.w3.eth.block_number
    deals = [await s.hub.match_orders(app_order(s), None, pool_order(s), request(s, job=f"j{i}")) for i in range(3)]
    w3 = rpc()
    cursor = Cursor()
    watcher = TaskWatcher(
        w3, s.hub.address, load_cursor=cursor.load, save_cursor=cursor.save, start_block=start, max_range=1000
    )
    tasks = [watcher.follow_deal(d)[0] for d in deals]
    for i in range(200):  # tasks nobody runs, far from their deadline, cost nothing per cycle
        watcher.follow_task(Hub.task_id(bytes(32), i), final_deadline=2**62)
    calls = rpc_calls(w3)
    events = await watcher.poll()  # the matches of the followed deals; deadlines read once per deal
    first_cycle = rpc_calls(w3) - calls
    assert sorted(kinds(events)) == sorted([("DealMatched", d) for d in deals] + [("DealScheduled", d) for d in deals])
    assert {e.workerpool for e in events if hasattr(e, "workerpool")} == {s.pool}
    pool = WorkerpoolClient(s.hub.w3, s.hub.address, scheduler=POOL_OWNER, worker=WORKER)
    await pool.complete(deals[0], 0, RESULTS)
    await pool.initialize(deals[1], 0)
    calls = rpc_calls(w3)
    events = await watcher.poll()
    assert rpc_calls(w3) - calls == 2  # one block read + one eth_getLogs, whatever the number of tasks
    assert kinds(events) == [("TaskInitialized", tasks[0]), ("TaskFinalized", tasks[0]), ("TaskInitialized", tasks[1])]
    finalized = events[1]
    assert isinstance(finalized, TaskFinalized) and finalized.results == RESULTS
    assert isinstance(events[0], TaskInitialized) and events[0].workerpool == s.pool
    # + viewDeal per deal, countCategory + viewCategory x5 and web3's eth_chainId: once, not per cycle
    assert first_cycle <= 2 + 3 + 6 + 2
    # re-scanning the last blocks (reorg window) never repeats an event
    calls = rpc_calls(w3)
    assert await watcher.poll() == []
    assert rpc_calls(w3) - calls == 2
    # past the final deadline on block time: viewTask only for the two unfinished tasks, reported once
    increase_time(chain.rpc_url, 10 * 300 + 1)
    calls = rpc_calls(w3)
    events = await watcher.poll()
    assert rpc_calls(w3) - calls == 2 + 2
    assert sorted(kinds(events)) == sorted([("TaskDeadlinePassed", tasks[1]), ("TaskDeadlinePassed", tasks[2])])
    status = {e.task_id: e.task.status for e in events if isinstance(e, TaskDeadlinePassed)}
    assert status == {tasks[1]: TaskStatus.ACTIVE, tasks[2]: TaskStatus.UNSET}
    assert await watcher.poll() == []
    await s.hub.claim(tasks[1])
    await s.hub.initialize_and_claim_array([deals[2]], [0])
    events = await watcher.poll()
    assert [k for k in kinds(events) if k[0] == "TaskClaimed"] == [("TaskClaimed", tasks[1]), ("TaskClaimed", tasks[2])]
    assert watcher.following == 200 and cursor.value == await w3.eth.block_number + 1


async def test_cursor_chunks_and_request_lookup_after_restart(chain, rpc, s: Setup) -> None:
    start = await s.hub.w3.eth.block_number
    ro = request(s, job="after-crash")
    deal_id = await s.hub.match_orders(app_order(s), None, pool_order(s), ro)
    mine(chain.rpc_url, 25)
    pool = WorkerpoolClient(s.hub.w3, s.hub.address, scheduler=POOL_OWNER, worker=WORKER)
    task_id = await pool.complete(deal_id, 0, RESULTS)
    cursor = Cursor()
    w3 = rpc()
    watcher = TaskWatcher(
        w3,
        s.hub.address,
        load_cursor=cursor.load,
        save_cursor=cursor.save,
        start_block=start,
        max_range=4,
        reorg_depth=3,
    )
    watcher.follow_request(ro.hash(s.domain))  # only the signed request order's hash survived the crash
    calls = rpc_calls(w3)
    events = await watcher.poll()
    assert rpc_calls(w3) - calls - w3.provider.calls.get("eth_chainId", 0) == watcher.stats.calls
    head = await w3.eth.block_number
    chunks = -(-(head - start + 1) // 4)
    assert watcher.stats.get_logs == chunks and cursor.saves == chunks
    matched = events[0]
    assert isinstance(matched, DealMatched) and matched.deal_id == deal_id
    assert matched.request_hash == ro.hash(s.domain)
    assert kinds(events[1:]) == [("TaskInitialized", task_id), ("TaskFinalized", task_id)]
    # a restarted watcher resumes from the saved cursor minus the re-scan window (one chunk, not from
    # `start`): events in that window come again (at least once; handlers are idempotent), older ones not
    again = TaskWatcher(
        rpc(),
        s.hub.address,
        load_cursor=cursor.load,
        save_cursor=cursor.save,
        start_block=start,
        max_range=4,
        reorg_depth=3,
    )
    again.follow_task(task_id, final_deadline=2**62)
    replay = await again.poll()
    assert again.stats.get_logs == 1 and kinds(replay) == kinds(events[1:])
    assert await again.poll() == []


async def test_followed_late_task_is_found_by_its_deadline(chain, rpc, s: Setup) -> None:
    deal_id = await s.hub.match_orders(app_order(s), None, pool_order(s), request(s, job="late"))
    pool = WorkerpoolClient(s.hub.w3, s.hub.address, scheduler=POOL_OWNER, worker=WORKER)
    task_id = await pool.complete(deal_id, 0, RESULTS)
    head = await s.hub.w3.eth.block_number
    watcher = TaskWatcher(rpc(), s.hub.address, start_block=head + 1)
    watcher.follow_deal(deal_id)  # its events are behind the cursor
    assert await watcher.poll() == []
    increase_time(chain.rpc_url, 10 * 300 + 1)
    events = await watcher.poll()
    assert kinds(events) == [("TaskFinalized", task_id)] and events[0].results == RESULTS
    assert not any(isinstance(e, TaskClaimed) for e in events)
