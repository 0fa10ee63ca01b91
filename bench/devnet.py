"""Benchmark of the devnet: its own overhead per task, and how long `devnet up` takes to start.

    .venv/bin/python bench/devnet.py

1. Twenty tasks, one after the other, through the workerpool running the devnet test app: the time from
   `matchOrders` mined to the result being downloadable through the gateway (as a requester sees it:
   viewTask COMPLETED, then GET /ipfs/<id>), minus the app's own run time. Target: median under 1 s.
2. `Devnet.start()` (what `python -m devnet up` runs) cold (empty snapshot cache and data folder: deploys
   PoCo and dumps a snapshot) and from the snapshot (cache present, new data folder).
Ends with one line `RESULT ...`.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from web3 import Web3

from devnet import chain as devchain
from devnet.anvil import Anvil
from devnet.deploy import hub_abi
from devnet.up import Devnet, DevnetConfig
from iexec.results import decode_results, download_result
from tests.fixtures_devnet import make_pool_env

TASKS = 20


@dataclass
class _Chain:
    anvil: Anvil
    deployment: Any
    hub: Any

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url


async def _one_task(env: Any) -> tuple[float, float]:
    """(overhead, app seconds) of one task."""
    _deal, (tid,) = await env.request()
    mined = time.monotonic()  # request() returns once the matchOrders receipt is in
    while True:
        task = await env.task(tid)
        if task[0] == 3:
            break
        await asyncio.sleep(0.01)
    await download_result(decode_results(task[12]), [env.gateway.url], rounds=1)
    done = time.monotonic()
    outcome = await env.pool.wait_task(tid, timeout=30)
    return done - mined - outcome.app_seconds, outcome.app_seconds


async def task_overhead() -> list[float]:
    state, deployment = devchain.deployed_snapshot()
    with Anvil(load_state=state) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        chain = _Chain(anvil, deployment, w3.eth.contract(address=deployment.hub, abi=hub_abi()))
        async with make_pool_env(chain, workers=2, volume=100) as env:
            await _one_task(env)  # warm-up (imports, first connections)
            results = [await _one_task(env) for _ in range(TASKS)]
    overheads = [r[0] for r in results]
    apps = [r[1] for r in results]
    print(f"tasks: {TASKS}, app run time median {statistics.median(apps) * 1000:.0f} ms")
    print(
        f"overhead (matchOrders mined -> result downloadable, minus app): median "
        f"{statistics.median(overheads) * 1000:.0f} ms, min {min(overheads) * 1000:.0f} ms, "
        f"max {max(overheads) * 1000:.0f} ms"
    )
    return overheads


async def startup(cache: Path, data: Path) -> float:
    started = time.monotonic()
    async with Devnet(DevnetConfig(data_dir=data, cache_dir=cache, app="test", persist_chain=False)):
        took = time.monotonic() - started
    return took


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    overheads = await task_overhead()
    with tempfile.TemporaryDirectory() as tmp:
        cold = await startup(Path(tmp) / "cache", Path(tmp) / "data1")
        warm = await startup(Path(tmp) / "cache", Path(tmp) / "data2")
    print(f"devnet up: cold {cold:.2f} s (deploys PoCo, new wallet), from snapshot {warm:.2f} s (new wallet)")
    print(
        f"RESULT task_overhead_median_ms={statistics.median(overheads) * 1000:.0f} "
        f"task_overhead_max_ms={max(overheads) * 1000:.0f} up_cold_s={cold:.2f} up_snapshot_s={warm:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
