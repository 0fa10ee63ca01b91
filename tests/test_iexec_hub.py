"""The hub client against anvil running the real PoCo: hashes equal the hub's and the JS SDK's, the whole
requester flow, claims past the deadline, typed reverts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from eth_utils import keccak

from devnet.accounts import APP_OWNER, POOL_OWNER, REQUESTER, SPARE_1, WORKER
from devnet.chain import deposit, increase_time, register_app, register_workerpool
from iexec.errors import (
    ChainError,
    DeadlineNotReached,
    InsufficientStake,
    InvalidSignature,
    OrderConsumed,
    PriceMismatch,
    TagMismatch,
    WrongTaskStatus,
)
from iexec.hub import Hub, TaskStatus
from iexec.orders import (
    ZERO_ADDRESS,
    AppOrder,
    Domain,
    WorkerpoolOrder,
    build_request_order,
    tag_from_bits,
)
from iexec.pool import WorkerpoolClient
from tests.sdk_peer import JS, run_sdk_script

JS_HASHER = JS / "hash_orders.mjs"
APP_PRICE, POOL_PRICE = 5_000, 20_000


@dataclass(frozen=True)
class Setup:
    hub: Hub
    domain: Domain
    app: str
    pool: str
    rpc_url: str


async def make_setup(chain, rpc, stake: int = 10**9) -> Setup:
    """Deposits, an app and a workerpool; the requester's Hub runs on `rpc()` (closed by the fixture)."""
    dep = chain.deployment
    deposit(chain.rpc_url, dep, REQUESTER, stake)
    deposit(chain.rpc_url, dep, POOL_OWNER, 10**9)
    app = register_app(chain.rpc_url, dep, APP_OWNER, "segbot-test", "docker.io/segbot/app:1", b"\x01" * 32)
    pool = register_workerpool(chain.rpc_url, dep, POOL_OWNER, "test pool")
    hub = Hub(None, dep.hub, account=REQUESTER, w3=rpc())
    return Setup(hub, await hub.domain(), app, pool, chain.rpc_url)


def app_order(s: Setup, volume: int = 1000, tag: object = 0, **kw) -> AppOrder:
    return AppOrder(
        app=s.app,
        appprice=APP_PRICE,
        volume=volume,
        tag=tag,
        datasetrestrict=ZERO_ADDRESS,
        workerpoolrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=kw.pop("salt", b"\x11" * 32),
        **kw,
    ).sign(APP_OWNER, s.domain)


def pool_order(
    s: Setup,
    volume: int = 1000,
    tag: object = 0,
    salt: bytes = b"\x22" * 32,
    price: int = POOL_PRICE,
    category: int = 0,
) -> WorkerpoolOrder:
    return WorkerpoolOrder(
        workerpool=s.pool,
        workerpoolprice=price,
        volume=volume,
        tag=tag,
        category=category,
        trust=0,
        apprestrict=ZERO_ADDRESS,
        datasetrestrict=ZERO_ADDRESS,
        requesterrestrict=ZERO_ADDRESS,
        salt=salt,
    ).sign(POOL_OWNER, s.domain)


def request(
    s: Setup,
    job: str = "job-1",
    tag: object = 0,
    appmax: int = APP_PRICE,
    poolmax: int = POOL_PRICE,
    requester=REQUESTER,
):
    order = build_request_order(
        app=s.app,
        requester=requester.address,
        category=0,
        appmaxprice=appmax,
        workerpoolmaxprice=poolmax,
        job_id=job,
        tag=tag,
        params={"iexec_args": "--score 0.7", "iexec_input_files": ["https://inputs.example/x.png"]},
    )
    return order.sign(requester, s.domain)


