"""The market stand-in with the official JS SDK 9.0.1 as its peer: owner filters, deals after a real match,
unpublishing an unknown order and a TEE request without a TEE app order answer as the real market API does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from devnet.accounts import APP_OWNER, POOL_OWNER, REQUESTER, SPARE_1
from devnet.chain import deposit, register_app, register_workerpool
from devnet.market import MarketStandIn
from devnet.market_orders import order_hash, parse_order
from iexec.errors import MarketReplyError
from iexec.market import MarketClient
from iexec.orders import NULL_DATASET_ORDER, ZERO_ADDRESS, AppOrder, Domain, WorkerpoolOrder, build_request_order
from tests.sdk_peer import JS, run_sdk_script

SCRIPT = JS / "market_sdk_peer.mjs"
TDX_TAG = 0x09


def _app_order(app: str, owner: Any, domain: Domain, price: int, salt: int) -> AppOrder:
    return AppOrder(
        app=app,
        appprice=price,
        volume=5,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    ).sign(owner, domain)


def _pool_order(pool: str, owner: Any, domain: Domain, price: int, salt: int) -> WorkerpoolOrder:
    return WorkerpoolOrder(
        workerpool=pool,
        workerpoolprice=price,
        volume=5,
        tag=TDX_TAG,
        category=0,
        trust=0,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    ).sign(owner, domain)


@pytest.mark.slow
async def test_the_js_sdk_sees_the_stand_in_answer_like_the_real_market(chain: Any, market: MarketStandIn) -> None:
    dep = chain.deployment
    domain = Domain(chain_id=dep.chain_id, verifying_contract=dep.hub)
    app = register_app(chain.rpc_url, dep, APP_OWNER, "segment", "docker.io/seg:1", b"\1" * 32)
    other_app = register_app(chain.rpc_url, dep, SPARE_1, "other", "docker.io/other:1", b"\2" * 32)
    pool = register_workerpool(chain.rpc_url, dep, POOL_OWNER, "devnet pool")
    other_pool = register_workerpool(chain.rpc_url, dep, SPARE_1, "someone else's pool")
    app_o, pool_o = _app_order(app, APP_OWNER, domain, 5, 1), _pool_order(pool, POOL_OWNER, domain, 10, 1)
    async with MarketClient(market.base_url, dep.chain_id, hub=dep.hub, backoff=0) as client:
        await client.publish_app_order(app_o, APP_OWNER)
        await client.publish_app_order(_app_order(other_app, SPARE_1, domain, 1, 2), SPARE_1)
        await client.publish_workerpool_order(pool_o, POOL_OWNER)
        await client.publish_workerpool_order(_pool_order(other_pool, SPARE_1, domain, 1, 2), SPARE_1)
    deposit(chain.rpc_url, dep, REQUESTER, 1000)
    deposit(chain.rpc_url, dep, POOL_OWNER, 1000)
    request = build_request_order(app, REQUESTER.address, 0, 5, 10, {"iexec_args": "x"}, "job-1").sign(
        REQUESTER, domain
    )

    def match() -> None:
        tx = chain.hub.functions.matchOrders(
            app_o.to_tuple(), NULL_DATASET_ORDER.to_tuple(), pool_o.to_tuple(), request.to_tuple()
        )
        assert chain.w3.eth.wait_for_transaction_receipt(tx.transact({"from": REQUESTER.address})).status == 1

    await asyncio.to_thread(match)
    tee_request = build_request_order(app, REQUESTER.address, 0, 5, 10, {"iexec_args": "y"}, "job-2", tag=TDX_TAG).sign(
        REQUESTER, domain
    )
    app_hash, unknown = "0x" + app_o.hash(domain).hex(), "0x" + "ab" * 32
    env = {
        "RPC": chain.rpc_url,
        "HUB": dep.hub,
        "MARKET": market.base_url,
        "APP_OWNER_KEY": "0x" + bytes(APP_OWNER.key).hex(),
        "REQUESTER_KEY": "0x" + bytes(REQUESTER.key).hex(),
        "APP_OWNER": APP_OWNER.address,
        "POOL_OWNER": POOL_OWNER.address,
        "REQUESTER": REQUESTER.address,
        "APP_HASH": app_hash,
        "UNKNOWN_HASH": unknown,
        "TEE_REQUEST": json.dumps(tee_request.to_market_json()),
    }
    seen = await run_sdk_script(SCRIPT, env, timeout=120)

    assert seen["appsByOwner"] == {"count": 1, "apps": [app], "signers": [APP_OWNER.address]}
    assert seen["poolsByOwner"] == {"count": 1, "pools": [pool]}
    [deal] = seen["requesterDeals"]["deals"]
    assert seen["requesterDeals"]["count"] == 1
    assert deal == {
        "dealid": deal["dealid"],
        "appHash": app_hash,
        "requestHash": "0x" + request.hash(domain).hex(),
        "app": app,
        "appOwner": APP_OWNER.address,
        "volume": 1,
        "requester": REQUESTER.address,
    }
    on_chain = await asyncio.to_thread(chain.hub.functions.viewDeal(deal["dealid"]).call)
    assert on_chain[6] == REQUESTER.address and on_chain[0][0] == app
    assert seen["dealsByApporder"] == {"count": 1, "dealids": [deal["dealid"]]}
    assert seen["unpublishUnknown"] == {"error": f"API error: apporder with orderHash {unknown} is not published"}
    assert seen["publishTee"] == {"error": f"API error: No tee enabled apporder published for app {app}"}


async def test_tee_requests_need_a_tee_app_order_and_deals_are_served_by_id(chain: Any, market: MarketStandIn) -> None:
    dep = chain.deployment
    domain = Domain(chain_id=dep.chain_id, verifying_contract=dep.hub)
    app = register_app(chain.rpc_url, dep, APP_OWNER, "segment", "docker.io/seg:1", b"\1" * 32)
    pool = register_workerpool(chain.rpc_url, dep, POOL_OWNER, "devnet pool")
    deposit(chain.rpc_url, dep, REQUESTER, 1000)
    deposit(chain.rpc_url, dep, POOL_OWNER, 1000)
    tee_request = build_request_order(
        app, REQUESTER.address, 0, 5, 10, {"iexec_args": "y"}, "job-tee", tag=TDX_TAG
    ).sign(REQUESTER, domain)
    tee_app = AppOrder(
        app=app,
        appprice=5,
        volume=5,
        tag=TDX_TAG,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=9,
    ).sign(APP_OWNER, domain)
    pool_o = _pool_order(pool, POOL_OWNER, domain, 10, 1)
    async with MarketClient(market.base_url, dep.chain_id, hub=dep.hub, backoff=0) as client:
        await client.publish_app_order(_app_order(app, APP_OWNER, domain, 5, 1), APP_OWNER)
        with pytest.raises(MarketReplyError, match=f"No tee enabled apporder published for app {app}"):
            await client.publish_request_order(tee_request, REQUESTER)
        await client.publish_app_order(tee_app, APP_OWNER)
        published = await client.publish_request_order(tee_request, REQUESTER)
        assert published.order_hash == "0x" + tee_request.hash(domain).hex()

        def match() -> None:
            tx = chain.hub.functions.matchOrders(
                tee_app.to_tuple(), NULL_DATASET_ORDER.to_tuple(), pool_o.to_tuple(), tee_request.to_tuple()
            )
            assert chain.w3.eth.wait_for_transaction_receipt(tx.transact({"from": REQUESTER.address})).status == 1

        await asyncio.to_thread(match)
    q = {"chainId": str(dep.chain_id)}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{market.base_url}/deals", params={**q, "requestorderHash": published.order_hash}) as r:
            listed = await r.json()
        assert listed["ok"] and listed["count"] == 1
        deal = listed["deals"][0]
        assert deal["tag"] == "0x" + "00" * 31 + "09" and deal["workerpool"]["pointer"] == pool
        async with http.get(f"{market.base_url}/deals/{deal['dealid']}", params=q) as r:
            assert (await r.json())["requestHash"] == published.order_hash
        async with http.get(f"{market.base_url}/deals", params={**q, "requester": SPARE_1.address}) as r:
            assert (await r.json())["count"] == 0
        async with http.get(f"{market.base_url}/deals/0x{'cd' * 32}", params=q) as r:
            assert r.status == 404


@pytest.mark.slow
async def test_the_stand_in_hashes_every_kind_of_order_as_the_js_sdk(chain: Any) -> None:
    """The stand-in's own EIP-712 order hashing (not our client's) gives the SDK's hashApporder & co for one
    order of each kind, with restrictions, tags, big numbers, unicode params and lower-case addresses."""
    dep = chain.deployment
    name, version, chain_id, hub = await asyncio.to_thread(chain.hub.functions.domain().call)
    domain = {"name": name, "version": version, "chainId": chain_id, "verifyingContract": hub}
    a, d, w, r = (f"0x{c * 40}" for c in "abcd")  # lower-case: parsed and checksummed by the stand-in
    orders = {
        "apporder": {
            "app": a,
            "appprice": 5,
            "volume": 1000,
            "tag": "0x" + "00" * 31 + "09",
            "datasetrestrict": d,
            "workerpoolrestrict": w,
            "requesterrestrict": r,
            "salt": "0x" + "11" * 32,
        },
        "datasetorder": {
            "dataset": d,
            "datasetprice": 0,
            "volume": 1,
            "tag": "0x" + "00" * 30 + "0101",
            "apprestrict": a,
            "workerpoolrestrict": ZERO_ADDRESS,
            "requesterrestrict": ZERO_ADDRESS,
            "salt": "0x" + "22" * 32,
        },
        "workerpoolorder": {
            "workerpool": w,
            "workerpoolprice": 10**18,
            "volume": 3,
            "tag": "0x" + "00" * 32,
            "category": 2,
            "trust": 1,
            "apprestrict": ZERO_ADDRESS,
            "datasetrestrict": d,
            "requesterrestrict": r,
            "salt": "0x" + "33" * 32,
        },
        "requestorder": {
            "app": a,
            "appmaxprice": 5,
            "dataset": ZERO_ADDRESS,
            "datasetmaxprice": 0,
            "workerpool": w,
            "workerpoolmaxprice": 10**18,
            "requester": r,
            "volume": 1,
            "tag": "0x" + "00" * 31 + "09",
            "category": 0,
            "trust": 0,
            "beneficiary": r,
            "callback": ZERO_ADDRESS,
            "params": json.dumps({"iexec_args": "photo ✓ «quoted»", "iexec_result_storage_provider": "ipfs"}),
            "salt": "0x" + "44" * 32,
        },
    }
    sdk = await run_sdk_script(
        JS / "hash_orders.mjs", stdin=json.dumps({"rpcUrl": chain.rpc_url, "hub": dep.hub, **orders})
    )
    ours = {
        key: "0x" + order_hash(type_name, parse_order(type_name, orders[key]), domain).hex()
        for key, type_name in (
            ("apporder", "AppOrder"),
            ("datasetorder", "DatasetOrder"),
            ("workerpoolorder", "WorkerpoolOrder"),
            ("requestorder", "RequestOrder"),
        )
    }
    assert sdk == ours
    assert len(set(ours.values())) == 4
