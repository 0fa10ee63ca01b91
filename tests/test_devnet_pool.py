"""The devnet workerpool and result gateway: tasks run end to end on anvil, and each fault mode leaves the
chain and the gateway in the state a requester of real iExec would see."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from devnet import chain as devchain
from devnet.accounts import POOL_OWNER, WORKER
from devnet.faults import Fault, FaultBook, FaultError
from devnet.gateway import GatewayError, ResultGateway, content_id
from devnet.up import REPO_DIR
from devnet.workerpool import Workerpool
from iexec.results import decode_results, fetch_result
from tests.fixtures_devnet import TEST_APP, make_pool_env, png_bytes

UNSET, ACTIVE, REVEALING, COMPLETED, FAILED = range(5)
XS_FINAL_DEADLINE_S = 10 * 300


async def _fetch(env, tid: str, dest: Path):
    return await fetch_result((await env.task(tid))[12], [env.gateway.url], dest)


async def _get_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status


async def test_task_completes_and_result_downloads(pool_env, tmp_path):
    _deal, (tid,) = await pool_env.request(args="--max-dim 256")
    outcome = await pool_env.pool.wait_task(tid, timeout=30)
    assert outcome.state == "completed"
    task = await pool_env.task(tid)
    assert task[0] == COMPLETED
    location = decode_results(task[12])
    assert location.location == f"/ipfs/{outcome.cid}"
    result = await _fetch(pool_env, tid, tmp_path / "out")
    assert result.ok, result.error_message
    assert result.deterministic_output is not None and result.deterministic_output.name == "result.png"
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"result.png", "detections.json", "computed.json", "stdout.txt", "stderr.txt"} <= names
    assert "1 detection" in result.stdout


async def test_app_error_completes_with_error_archive(pool_env, tmp_path):
    await pool_env.request()  # a first deal runs normally
    pool_env.pool.set_fault("app_error")
    _deal, (tid,) = await pool_env.request()
    outcome = await pool_env.pool.wait_task(tid, timeout=30)
    assert outcome.state == "error_archive"
    assert (await pool_env.task(tid))[0] == COMPLETED
    result = await _fetch(pool_env, tid, tmp_path / "out")
    assert not result.ok
    assert "exited with code 1" in (result.error_message or "")
    assert "failing on purpose" in result.stderr


async def test_no_show_stays_unset_then_claimable(pool_env):
    deal, (tid,) = await pool_env.request(fault="no_show")
    _other_deal, (other,) = await pool_env.request()  # the fault holds for that deal only
    assert (await pool_env.pool.wait_task(other, timeout=30)).state == "completed"
    outcome = await pool_env.pool.wait_task(tid, timeout=10)
    assert outcome.state == "no_show" and outcome.deal_id == deal
    assert (await pool_env.task(tid))[0] == UNSET
    await pool_env.increase_time(XS_FINAL_DEADLINE_S + 10)
    await pool_env.send("initializeAndClaimArray", [bytes.fromhex(deal[2:])], [0])
    assert (await pool_env.task(tid))[0] == FAILED
    assert (await pool_env.stake())[1] == 0  # nothing stays locked: the requester got the price back


async def _set_fault_then_request(env, mode: str, **kw):
    """Set a global fault, run one task with it, and clear the fault again."""
    env.pool.set_fault(mode)
    try:
        deal, (tid,) = await env.request(**kw)
        outcome = await env.pool.wait_task(tid, timeout=30)
    finally:
        env.pool.faults.clear()
    return deal, tid, outcome


async def test_no_show_global_fault(pool_env):
    _deal, tid, outcome = await _set_fault_then_request(pool_env, "no_show")
    assert outcome.state == "no_show"
    assert (await pool_env.task(tid))[0] == UNSET


async def test_crash_before_contribute_is_active_until_claimed(pool_env):
    free_before, _ = await pool_env.stake()
    _deal, tid, outcome = await _set_fault_then_request(pool_env, "crash_before_contribute")
    assert outcome.state == "crashed"
    task = await pool_env.task(tid)
    assert task[0] == ACTIVE
    with pytest.raises(devchain.TransactionFailed):  # too early: the final deadline has not passed
        await pool_env.send("claim", bytes.fromhex(tid[2:]))
    await pool_env.increase_time(XS_FINAL_DEADLINE_S + 10)
    await pool_env.send("claim", bytes.fromhex(tid[2:]))
    assert (await pool_env.task(tid))[0] == FAILED
    assert (await pool_env.stake()) == (free_before, 0)


async def test_overrun_runs_until_chain_time_passes_the_deadline(pool_env):
    pool_env.pool.set_fault("overrun")
    _deal, (tid,) = await pool_env.request()
    for _ in range(200):
        if (await pool_env.task(tid))[0] == ACTIVE:
            break
        await asyncio.sleep(0.02)
    assert (await pool_env.task(tid))[0] == ACTIVE
    # not synchronisation: a stretch of wall time (longer than the 0.2 s at which the overrun reads chain time)
    # in which the task must NOT end by itself; only chain time passing its deadline may end it (below)
    await asyncio.sleep(0.3)
    assert tid not in pool_env.pool.outcomes and tid in pool_env.pool.running  # still "running"
    await pool_env.increase_time(XS_FINAL_DEADLINE_S + 10)
    outcome = await pool_env.pool.wait_task(tid, timeout=10)
    assert outcome.state == "overrun"
    await pool_env.send("claim", bytes.fromhex(tid[2:]))
    assert (await pool_env.task(tid))[0] == FAILED


@pytest.mark.parametrize("mode,status", [("gateway_lose", 404), ("gateway_500", 500)])
async def test_gateway_faults_after_completion(pool_env, mode, status):
    _deal, tid, outcome = await _set_fault_then_request(pool_env, mode)
    assert outcome.state == "completed"
    assert (await pool_env.task(tid))[0] == COMPLETED
    url = f"{pool_env.gateway.url}{decode_results((await pool_env.task(tid))[12]).location}"
    assert await _get_status(url) == status
    pool_env.gateway.set_fault(None, outcome.cid)
    assert await _get_status(url) == 200


async def test_faults_through_the_control_endpoint(pool_env):
    control = pool_env.pool.control_url
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{control}/control/faults", json={"mode": "bogus"}) as resp:
            assert resp.status == 400
            assert "unknown fault mode" in (await resp.json())["error"]
        async with session.post(f"{control}/control/faults", json={"mode": "market_500", "count": 1}) as resp:
            assert resp.status == 200
        async with session.get(f"{pool_env.market.base_url}/version") as resp:
            assert resp.status == 500
        async with session.get(f"{pool_env.market.base_url}/version") as resp:
            assert resp.status == 200
        async with session.post(f"{control}/control/faults", json={"mode": "app_error"}) as resp:
            assert (await resp.json())["faults"] == [{"mode": "app_error", "deal_id": None}]
    _deal, (tid,) = await pool_env.request()
    assert (await pool_env.pool.wait_task(tid, timeout=30)).state == "error_archive"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{control}/control/faults", json={"clear": True}) as resp:
            assert (await resp.json())["faults"] == []
        async with session.get(f"{control}/control/tasks/{tid}") as resp:
            assert (await resp.json())["state"] == "error_archive"


@pytest.mark.slow  # over ~2 s
async def test_workers_bound_is_respected(chain):
    async with make_pool_env(chain, workers=2) as env:
        _deal, tids = await env.request(args="--sleep 0.4", volume=5)
        outcomes = await asyncio.gather(*(env.pool.wait_task(t, timeout=60) for t in tids))
        assert [o.state for o in outcomes] == ["completed"] * 5
        assert env.pool.max_running == 2
        assert [(await env.task(t))[0] for t in tids] == [COMPLETED] * 5


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_app_killed_at_time_limit_never_contributes(chain):
    async with make_pool_env(chain, time_scale=0.5 / 300) as env:  # XS: 300 s -> 0.5 s
        _deal, (tid,) = await env.request(args="--sleep 5")
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "timeout"
        assert (await env.task(tid))[0] == ACTIVE


async def test_input_not_found_never_contributes(pool_env):
    pool_env.pool.input_retry_s = 1.0  # it retries (the input server may be restarting), then gives up
    _deal, (tid,) = await pool_env.request(input_files=[f"{pool_env.inputs_url}/inputs/missing"])
    outcome = await pool_env.pool.wait_task(tid, timeout=30)
    assert outcome.state == "input_failed" and "404" in outcome.detail
    assert (await pool_env.task(tid))[0] == ACTIVE


async def test_non_loopback_input_is_refused(pool_env):
    _deal, (tid,) = await pool_env.request(input_files=["http://192.0.2.1/photo.png"])
    outcome = await pool_env.pool.wait_task(tid, timeout=30)
    assert outcome.state == "input_failed" and "loopback" in outcome.detail


async def test_orders_are_topped_up(chain):
    async with make_pool_env(chain, volume=2) as env:
        first = env.pool.orders[-1]
        _deal, tids = await env.request(volume=2)
        await asyncio.gather(*(env.pool.wait_task(t, timeout=30) for t in tids))
        for _ in range(100):
            if env.pool.orders[-1] != first:
                break
            await asyncio.sleep(0.05)
        assert env.pool.orders[-1] != first
        assert await env.pool.remaining() == 2
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{env.market.base_url}/workerpoolorders", params={"chainId": "31337", "category": "0"}
            ) as resp,
        ):
            listed = (await resp.json())["orders"]
        assert [o["orderHash"] for o in listed] == ["0x" + env.pool.orders[-1].hash(env.pool._domain).hex()]


def _pool_like(env, old):
    """A new workerpool process for the same owner, worker and chain as `old` (a restart)."""
    return Workerpool(
        env.rpc_url,
        env.chain.deployment,
        POOL_OWNER,
        WORKER,
        env.market.base_url,
        env.gateway,
        TEST_APP,
        workers=old.workers,
        price=old.price,
        volume=old.volume,
        market=env.market,
        app_cwd=REPO_DIR,
        poll_interval=0.02,
    )


async def _until(check, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_restarted_pool_finishes_tasks_in_flight_and_deals_made_while_down(chain, caplog):
    """A task whose app was running when the pool stopped, and a deal made while no pool ran, both complete
    once a pool starts again on the same chain; a task completed before the stop is not run again."""
    caplog.set_level(logging.INFO, logger="devnet.workerpool")
    async with make_pool_env(chain) as env:
        _done_deal, (done,) = await env.request()
        assert (await env.pool.wait_task(done, timeout=30)).state == "completed"
        _deal, (in_flight,) = await env.request(args="--sleep 1")

        async def running() -> bool:
            return in_flight in env.pool.running and (await env.task(in_flight))[0] == ACTIVE

        await _until(running, "the task initialized and its app running")
        await env.pool.stop()  # kills the app: initialized on chain, never contributed
        assert (await env.task(in_flight))[0] == ACTIVE and in_flight not in env.pool.outcomes
        _deal, (made_while_down,) = await env.request()  # the stopped pool's order is still valid on chain
        assert (await env.task(made_while_down))[0] == UNSET

        pool = _pool_like(env, env.pool)
        await pool.start()
        try:
            for tid in (in_flight, made_while_down):
                assert (await pool.wait_task(tid, timeout=30)).state == "completed"
                assert (await env.task(tid))[0] == COMPLETED
            assert done not in pool.outcomes
        finally:
            await pool.stop()
    assert "workerpool_resume deals=2 tasks=2 scanned=3" in caplog.text
    assert f"workerpool_resume_task task={in_flight} " in caplog.text
    assert "initialized=true" in caplog.text and "initialized=false" in caplog.text


async def test_restarted_pool_leaves_tasks_past_their_contribution_deadline(pool_env, caplog):
    caplog.set_level(logging.INFO, logger="devnet.workerpool")
    deal, (tid,) = await pool_env.request(fault="no_show")
    assert (await pool_env.pool.wait_task(tid, timeout=10)).state == "no_show"
    await pool_env.pool.stop()
    await pool_env.increase_time(7 * 300 + 10)  # XS timeref 300 s: the contribution deadline has passed
    pool = _pool_like(pool_env, pool_env.pool)
    await pool.start()
    try:
        assert "workerpool_resume deals=0 tasks=0 scanned=1" in caplog.text
        assert tid not in pool.outcomes and not pool.running
    finally:
        await pool.stop()
    assert (await pool_env.task(tid))[0] == UNSET  # left for the requester to claim at the final deadline
    await pool_env.increase_time(3 * 300)
    await pool_env.send("initializeAndClaimArray", [bytes.fromhex(deal[2:])], [0])
    assert (await pool_env.task(tid))[0] == FAILED


# ------------------------------------------------------------------------------------------ units


async def test_gateway_serves_by_content_id_and_refuses_bad_ids():
    gateway = ResultGateway()
    await gateway.start()
    try:
        cid = gateway.put(b"PK-archive")
        assert cid == content_id(b"PK-archive") and len(cid) == 64
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway.url}/ipfs/{cid}") as resp:
                assert resp.status == 200 and resp.content_type == "application/zip"
                assert await resp.read() == b"PK-archive"
            async with session.get(f"{gateway.url}/ipfs/notanid") as resp:
                assert resp.status == 400
            async with session.post(f"{gateway.url}/control/faults", json={"mode": "500"}) as resp:
                assert resp.status == 200
            async with session.get(f"{gateway.url}/ipfs/{cid}") as resp:
                assert resp.status == 500
        with pytest.raises(GatewayError, match="unknown gateway fault"):
            gateway.set_fault("melt")
    finally:
        await gateway.stop()


async def test_gateway_with_a_store_serves_what_was_added_before_a_restart(tmp_path):
    """An upload (a task's input) is still served by the next gateway over the same folder, as an IPFS node
    keeps its pins; a gateway without a folder forgets it."""
    first = ResultGateway(store_dir=tmp_path / "ipfs")
    await first.start()
    try:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", b"encrypted photo", filename="photo.bin")
            async with session.post(f"{first.url}/api/v0/add", data=form) as resp:
                assert resp.status == 200
                cid = json.loads((await resp.text()).splitlines()[0])["Hash"]
    finally:
        await first.stop()
    second, memory_only = ResultGateway(store_dir=tmp_path / "ipfs"), ResultGateway()
    await second.start()
    await memory_only.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{second.url}/ipfs/{cid}") as resp:
                assert resp.status == 200 and await resp.read() == b"encrypted photo"
            async with session.get(f"{memory_only.url}/ipfs/{cid}") as resp:
                assert resp.status == 404
    finally:
        await second.stop()
        await memory_only.stop()


def test_fault_book_rules():
    book = FaultBook()
    deal = "0x" + "ab" * 32
    book.set("overrun")
    book.set(Fault.APP_ERROR, deal)
    assert book.for_deal(deal) is Fault.APP_ERROR
    assert book.for_deal("0x" + "cd" * 32) is Fault.OVERRUN
    book.set(None, deal)
    assert book.for_deal(deal) is Fault.OVERRUN
    with pytest.raises(FaultError, match="unknown fault mode"):
        book.set("explode")
    with pytest.raises(FaultError, match="32 bytes"):
        book.set("no_show", "0x1234")
    with pytest.raises(FaultError, match="global"):
        book.set("market_500", deal)


def test_testapp_follows_the_app_contract(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    (in_dir / "abc").write_bytes(png_bytes())
    env = {
        "IEXEC_IN": str(in_dir),
        "IEXEC_OUT": str(out_dir),
        "IEXEC_INPUT_FILES_NUMBER": "1",
        "IEXEC_INPUT_FILE_NAME_1": "abc",
        "PATH": "/usr/bin:/bin",
    }
    ok = subprocess.run(
        [sys.executable, "-m", "devnet.testapp", "--max-dim", "256"],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        timeout=10,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out_dir / "computed.json").read_text()) == {"deterministic-output-path": "/iexec_out/result.png"}
    (in_dir / "abc").write_bytes(b"not an image")
    bad = subprocess.run(
        [sys.executable, "-m", "devnet.testapp"],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        timeout=10,
    )
    assert bad.returncode == 1
    assert "not an image" in json.loads((out_dir / "computed.json").read_text())["error-message"]


# ------------------------------------------------------------------------------------------ real worker


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_real_worker_task_completes_with_segmented_image(chain, worker_weights_r50, tmp_path):
    """One task through the pool with `python -m worker` (random ResNet50 weights, small image)."""
    app_cmd = [sys.executable, "-m", "worker"]
    env = {"MRCNN_WEIGHTS": str(worker_weights_r50)}
    async with make_pool_env(chain, app_cmd=app_cmd, app_env=env, workers=1) as pool_env:
        _deal, (tid,) = await pool_env.request(args="--max-dim 256 --min-confidence 0.0", image=png_bytes((160, 120)))
        outcome = await pool_env.pool.wait_task(tid, timeout=540)
        assert outcome.state == "completed", outcome.detail
        assert (await pool_env.task(tid))[0] == COMPLETED
        result = await _fetch(pool_env, tid, tmp_path / "out")
    assert result.ok, (result.error_message, result.stderr[-2000:])
    assert result.deterministic_output is not None
    assert "deterministic-output-path" in result.computed
    from PIL import Image

    with Image.open(result.deterministic_output) as image:
        assert image.size == (160, 120)