@pytest.mark.slow  # node: the JS SDK as the peer (~1.3 s)
async def test_hashes_equal_hub_event_and_js_sdk(chain, rpc) -> None:
    s = await make_setup(chain, rpc)
    tdx = tag_from_bits(tdx=True)
    ao, wo = app_order(s, tag=tdx), pool_order(s, tag=tag_from_bits(tdx=True, gpu=True))
    ro = request(s, tag=tag_from_bits(gpu=True))
    deal_id = await s.hub.match_orders(ao, None, wo, ro)
    receipt = await s.hub.w3.eth.get_transaction_receipt(
        (await s.hub.w3.eth.get_logs({"address": s.hub.address, "fromBlock": "latest"}))[0]["transactionHash"]
    )
    matched = next(e for e in s.hub.decode_receipt(receipt) if e.name == "OrdersMatched").args
    assert matched["dealid"] == deal_id
    assert (matched["appHash"], matched["workerpoolHash"], matched["requestHash"]) == (
        ao.hash(s.domain),
        wo.hash(s.domain),
        ro.hash(s.domain),
    )
    payload = {
        "rpcUrl": s.rpc_url,
        "hub": s.hub.address,
        "apporder": ao.to_market_json(),
        "workerpoolorder": wo.to_market_json(),
        "requestorder": ro.to_market_json(),
    }
    sdk = await run_sdk_script(JS_HASHER, stdin=json.dumps(payload), timeout=90)
    assert sdk == {
        "apporder": "0x" + ao.hash(s.domain).hex(),
        "workerpoolorder": "0x" + wo.hash(s.domain).hex(),
        "requestorder": "0x" + ro.hash(s.domain).hex(),
    }


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_requester_flow_ids_and_stake(chain, rpc) -> None:
    s = await make_setup(chain, rpc, stake=0)
    hub = s.hub
    assert await hub.view_account(REQUESTER.address) == (0, 0)
    await hub.deposit(1_000_000)
    assert await hub.view_account(REQUESTER.address) == (1_000_000, 0)
    ro = request(s)
    # a first workerpool order (volume 1) is taken by someone else before our match
    deposit(chain.rpc_url, chain.deployment, SPARE_1, 10**6)
    wo1, wo2 = pool_order(s, volume=1, salt=b"\x31" * 32), pool_order(s, volume=5, salt=b"\x32" * 32)
    stranger = Hub(None, chain.deployment.hub, account=SPARE_1, w3=rpc())
    await stranger.match_orders(app_order(s), None, wo1, request(s, job="other", requester=SPARE_1))
    with pytest.raises(OrderConsumed) as info:
        await hub.match_orders(app_order(s), None, wo1, ro)
    assert info.value.which == "workerpool"
    assert await hub.view_account(REQUESTER.address) == (1_000_000, 0)
    # the same request order matches the next workerpool order
    deal_id = await hub.match_orders(app_order(s), None, wo2, ro)
    assert deal_id == keccak(ro.hash(s.domain) + (0).to_bytes(32, "big")) == Hub.deal_id(ro.hash(s.domain), 0)
    price = APP_PRICE + POOL_PRICE
    assert await hub.view_account(REQUESTER.address) == (1_000_000 - price, price)
    assert await hub.view_consumed(ro.hash(s.domain)) == 1
    deal = await hub.view_deal(deal_id)
    assert (deal.app.pointer, deal.workerpool.pointer, deal.requester) == (s.app, s.pool, REQUESTER.address)
    assert deal.task_price() == price and deal.bot_first == 0 and deal.bot_size == 1 and deal.trust == 1
    assert deal.params == ro.params
    task_id = Hub.task_id(deal_id, 0)
    assert task_id == keccak(deal_id + (0).to_bytes(32, "big"))
    assert (await hub.view_task(task_id)).status == TaskStatus.UNSET
    # the pool completes it: the price is paid, nothing stays locked
    pool = WorkerpoolClient(hub.w3, hub.address, scheduler=POOL_OWNER, worker=WORKER)
    results = b'{"storage":"ipfs","location":"/ipfs/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}'
    assert await pool.complete(deal_id, 0, results) == task_id
    task = await hub.view_task(task_id)
    assert task.status == TaskStatus.COMPLETED and task.status.is_terminal() and task.results == results
    assert await hub.view_account(REQUESTER.address) == (1_000_000 - price, 0)
    await hub.withdraw(1_000)
    assert (await hub.view_account(REQUESTER.address)).stake == 1_000_000 - price - 1_000


