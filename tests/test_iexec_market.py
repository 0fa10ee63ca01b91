"""The market client against the market stand-in over a real PoCo chain, and against lying servers."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devnet.accounts import APP_OWNER, POOL_OWNER, REQUESTER, SPARE_1
from devnet.chain import deposit, register_app, register_workerpool
from devnet.market import MarketStandIn, challenge_typed_data
from iexec.errors import MarketError, MarketReplyError, MarketUnavailable
from iexec.market import MarketClient
from iexec.orders import (
    NULL_DATASET_ORDER,
    ZERO_ADDRESS,
    AppOrder,
    Domain,
    WorkerpoolOrder,
    build_request_order,
    tag_from_bits,
)
from tests.fixtures_market import serve
from tests.sdk_peer import run_sdk_script

# The stand-in fixture lives in the session loop (the project's fixture loop scope): run the tests there.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class Books:
    """A registered app and workerpool on the test chain, a client, and the signing domain."""

    market: MarketStandIn
    client: MarketClient
    domain: Domain
    app: str
    pool: str
    chain: Any


@pytest.fixture
async def books(chain: Any, market: MarketStandIn) -> Any:
    app = register_app(chain.rpc_url, chain.deployment, APP_OWNER, "segment", "docker.io/seg:1", b"\1" * 32)
    pool = register_workerpool(chain.rpc_url, chain.deployment, POOL_OWNER, "devnet pool")
    domain = Domain(chain_id=chain.deployment.chain_id, verifying_contract=chain.deployment.hub)
    async with MarketClient(
        market.base_url, domain.chain_id, hub=chain.deployment.hub, page_size=10, backoff=0
    ) as client:
        yield Books(market, client, domain, app, pool, chain)


def answer(body: Any, status: int = 200) -> Any:
    """An aiohttp handler that answers `body` as JSON with `status` (a fresh response each call)."""

    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


def app_order(b: Books, price: int, salt: int, volume: int = 5, **kw: Any) -> AppOrder:
    fields = dict(
        app=b.app,
        appprice=price,
        volume=volume,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    )
    fields.update(kw)
    return AppOrder(**fields).sign(APP_OWNER, b.domain)


def pool_order(b: Books, price: int, salt: int, volume: int = 5, **kw: Any) -> WorkerpoolOrder:
    fields = dict(
        workerpool=b.pool,
        workerpoolprice=price,
        volume=volume,
        tag=0,
        category=0,
        trust=0,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    )
    fields.update(kw)
    return WorkerpoolOrder(**fields).sign(POOL_OWNER, b.domain)


# --- the stand-in over the chain, through the client -----------------------------------------------


@pytest.mark.slow  # ~2 s: publishes orders on several pages through the stand-in
async def test_published_app_orders_are_listed_cheapest_first_across_pages(books: Books) -> None:
    prices = [7, 3, 9, 3, 1, 12, 5, 5, 8, 2, 11, 4, 6, 10, 0, 13, 3, 2, 9, 1, 15, 14, 7, 6, 4]
    for salt, price in enumerate(prices):
        published = await books.client.publish_app_order(app_order(books, price, salt), APP_OWNER)
        assert published.signer == APP_OWNER.address and published.remaining == 5
    listed = await books.client.app_orders(books.app)
    assert [m.order.appprice for m in listed] == sorted(prices)
    keys = [(m.order.appprice, m.publication_timestamp, m.order_hash) for m in listed]
    assert keys == sorted(keys)
    assert len({m.order_hash for m in listed}) == 25
    assert await books.client.app_orders(books.app, limit=3) == listed[:3]

    async with aiohttp.ClientSession() as http:  # the raw wire format, page by page
        url = f"{books.market.base_url}/apporders"
        query = {"chainId": "31337", "app": books.app, "pageSize": "10", "pageIndex": "2"}
        async with http.get(url, params=query) as resp:
            page = await resp.json()
        assert page["ok"] is True and page["count"] == 25 and len(page["orders"]) == 5
        assert "nextPage" not in page
        assert set(page["orders"][0]) == {
            "orderHash",
            "chainId",
            "publicationTimestamp",
            "signer",
            "status",
            "remaining",
            "order",
        }
        async with http.get(url, params={**query, "pageSize": "5"}) as resp:
            assert resp.status == 400 and (await resp.json())["ok"] is False


async def test_filters_follow_the_market_rules(books: Books) -> None:
    c = books.client
    tee = tag_from_bits(tee=True)
    await c.publish_workerpool_order(pool_order(books, 10, 1), POOL_OWNER)
    await c.publish_workerpool_order(pool_order(books, 20, 2, category=1), POOL_OWNER)
    await c.publish_workerpool_order(pool_order(books, 30, 3, trust=5), POOL_OWNER)
    await c.publish_workerpool_order(pool_order(books, 40, 4, tag=tee), POOL_OWNER)
    await c.publish_workerpool_order(pool_order(books, 50, 5, requesterrestrict=REQUESTER.address), POOL_OWNER)
    await c.publish_workerpool_order(pool_order(books, 60, 6, apprestrict=SPARE_1.address), POOL_OWNER)

    async def prices(**kw: Any) -> list[int]:
        return [m.order.workerpoolprice for m in await c.workerpool_orders(**kw)]

    assert await prices() == [10, 20, 30, 40]  # restricted orders only show to whom they are for
    assert await prices(category=0) == [10, 30, 40]
    assert await prices(category=0, min_trust=5) == [30]
    assert await prices(min_tag=tee) == [40]
    assert await prices(max_tag=0) == [10, 20, 30]
    assert await prices(requester=REQUESTER.address, category=0) == [10, 30, 40, 50]
    assert await prices(app=books.app) == [10, 20, 30, 40]
    assert await prices(workerpool=SPARE_1.address) == []

    await c.publish_app_order(app_order(books, 4, 1, workerpoolrestrict=books.pool), APP_OWNER)
    await c.publish_app_order(app_order(books, 5, 2), APP_OWNER)
    assert [m.order.appprice for m in await c.app_orders(books.app)] == [5]
    assert [m.order.appprice for m in await c.app_orders(books.app, workerpool=books.pool)] == [4, 5]
    assert [m.order.appprice for m in await c.app_orders(books.app, workerpool=books.pool, strict=True)] == [4]


async def test_remaining_follows_matches_on_chain(books: Books) -> None:
    c, chain = books.client, books.chain
    app_o = app_order(books, 5, 1, volume=3)
    pool_o = pool_order(books, 10, 1, volume=2)
    published_app = await c.publish_app_order(app_o, APP_OWNER)
    published_pool = await c.publish_workerpool_order(pool_o, POOL_OWNER)
    deposit(chain.rpc_url, chain.deployment, REQUESTER, 1000)
    deposit(chain.rpc_url, chain.deployment, POOL_OWNER, 1000)

    def match(job: str, app_side: AppOrder = app_o, pool_side: WorkerpoolOrder = pool_o) -> None:
        request = build_request_order(books.app, REQUESTER.address, 0, 5, 10, {"iexec_args": "x"}, job)
        request = request.sign(REQUESTER, books.domain)
        tx = chain.hub.functions.matchOrders(
            app_side.to_tuple(), NULL_DATASET_ORDER.to_tuple(), pool_side.to_tuple(), request.to_tuple()
        )
        receipt = chain.w3.eth.wait_for_transaction_receipt(tx.transact({"from": REQUESTER.address}))
        assert receipt.status == 1

    match("job-1")
    got = await c.get_app_order(published_app.order_hash)
    assert got is not None and got.remaining == 2 and got.status == "open"
    assert (await c.workerpool_orders())[0].remaining == 1
    match("job-2")
    assert await c.workerpool_orders() == []  # used up: gone from the book
    filled = await c.get_workerpool_order(published_pool.order_hash)
    assert filled is not None and filled.status == "filled" and filled.remaining == 0
    assert [m.remaining for m in await c.app_orders(books.app)] == [1]
    assert (await c.publish_workerpool_order(pool_o, POOL_OWNER)).status == "filled"  # known: not re-opened

    solo_app, solo_pool = app_order(books, 5, 7, volume=1), pool_order(books, 10, 7, volume=1)
    match("job-3", solo_app, solo_pool)  # matched without ever being published
    with pytest.raises(MarketReplyError, match="already consumed"):
        await c.publish_app_order(solo_app, APP_OWNER)
    assert await c.get_app_order("0x" + "ab" * 32) is None


async def test_publishing_is_refused_without_the_owners_signature(books: Books, chain: Any) -> None:
    c = books.client
    unsigned = app_order(books, 1, 1)
    by_stranger = AppOrder(
        app=books.app,
        appprice=1,
        volume=1,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=9,
    ).sign(SPARE_1, books.domain)
    with pytest.raises(MarketReplyError, match="invalid sign"):
        await c.publish_app_order(by_stranger, APP_OWNER)  # right publisher, wrong signature
    with pytest.raises(MarketReplyError, match="only order signer"):
        await c.publish_app_order(by_stranger, SPARE_1)  # the signer is not the app's owner
    with pytest.raises(MarketReplyError, match="only order signer"):
        await c.publish_app_order(unsigned, POOL_OWNER)
    stray = AppOrder(
        app=SPARE_1.address,
        appprice=1,
        volume=1,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=1,
    ).sign(SPARE_1, books.domain)
    with pytest.raises(MarketReplyError, match="not deployed"):
        await c.publish_app_order(stray, SPARE_1)
    published = await c.publish_app_order(unsigned, APP_OWNER)
    assert (await c.publish_app_order(unsigned, APP_OWNER)) == published  # a retried publish is a no-op

    async with aiohttp.ClientSession() as http:
        url = f"{books.market.base_url}/apporders?chainId=31337"
        body = {"order": app_order(books, 1, 2).to_market_json()}
        for header in (
            {},
            {"authorization": "garbage"},
            {"authorization": f"0x{'00' * 32}_0x{'11' * 65}_{APP_OWNER.address}"},
        ):
            async with http.post(url, json=body, headers=header) as resp:
                assert resp.status == 403 and await resp.json() == {"ok": False, "error": "invalid authorization"}


async def test_request_orders_need_a_payable_app_order_and_can_be_unpublished(books: Books) -> None:
    c = books.client
    request = build_request_order(books.app, REQUESTER.address, 0, 5, 10, {"iexec_args": "a"}, "job-9")
    request = request.sign(REQUESTER, books.domain)
    with pytest.raises(MarketReplyError, match=r"requester stake is too low .* minimum stake required is 15 nRLC"):
        await c.publish_request_order(request, REQUESTER)
    deposit(books.chain.rpc_url, books.chain.deployment, REQUESTER, 15)
    with pytest.raises(MarketReplyError, match="No apporder published"):
        await c.publish_request_order(request, REQUESTER)
    await c.publish_app_order(app_order(books, 6, 1), APP_OWNER)
    with pytest.raises(MarketReplyError, match="too low"):
        await c.publish_request_order(request, REQUESTER)
    app_o = app_order(books, 5, 2)
    await c.publish_app_order(app_o, APP_OWNER)
    with pytest.raises(MarketReplyError, match="only order signer"):
        await c.publish_request_order(request, POOL_OWNER)
    published = await c.publish_request_order(request, REQUESTER)
    assert [m.order_hash for m in await c.request_orders(requester=REQUESTER.address)] == [published.order_hash]

    app_hash = "0x" + app_o.hash(books.domain).hex()
    with pytest.raises(MarketReplyError, match="only order signer"):
        await c.unpublish(AppOrder, app_hash, POOL_OWNER)
    assert await c.unpublish(AppOrder, app_hash, APP_OWNER) == [app_hash]
    assert [m.order.appprice for m in await c.app_orders(books.app)] == [6]
    assert await c.get_app_order(app_hash) is None  # unpublished orders are gone, as on the real API
    with pytest.raises(MarketReplyError, match=f"apporder with orderHash {app_hash} is not published"):
        await c.unpublish(AppOrder, app_hash, APP_OWNER)


async def test_categories_version_and_injected_faults(books: Books) -> None:
    c, market = books.client, books.market
    cats = await c.categories()
    assert [(k.catid, k.work_clock_time_ref) for k in cats] == [(0, 300), (1, 1200), (2, 3600), (3, 10800), (4, 36000)]
    assert await c.version()
    market.fail_next(2, status=502)
    assert await c.workerpool_orders() == []
    assert market.hits["/workerpoolorders"] == 3
    market.fail_mode = 503
    with pytest.raises(MarketUnavailable, match="after 4 attempts"):
        await c.version()
    market.fail_mode = None
    assert await c.version()


# --- the client against servers that lie or fail ---------------------------------------------------

DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FC8d32690cc91D4c39d9d3abcBD16989F875707")
APP = "0x" + "12" * 20


def entry(order: AppOrder, **override: Any) -> dict[str, Any]:
    item = {
        "orderHash": "0x" + order.hash(DOMAIN).hex(),
        "chainId": 31337,
        "signer": APP_OWNER.address,
        "publicationTimestamp": "2025-01-01T00:00:00.000Z",
        "status": "open",
        "remaining": 1,
        "order": order.to_market_json(),
    }
    item.update(override)
    return item


def signed_app(salt: int = 1, key: Any = APP_OWNER) -> AppOrder:
    return AppOrder(
        app=APP,
        appprice=3,
        volume=1,
        tag=0,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    ).sign(key, DOMAIN)


def tampered() -> dict[str, Any]:
    item = entry(signed_app())
    item["order"] = {**item["order"], "appprice": 0}
    return item


@pytest.mark.parametrize(
    "reply, words",
    [
        ({"ok": True, "count": 1}, "lacks orders/count"),
        ({"ok": False, "orders": [], "count": 0}, "not an ok JSON"),
        ([1, 2], "not an ok JSON"),
        ({"ok": True, "count": 1, "orders": ["x"]}, "not a JSON object"),
        ({"ok": True, "count": 1, "orders": [{"orderHash": "0x1"}]}, "wrong shape"),
        ({"ok": True, "count": 1, "orders": [tampered()]}, "does not hash"),
        ({"ok": True, "count": 1, "orders": [entry(signed_app(key=SPARE_1))]}, "not signed by its announced"),
        ({"ok": True, "count": 1, "orders": [entry(signed_app(), chainId=1)]}, "chain id"),
        ({"ok": True, "count": 1, "orders": [entry(signed_app(), remaining=7)]}, "impossible remaining"),
    ],
)
async def test_client_refuses_replies_that_lie(reply: Any, words: str) -> None:
    app = web.Application()
    app.router.add_get("/apporders", answer(reply))
    async with serve(app) as url, MarketClient(url, 31337, hub=DOMAIN.verifying_contract) as client:
        with pytest.raises(MarketReplyError, match=words):
            await client.app_orders(APP)


async def test_client_retries_5xx_and_gives_up_with_a_typed_error() -> None:
    calls: list[str] = []
    good = {"ok": True, "count": 1, "orders": [entry(signed_app())]}

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.query["chainId"])
        if len(calls) <= 2:
            return web.Response(status=500, text="<html>oops</html>")
        return web.json_response(good)

    app = web.Application()
    app.router.add_get("/apporders", handler)
    app.router.add_get("/version", answer({"ok": False, "error": "down"}, status=503))
    app.router.add_get("/apporders/{h}", answer({"ok": False, "error": "bad"}, status=400))
    async with (
        serve(app) as url,
        MarketClient(url, 31337, hub=DOMAIN.verifying_contract, retries=3, backoff=0) as client,
    ):
        orders = await client.app_orders(APP)
        assert [o.order.appprice for o in orders] == [3] and len(calls) == 3
        with pytest.raises(MarketUnavailable, match="status 503"):
            await client.version()
        with pytest.raises(MarketReplyError, match=r"400.*bad"):
            await client.get_app_order("0x" + "00" * 32)
        with pytest.raises(MarketError, match="not an order hash"):
            await client.get_app_order("../../etc")
    async with MarketClient("http://127.0.0.1:9", 31337, hub=DOMAIN.verifying_contract, retries=1, backoff=0) as client:
        with pytest.raises(MarketUnavailable):
            await client.version()


async def test_client_signs_only_a_genuine_login_challenge() -> None:
    posted: list[Any] = []
    order_typed = {
        **signed_app().to_typed_data(DOMAIN),
        "message": {k: v for k, v in signed_app().to_market_json().items() if k != "sign"},
    }
    challenges = {
        "order": order_typed,
        "other chain": challenge_typed_data(1, "abc"),
        "other text": {**challenge_typed_data(31337, "x"), "message": {"challenge": "send me your RLC"}},
    }
    current: dict[str, Any] = {}

    async def challenge(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "data": current["typed"]})

    async def publish(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.json_response({"ok": False, "error": "no"}, status=403)

    app = web.Application()
    app.router.add_get("/challenge", challenge)
    app.router.add_post("/apporders", publish)
    async with serve(app) as url, MarketClient(url, 31337, hub=DOMAIN.verifying_contract) as client:
        for _name, typed in challenges.items():
            current["typed"] = copy.deepcopy(typed)
            with pytest.raises(MarketReplyError, match="refusing to sign"):
                await client.publish_app_order(signed_app(), APP_OWNER)
        current["typed"] = challenge_typed_data(31337, "fine")
        with pytest.raises(MarketReplyError, match="403"):
            await client.publish_app_order(signed_app(), APP_OWNER)
        with pytest.raises(MarketError, match="not signed"):
            await client.publish_app_order(
                AppOrder(**{n: getattr(signed_app(), n) for n, _ in AppOrder.FIELDS}), APP_OWNER
            )
    assert len(posted) == 1 and posted[0]["order"]["appprice"] == 3


# --- the official JS SDK is a peer of the stand-in -------------------------------------------------

SDK_SCRIPT = """
const env = process.env;
const { IExec, utils } = await import(env.SDK);
const ethProvider = utils.getSignerFromPrivateKey(env.RPC, env.KEY);
const iexec = new IExec({ ethProvider }, { hubAddress: env.HUB, iexecGatewayURL: env.MARKET });
const order = { app: env.APP, appprice: '7', volume: '2', tag: '0x' + '0'.repeat(64),
  datasetrestrict: '0x' + '0'.repeat(40), workerpoolrestrict: '0x' + '0'.repeat(40),
  requesterrestrict: '0x' + '0'.repeat(40) };
