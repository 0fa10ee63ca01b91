"""Fixtures of the devnet workerpool tests: a running pool over the `chain` fixture, and a requester.

    async def test_x(pool_env):                      # PoolEnv: market, gateway, workerpool (test app)
        deal, tasks = await pool_env.request(args="--sleep 0.2", volume=2)
        outcome = await pool_env.pool.wait_task(tasks[0])

`pool_env` runs the devnet's small test app; `make_pool_env(chain, app_cmd=..., ...)` builds one with other
settings. The requester side (request order, matchOrders) is done here with web3 directly: tests of the
devnet must not depend on the bot. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_utils import keccak
from PIL import Image
from web3.logs import DISCARD

from devnet import chain as devchain
from devnet.accounts import POOL_OWNER, REQUESTER, WORKER
from devnet.gateway import ResultGateway
from devnet.market import MarketStandIn
from devnet.up import REPO_DIR, fund_stake, publish_app_order, register_segmentation_app
from devnet.workerpool import Workerpool, task_id
from iexec.orders import NULL_DATASET_ORDER, AppOrder, Domain, RequestOrder

ZERO = "0x0000000000000000000000000000000000000000"
TEST_APP = [sys.executable, "-m", "devnet.testapp"]
APP_PRICE = 5_000_000
POOL_PRICE = 10_000_000


def png_bytes(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (20, 120, 200)) -> bytes:
    """A small PNG image."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class PoolEnv:
    """A workerpool on a fresh chain, with the market, the gateway, the app and an input server."""

    chain: Any
    market: MarketStandIn
    gateway: ResultGateway
    pool: Workerpool
    app: str
    app_order: AppOrder
    inputs_url: str
    inputs: dict[str, bytes]

    @property
    def rpc_url(self) -> str:
        return self.chain.rpc_url

    def serve_input(self, data: bytes, name: str | None = None) -> str:
        """Serve `data` at a fresh loopback URL; returns it."""
        name = name or os.urandom(8).hex()
        self.inputs[name] = data
        return f"{self.inputs_url}/inputs/{name}"

    async def request(
        self,
        *,
        args: str = "",
        input_files: list[str] | None = None,
        volume: int = 1,
        image: bytes | None = None,
        fault: str | None = None,
    ) -> tuple[str, list[str]]:
        """Sign a request order as REQUESTER and match it with the app and the pool's newest order.

        Returns (deal id, task ids). By default the input is one small PNG served on loopback. `fault`
        is set for this deal only, before matching (the deal id is keccak(requestHash, 0)).
        """
        files = input_files if input_files is not None else [self.serve_input(image or png_bytes())]
        dep = self.chain.deployment
        domain = Domain(dep.chain_id, dep.hub)
        params = json.dumps({"iexec_args": args, "iexec_input_files": files, "iexec_result_storage_provider": "ipfs"})
        request = RequestOrder(
            app=self.app,
            appmaxprice=APP_PRICE,
            dataset=ZERO,
            datasetmaxprice=0,
            workerpool=ZERO,
            workerpoolmaxprice=POOL_PRICE,
            requester=REQUESTER.address,
            volume=volume,
            tag=bytes(32),
            category=0,
            trust=0,
            beneficiary=REQUESTER.address,
            callback=ZERO,
            params=params,
            salt=os.urandom(32),
        ).sign_with(REQUESTER, domain)
        pool_order = self.pool.orders[-1]
        if fault is not None:
            self.pool.faults.set(fault, keccak(request.hash(domain) + bytes(32)))

        def match() -> tuple[str, int]:
            receipt = devchain.TxSender(devchain.web3_for(self.rpc_url), REQUESTER).call(
                dep.hub,
                self.chain.hub.abi,
                "matchOrders",
                self.app_order.to_tuple(),
                NULL_DATASET_ORDER.to_tuple(),
                pool_order.to_tuple(),
                request.to_tuple(),
            )
            events = self.chain.hub.events.OrdersMatched().process_receipt(receipt, errors=DISCARD)
            deal = "0x" + bytes(events[0]["args"]["dealid"]).hex()
            return deal, self.chain.hub.functions.viewDeal(deal).call()[11]

        # Sync web3 calls run off the event loop: web3 shares one lock between its sync and async
        # providers, and a sync call on the loop's thread can deadlock the pool's async calls.
        deal, first = await asyncio.to_thread(match)
        return deal, [task_id(deal, first + i) for i in range(volume)]

    async def task(self, tid: str) -> Any:
        """viewTask as a tuple: status, dealid, idx, timeref, contributionDeadline, revealDeadline,
        finalDeadline, consensusValue, revealCounter, winnerCounter, contributors, resultDigest, results..."""
        return await asyncio.to_thread(self.chain.hub.functions.viewTask(tid).call)

    async def stake(self, address: str = REQUESTER.address) -> tuple[int, int]:
        """(free, locked) hub stake of `address`."""
        return await asyncio.to_thread(devchain.stake_of, self.rpc_url, self.chain.deployment, address)

    async def send(self, function: str, *args: Any) -> Any:
        """Send a hub transaction as REQUESTER; raises devnet TransactionFailed on revert."""

        def call() -> Any:
            sender = devchain.TxSender(devchain.web3_for(self.rpc_url), REQUESTER)
            return sender.call(self.chain.deployment.hub, self.chain.hub.abi, function, *args)

        return await asyncio.to_thread(call)

    async def increase_time(self, seconds: int) -> int:
        """Move chain time forward (and mine a block)."""
        return await asyncio.to_thread(devchain.increase_time, self.rpc_url, seconds)