async def test_claim_after_final_deadline_refunds(chain, rpc) -> None:
    s = await make_setup(chain, rpc)
    hub = s.hub
    before = await hub.view_account(REQUESTER.address)
    deal_id = await hub.match_orders(app_order(s), None, pool_order(s), request(s))
    pool = WorkerpoolClient(hub.w3, hub.address, scheduler=POOL_OWNER, worker=WORKER)
    task_id = await pool.initialize(deal_id, 0)
    task = await hub.view_task(task_id)
    assert task.status == TaskStatus.ACTIVE and not task.status.is_terminal()
    assert task.final_deadline == (await hub.view_deal(deal_id)).start_time + 10 * 300
    with pytest.raises(DeadlineNotReached):
        await hub.claim(task_id)
    increase_time(chain.rpc_url, task.final_deadline - await hub.block_timestamp() + 1)
    await hub.claim(task_id)
    assert (await hub.view_task(task_id)).status == TaskStatus.FAILED
    assert await hub.view_account(REQUESTER.address) == before
    with pytest.raises(WrongTaskStatus):
        await hub.claim(task_id)


async def test_never_initialized_task_is_claimed(chain, rpc) -> None:
    s = await make_setup(chain, rpc)
    before = await s.hub.view_account(REQUESTER.address)
    deal_id = await s.hub.match_orders(app_order(s), None, pool_order(s), request(s))
    with pytest.raises(WrongTaskStatus, match="initialize_and_claim_array"):
        await s.hub.claim(Hub.task_id(deal_id, 0))
    increase_time(chain.rpc_url, 10 * 300 + 1)
    await s.hub.initialize_and_claim_array([deal_id], [0])
    assert (await s.hub.view_task(Hub.task_id(deal_id, 0))).status == TaskStatus.FAILED
    assert await s.hub.view_account(REQUESTER.address) == before


async def test_double_match_is_order_consumed(chain, rpc) -> None:
    s = await make_setup(chain, rpc)
    ro = request(s)
    await s.hub.match_orders(app_order(s), None, pool_order(s), ro)
    with pytest.raises(OrderConsumed, match="already matched") as info:
        await s.hub.match_orders(app_order(s), None, pool_order(s), ro)
    assert info.value.which == "request" and info.value.reason == "iExecV5-matchOrders-0x60"


async def test_typed_reverts(chain, rpc) -> None:
    s = await make_setup(chain, rpc)
    hub = s.hub
    with pytest.raises(PriceMismatch, match="workerpoolmaxprice"):
        await hub.match_orders(app_order(s), None, pool_order(s), request(s, poolmax=POOL_PRICE - 1))
    with pytest.raises(TagMismatch):
        await hub.match_orders(app_order(s), None, pool_order(s), request(s, tag=tag_from_bits(gpu=True)))
    with pytest.raises(TagMismatch, match="TEE"):
        await hub.match_orders(
            app_order(s), None, pool_order(s, tag=tag_from_bits(tee=True)), request(s, tag=tag_from_bits(tee=True))
        )
    forged = pool_order(s).sign_with(SPARE_1, s.domain)
    with pytest.raises(InvalidSignature, match="workerpool"):
        await hub.match_orders(app_order(s), None, forged, request(s))
    poor = request(s, job="poor", requester=SPARE_1)
    with pytest.raises(InsufficientStake, match="deposit first"):
        await Hub(None, hub.address, account=SPARE_1, w3=rpc()).match_orders(app_order(s), None, pool_order(s), poor)
    with pytest.raises(InsufficientStake):
        await hub.withdraw(10**18)
    with pytest.raises(ValueError):
        await hub.deposit(0)
    with pytest.raises(ChainError, match="no account"):
        await Hub(None, hub.address, w3=rpc()).withdraw(1)
    # nothing was sent for any of these: the requester's nonce did not move past the setup's
    assert await hub.view_account(REQUESTER.address) == (10**9, 0)
