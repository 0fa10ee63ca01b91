"""Benchmark: JSON-RPC calls per tracking cycle with 10, 100 and 1000 tasks in flight on the devnet.

    .venv/bin/python bench/tracking.py

For each size, a fresh anvil (real PoCo, from the devnet snapshot) gets one deal of N tasks (one match of a
volume-N request order). Calls are counted at the RPC boundary (each call of a batch counts):
  ours_idle    one watcher cycle while nothing happens (after the first cycle, which reads deadlines once)
  ours_finish  one watcher cycle in which all N tasks finish (TaskFinalize for each)
  sdk          the SDK's way: one viewTask per task per cycle (measured, not computed)
Then the time to build and sign 1000 request orders, and the deposit watcher (bot.deposits over
iexec.deposits, confirmations 1): JSON-RPC calls of one idle cycle and of one cycle that credits 5 transfers,
with 1 and with 1000 linked users in the books (they must be equal: the logs are filtered by the hot wallet,
never per user). Ends with one RESULT line.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.deposits import DepositService
from devnet.accounts import APP_OWNER, BOT, POOL_OWNER, REQUESTER, SPARE_1, WORKER
from devnet.anvil import Anvil
from devnet.chain import deployed_snapshot, deposit, fund_rlc, mine, register_app, register_workerpool
from iexec.hub import Hub
from iexec.orders import ZERO_ADDRESS, AppOrder, Domain, WorkerpoolOrder, build_request_order
from iexec.pool import WorkerpoolClient
from iexec.tx import close, connect, rpc_calls
from iexec.watch import TaskFinalized, TaskWatcher
from ledger import Ledger

RESULTS = b'{"storage":"ipfs","location":"/ipfs/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}'


async def one_deal(rpc_url: str, dep, n: int) -> tuple[Hub, bytes]:
    deposit(rpc_url, dep, REQUESTER, 10**12)
    deposit(rpc_url, dep, POOL_OWNER, 10**12)
    app = register_app(rpc_url, dep, APP_OWNER, "bench", "docker.io/bench/app:1", b"\x01" * 32)
    pool = register_workerpool(rpc_url, dep, POOL_OWNER, "bench pool")
    hub = Hub(rpc_url, dep.hub, account=REQUESTER)
    domain = await hub.domain()
    ao = AppOrder(
        app=app,
        appprice=1,
        volume=n,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=1,
    ).sign(APP_OWNER, domain)
    wo = WorkerpoolOrder(
        workerpool=pool,
        workerpoolprice=1,
        volume=n,
        tag=0,
        category=0,
        trust=0,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=2,
    ).sign(POOL_OWNER, domain)
    ro = build_request_order(app, REQUESTER.address, 0, 1, 1, {"iexec_args": "bench"}, f"bench-{n}")
    ro = type(ro)(**{**{f: getattr(ro, f) for f, _ in ro.FIELDS}, "volume": n}).sign(REQUESTER, domain)
    return hub, await hub.match_orders(ao, None, wo, ro)


async def finish_all(hub: Hub, deal_id: bytes, n: int) -> None:
    pool = WorkerpoolClient(hub.w3, hub.address, scheduler=POOL_OWNER, worker=WORKER)
    for first in range(0, n, 50):
        await asyncio.gather(*(pool.complete(deal_id, idx, RESULTS) for idx in range(first, min(n, first + 50))))


async def measure(n: int, state: Path, dep) -> dict[str, float]:
    with Anvil(load_state=state) as anvil:
        hub, deal_id = await one_deal(anvil.rpc_url, dep, n)
        w3 = connect(anvil.rpc_url)
        start = await w3.eth.block_number
        watcher = TaskWatcher(w3, hub.address, start_block=start, max_range=10_000)
        tasks = watcher.follow_deal(deal_id, bot_size=n)
        await watcher.poll()  # first cycle: reads the deal's deadline once
        before = rpc_calls(w3)
        await watcher.poll()
        idle = rpc_calls(w3) - before
        sdk_w3 = connect(anvil.rpc_url)
        sdk_hub = Hub(None, hub.address, w3=sdk_w3)
        await sdk_hub.view_task(tasks[0])  # warm web3's chain id cache: count steady-state calls only
        before = rpc_calls(sdk_w3)
        t0 = time.perf_counter()
        for task_id in tasks:
            await sdk_hub.view_task(task_id)
        sdk, sdk_s = rpc_calls(sdk_w3) - before, time.perf_counter() - t0
        await finish_all(hub, deal_id, n)
        before = rpc_calls(w3)
        t0 = time.perf_counter()
        events = await watcher.poll()
        finish, finish_s = rpc_calls(w3) - before, time.perf_counter() - t0
        done = sum(isinstance(e, TaskFinalized) for e in events)
        assert done == n, f"expected {n} TaskFinalized, got {done}"
        for client in (w3, sdk_w3, hub.w3):
            await close(client)
        return {"idle": idle, "finish": finish, "finish_s": finish_s, "sdk": sdk, "sdk_s": sdk_s}


def sign_time(count: int = 1000) -> float:
    domain = Domain(chain_id=31337, verifying_contract="0x5FC8d32690cc91D4c39d9d3abcBD16989F875707")
    t0 = time.perf_counter()
    for i in range(count):
        build_request_order(
            "0x" + "11" * 20,
            REQUESTER.address,
            0,
            10**9,
            10**9,
            {"iexec_args": "--score 0.7", "iexec_input_files": [f"https://in.example/{i}.png"]},
            f"job-{i}",
        ).sign(REQUESTER, domain)
    return time.perf_counter() - t0


async def deposit_calls(state: Path, dep, linked: int) -> dict[str, float]:
    """Calls of one idle deposit cycle and of one that credits 5 transfers, with `linked` users linked."""
    with Anvil(load_state=state) as anvil, tempfile.TemporaryDirectory() as tmp:
        book = Ledger(Path(tmp) / "books.db")
        for i in range(linked - 1):
            nonce = "0x" + secrets.token_hex(32)
            book.links.issue(1000 + i, nonce)
            book.links.link(1000 + i, "0x" + (1000 + i).to_bytes(20, "big").hex(), nonce, "eip712")
        nonce = "0x" + secrets.token_hex(32)
        book.links.issue(1, nonce)
        book.links.link(1, SPARE_1.address, nonce, "eip712")
        w3 = connect(anvil.rpc_url)
        service = DepositService.build(
            book,
            w3,
            chain_id=31337,
            rlc=dep.rlc,
            hot_wallet=BOT.address,
            hub=dep.hub,
            confirmations=1,
            start_block=await w3.eth.block_number,
        )
        await service.cycle()
        before = rpc_calls(w3)
        await service.cycle()
        idle = rpc_calls(w3) - before
        for _ in range(5):
            fund_rlc(anvil.rpc_url, dep, BOT.address, 10**9, sender=SPARE_1)
        mine(anvil.rpc_url, 1)
        before = rpc_calls(w3)
        t0 = time.perf_counter()
        await service.cycle()
        credit, credit_s = rpc_calls(w3) - before, time.perf_counter() - t0
        assert book.balance(1).available == 5 * 10**9, "the 5 transfers were not credited"
        book.audit()
        await close(w3)
        return {"idle": idle, "credit": credit, "credit_s": credit_s}


async def main() -> None:
    state, dep = deployed_snapshot()
    figures: dict[int, dict[str, float]] = {}
    print(
        f"{'tasks':>6} {'ours idle':>10} {'ours finish':>12} {'finish cycle s':>15} {'sdk viewTask':>13} "
        f"{'sdk cycle s':>12}"
    )
    for n in (10, 100, 1000):
        f = figures[n] = await measure(n, state, dep)
        print(
            f"{n:>6} {f['idle']:>10.0f} {f['finish']:>12.0f} {f['finish_s']:>15.3f} {f['sdk']:>13.0f} "
            f"{f['sdk_s']:>12.3f}"
        )
    sign_s = sign_time()
    print(f"build + sign 1000 request orders: {sign_s * 1000:.0f} ms ({sign_s:.3f} ms per order)")
    deposits = {n: await deposit_calls(state, dep, n) for n in (1, 1000)}
    print(f"{'linked users':>12} {'deposit idle calls':>19} {'credit-5 calls':>15} {'credit-5 cycle s':>17}")
    for n, f in deposits.items():
        print(f"{n:>12} {f['idle']:>19.0f} {f['credit']:>15.0f} {f['credit_s']:>17.3f}")
    print(
        "RESULT "
        + " ".join(
            [
                f"calls_idle_{n}={figures[n]['idle']:.0f} calls_finish_{n}={figures[n]['finish']:.0f} "
                f"sdk_calls_{n}={figures[n]['sdk']:.0f}"
                for n in figures
            ]
            + [f"sign_1000_ms={sign_s * 1000:.0f}"]
            + [
                f"deposit_calls_idle_{n}={f['idle']:.0f} deposit_calls_credit5_{n}={f['credit']:.0f}"
                for n, f in deposits.items()
            ]
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