@asynccontextmanager
async def make_pool_env(
    chain: Any,
    *,
    app_cmd: list[str] | None = None,
    workers: int = 2,
    time_scale: float = 1.0,
    app_env: dict[str, str] | None = None,
    volume: int = 50,
) -> AsyncIterator[PoolEnv]:
    """Start market, gateway, input server and workerpool over `chain`; stop them all afterwards."""
    dep = chain.deployment
    await asyncio.to_thread(devchain.deposit, chain.rpc_url, dep, REQUESTER, 100 * 10**9)
    await asyncio.to_thread(fund_stake, chain.rpc_url, dep, POOL_OWNER.address, 100 * 10**9)
    app = await asyncio.to_thread(register_segmentation_app, chain.rpc_url, dep)
    inputs: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        data = inputs.get(request.match_info["name"])
        return web.Response(body=data, content_type="image/png") if data else web.Response(status=404)

    web_app = web.Application()
    web_app.router.add_get("/inputs/{name}", serve)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    inputs_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    market, gateway = MarketStandIn(dep.chain_id, chain.rpc_url, dep.hub), ResultGateway()
    pool: Workerpool | None = None
    try:
        await market.start()
        await gateway.start()
        async with aiohttp.ClientSession() as session:
            app_order = await publish_app_order(session, market.base_url, dep, app, APP_PRICE)
        pool = Workerpool(
            chain.rpc_url,
            dep,
            POOL_OWNER,
            WORKER,
            market.base_url,
            gateway,
            app_cmd or TEST_APP,
            workers=workers,
            price=POOL_PRICE,
            volume=volume,
            time_scale=time_scale,
            market=market,
            app_env=app_env,
            app_cwd=REPO_DIR,
            poll_interval=0.02,
        )
        await pool.start(control_port=0)
        yield PoolEnv(chain, market, gateway, pool, app, app_order, inputs_url, inputs)
    finally:
        if pool is not None:
            await pool.stop()
        await gateway.stop()
        await market.stop()
        await runner.cleanup()


@pytest.fixture
async def pool_env(chain: Any) -> AsyncIterator[PoolEnv]:
    """A workerpool running the devnet test app (2 workers) on a fresh chain."""
    async with make_pool_env(chain) as env:
        yield env