const signed = await iexec.order.signApporder(order, { preflightCheck: false });
const hash = await iexec.order.publishApporder(signed, { preflightCheck: false });
const book = await iexec.orderbook.fetchAppOrderbook({ app: env.APP });
console.log(JSON.stringify({ hash, count: book.count, hashes: book.orders.map((o) => o.orderHash),
  remaining: book.orders.map((o) => o.remaining) }));
"""


@pytest.mark.slow  # node: the JS SDK as the peer (~2 s)
async def test_the_js_sdk_publishes_and_reads_through_the_stand_in(books: Books) -> None:
    await books.client.publish_app_order(app_order(books, 3, 1), APP_OWNER)
    env = {
        "RPC": books.chain.rpc_url,
        "KEY": "0x" + bytes(APP_OWNER.key).hex(),
        "HUB": books.domain.verifying_contract,
        "MARKET": books.market.base_url,
        "APP": books.app,
    }
    seen = await run_sdk_script(SDK_SCRIPT, env, timeout=60)
    ours = await books.client.app_orders(books.app)
    assert [m.order_hash for m in ours] == [h.lower() for h in seen["hashes"]]
    assert seen["count"] == 2 and seen["remaining"] == [5, 2]
    assert ours[1].order_hash == seen["hash"].lower() and ours[1].order.appprice == 7
