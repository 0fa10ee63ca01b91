"""The devnet runs TDX deals as iExec does: enclave-signed contributions, requester secrets from the SMS
stand-in, results encrypted like iExec's post-compute. The official SDK 9.0.1 is the peer: it pushes the
secrets, matches the deal, follows it, downloads the result and decrypts it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from web3.logs import DISCARD

from devnet import chain as devchain
from devnet.accounts import APP_OWNER, REQUESTER
from devnet.gateway import ResultGateway, cid_v1
from devnet.postcompute import PostComputeError, encrypt_result
from devnet.sms import SmsStandIn
from devnet.up import publish_app_order
from devnet.workerpool import TDX_TAG, task_id
from iexec.orders import NULL_DATASET_ORDER, Domain, RequestOrder
from iexec.results import decode_results
from tests.fixtures_devnet import APP_PRICE, POOL_PRICE, PoolEnv, make_pool_env, png_bytes
from tests.sdk_peer import JS, KUBO, SDK, run_sdk_script

SCRIPT = JS / "tdx_sdk_deal.mjs"
ZERO = "0x0000000000000000000000000000000000000000"
UNSET, ACTIVE, REVEALING, COMPLETED, FAILED = range(5)
XS_FINAL_DEADLINE_S = 10 * 300


@asynccontextmanager
async def tee_env(chain: Any, tmp_path: Path, *, with_sms: bool = True) -> AsyncIterator[tuple[PoolEnv, Any]]:
    """A pool env whose workerpool reads its TEE secrets from a running SMS stand-in (or has none)."""
    sms = SmsStandIn(state_path=tmp_path / "sms.json")
    await sms.start()
    try:
        async with make_pool_env(chain) as env:
            env.pool.sms = sms if with_sms else None
            yield env, sms
    finally:
        await sms.stop()


async def _tdx_deal(env: PoolEnv, params: dict[str, Any]) -> tuple[str, str]:
    """Match a TDX deal (TDX app order, request tagged TDX) as REQUESTER with Python; (deal id, task id)."""
    dep = env.chain.deployment
    domain = Domain(dep.chain_id, dep.hub)
    async with aiohttp.ClientSession() as session:
        app_order = await publish_app_order(session, env.market.base_url, dep, env.app, APP_PRICE, tag=TDX_TAG)
    request = RequestOrder(
        app=env.app,
        appmaxprice=APP_PRICE,
        dataset=ZERO,
        datasetmaxprice=0,
        workerpool=ZERO,
        workerpoolmaxprice=POOL_PRICE,
        requester=REQUESTER.address,
        volume=1,
        tag=TDX_TAG,
        category=0,
        trust=0,
        beneficiary=REQUESTER.address,
        callback=ZERO,
        params=json.dumps(params),
        salt=os.urandom(32),
    ).sign_with(REQUESTER, domain)
    pool_order = env.pool.orders[-1]

    def match() -> str:
        receipt = devchain.TxSender(devchain.web3_for(env.rpc_url), REQUESTER).call(
            dep.hub,
            env.chain.hub.abi,
            "matchOrders",
            app_order.to_tuple(),
            NULL_DATASET_ORDER.to_tuple(),
            pool_order.to_tuple(),
            request.to_tuple(),
        )
        events = env.chain.hub.events.OrdersMatched().process_receipt(receipt, errors=DISCARD)
        return "0x" + bytes(events[0]["args"]["dealid"]).hex()

    deal = await asyncio.to_thread(match)
    return deal, task_id(deal, 0)


def _aes_decrypt(blob: bytes, key: bytes) -> bytes:
    from cryptography.hazmat.primitives import padding

    dec = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    return unpad.update(dec.update(blob[16:]) + dec.finalize()) + unpad.finalize()


# ------------------------------------------------------------------------------------- the SDK as the peer


def _deal_env(env: PoolEnv, sms: SmsStandIn, png: Path, secret_name: str, out: Path) -> dict[str, str]:
    """What tdx_sdk_deal.mjs reads: the devnet's endpoints, the two keys, the app and pool, the job's files."""
    return {
        "KUBO": str(KUBO),
        "RPC": env.rpc_url,
        "HUB": env.chain.deployment.hub,
        "MARKET": env.market.base_url,
        "SMS": sms.base_url,
        "GATEWAY": str(env.gateway.url),
        "REQUESTER_KEY": "0x" + bytes(REQUESTER.key).hex(),
        "APP_OWNER_KEY": "0x" + bytes(APP_OWNER.key).hex(),
        "APP": env.app,
        "WORKERPOOL": str(env.pool.address),
        "PNG": str(png),
        "SECRET_NAME": secret_name,
        "OUT": str(out),
    }


@pytest.mark.slow
async def test_the_sdk_runs_a_tdx_deal_with_a_secret_and_an_encrypted_result(chain, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="devnet")
    picture = png_bytes((120, 80), (200, 30, 60))
    (tmp_path / "in.png").write_bytes(picture)
    async with tee_env(chain, tmp_path) as (env, sms):
        node_env = _deal_env(env, sms, tmp_path / "in.png", "segbot-job-1", tmp_path / "iexec_out.zip")
        seen = await run_sdk_script(SCRIPT, node_env, needs=(SDK, KUBO), timeout=180)
        assert seen["status"] == "TASK_COMPLETED", seen
        assert int(seen["dealTag"], 16) == 9  # the SDK's deal is TDX, the pool's 0x…09 order covered it
        outcome = await env.pool.wait_task(seen["task"], timeout=10)
        assert outcome.state == "completed" and outcome.tee and outcome.encrypted
        # the app saw the dataset key as IEXEC_REQUESTER_SECRET_1 and decrypted its input with it
        with zipfile.ZipFile(tmp_path / "iexec_out.zip") as zf:
            names = set(zf.namelist())
            seen_secrets = json.loads(zf.read("secrets.json"))
            computed = json.loads(zf.read("computed.json"))
            detections = json.loads(zf.read("detections.json"))
        assert {"result.png", "detections.json", "computed.json", "secrets.json"} <= names
        assert seen_secrets == {"IEXEC_REQUESTER_SECRET_1": seen["secretSha256"]}
        assert computed == {"deterministic-output-path": "/iexec_out/result.png"}
        assert (detections["width"], detections["height"]) == (120, 80)
        # what the gateway serves is the encrypted archive only; the input it holds is the encrypted one
        encrypted = (tmp_path / "iexec_out.zip.encrypted").read_bytes()
        with zipfile.ZipFile(io.BytesIO(encrypted)) as zf:
            assert sorted(zf.namelist()) == ["aes-key.rsa", "iexec_out.zip.aes"]
        assert env.gateway.get(outcome.cid) == encrypted
        assert all(picture not in blob for blob in env.gateway._blobs.values())
        task = await env.task(seen["task"])
        assert task[0] == COMPLETED and decode_results(task[12]).location == f"/ipfs/{outcome.cid}"
        # the enclave signed: the contribution's enclave is neither the worker nor zero (viewContribution)
        contribution = await asyncio.to_thread(
            env.chain.hub.functions.viewContribution(seen["task"], env.pool.worker.address).call
        )
        assert contribution[3] not in (ZERO, env.pool.worker.address)
        secret = sms.requester_secret(REQUESTER.address, "segbot-job-1")
        assert secret and hashlib.sha256(secret.encode()).hexdigest() == seen["secretSha256"]
        assert secret not in caplog.text  # never logged
        deal = await asyncio.to_thread(env.chain.hub.functions.viewDeal(seen["deal"]).call)
        assert secret not in deal[9] and json.loads(deal[9])["iexec_secrets"] == {"1": "segbot-job-1"}


@pytest.mark.slow
async def test_the_sdk_refuses_a_request_whose_result_key_is_not_in_the_sms(chain, tmp_path):
    """The stand-in answers the SDK's preflight HEAD as the real SMS: no key pushed -> no order signed."""
    (tmp_path / "in.png").write_bytes(png_bytes())
    async with tee_env(chain, tmp_path) as (env, sms):
        node_env = _deal_env(env, sms, tmp_path / "in.png", "segbot-job-2", tmp_path / "out.zip")
        seen = await run_sdk_script(SCRIPT, {**node_env, "SKIP_KEY": "1"}, needs=(SDK, KUBO), timeout=120)
        assert "encryption" in seen.get("signRefused", "").lower(), seen


# ------------------------------------------------------------------------------------- TEE faults


@pytest.mark.slow
async def test_a_tee_deal_whose_secret_is_missing_is_never_contributed(chain, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with tee_env(chain, tmp_path) as (env, _sms):
        url = env.serve_input(png_bytes())
        _deal, tid = await _tdx_deal(env, {"iexec_input_files": [url], "iexec_secrets": {"1": "never-pushed"}})
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "tee_failed" and outcome.tee and outcome.cid is None
        assert "never-pushed" in outcome.detail and "not in the SMS" in outcome.detail
        assert "state=tee_failed" in caplog.text
        assert (await env.task(tid))[0] == ACTIVE  # initialized, no contribution: claimable at its deadline
        await env.increase_time(XS_FINAL_DEADLINE_S + 10)
        await env.send("claim", bytes.fromhex(tid[2:]))
        assert (await env.task(tid))[0] == FAILED
        assert (await env.stake())[1] == 0  # the requester got everything back


@pytest.mark.slow
async def test_a_tee_deal_on_a_pool_without_sms_or_without_result_key_fails_the_same_way(chain, tmp_path):
    async with tee_env(chain, tmp_path, with_sms=False) as (env, sms):
        _deal, tid = await _tdx_deal(env, {"iexec_input_files": [env.serve_input(png_bytes())]})
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "tee_failed" and "no SMS" in outcome.detail
        assert (await env.task(tid))[0] == ACTIVE
        env.pool.sms = sms  # the SMS is there now, but the beneficiary never pushed a result key
        _deal, tid = await _tdx_deal(
            env, {"iexec_input_files": [env.serve_input(png_bytes())], "iexec_result_encryption": True}
        )
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "tee_failed" and "iexec-result-encryption-public-key" in outcome.detail
        assert (await env.task(tid))[0] == ACTIVE


@pytest.mark.slow
async def test_a_tdx_deal_without_secrets_completes_enclave_signed_and_plain(chain, tmp_path):
    async with tee_env(chain, tmp_path) as (env, _sms):
        _deal, tid = await _tdx_deal(env, {"iexec_input_files": [env.serve_input(png_bytes())]})
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "completed" and outcome.tee and not outcome.encrypted
        assert (await env.task(tid))[0] == COMPLETED
        contribution = await asyncio.to_thread(
            env.chain.hub.functions.viewContribution(tid, env.pool.worker.address).call
        )
        assert contribution[3] not in (ZERO, env.pool.worker.address)  # a fresh enclave key signed it
        with zipfile.ZipFile(io.BytesIO(env.gateway.get(outcome.cid))) as zf:
            assert "result.png" in zf.namelist() and "secrets.json" not in zf.namelist()


@pytest.mark.slow
async def test_a_standard_deal_still_completes_unencrypted_on_the_tdx_pool(chain, tmp_path):
    async with tee_env(chain, tmp_path) as (env, _sms):
        assert env.pool.orders[-1].tag == TDX_TAG  # the pool's default order tag covers standard deals
        deal, (tid,) = await env.request()
        outcome = await env.pool.wait_task(tid, timeout=30)
        assert outcome.state == "completed" and not outcome.tee and not outcome.encrypted
        deal_tag = (await asyncio.to_thread(env.chain.hub.functions.viewDeal(deal).call))[5]
        assert bytes(deal_tag) == bytes(32)
        with zipfile.ZipFile(io.BytesIO(env.gateway.get(outcome.cid))) as zf:
            assert "result.png" in zf.namelist()
        contribution = await asyncio.to_thread(
            env.chain.hub.functions.viewContribution(tid, env.pool.worker.address).call
        )
        assert contribution[3] == ZERO  # no enclave


# ------------------------------------------------------------------------------------- pure parts


async def test_the_gateway_takes_uploads_like_the_ipfs_upload_node():
    gateway = ResultGateway(max_upload_bytes=1_000_000)
    await gateway.start()
    try:
        blob = os.urandom(300_000)
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", blob, filename="photo.bin", content_type="application/octet-stream")
            async with session.post(f"{gateway.url}/api/v0/add", data=form) as resp:
                assert resp.status == 200
                answer = json.loads((await resp.text()).strip().splitlines()[-1])
            assert answer == {"Name": "photo.bin", "Hash": cid_v1(blob), "Size": str(len(blob))}
            async with session.get(f"{gateway.url}/ipfs/{answer['Hash']}") as resp:
                assert resp.status == 200 and await resp.read() == blob
            async with session.head(f"{gateway.url}/ipfs/{answer['Hash']}") as resp:
                assert resp.status == 200  # the SDK's ipfs.add checks the public URL with HEAD
            big = aiohttp.FormData()
            big.add_field("file", os.urandom(1_000_001), filename="big.bin")
            async with session.post(f"{gateway.url}/api/v0/add", data=big) as resp:
                assert resp.status == 413
            async with session.post(f"{gateway.url}/api/v0/add", data=b"plain") as resp:
                assert resp.status == 400
        assert gateway.uploads == 1
    finally:
        await gateway.stop()


def test_the_post_compute_format_opens_with_the_beneficiary_key():
    """The layout the SDK's decryptResult reads (checked against the SDK itself in the deal test above)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    plain = b"PK-plain-result" * 1000
    for value in (base64.b64encode(pem).decode(), pem.decode()):
        archive = encrypt_result(plain, value)
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            aes_key = key.decrypt(zf.read("aes-key.rsa"), asym_padding.PKCS1v15())
            assert len(aes_key) == 32
            assert _aes_decrypt(zf.read("iexec_out.zip.aes"), aes_key) == plain
    for bad in ("", "not a key", base64.b64encode(b"-----BEGIN PUBLIC KEY-----\nxx").decode()):
        with pytest.raises(PostComputeError):
            encrypt_result(plain, bad)


# ------------------------------------------------------------------------------------- devnet up


@pytest.mark.slow
async def test_devnet_up_runs_the_sms_and_publishes_a_standard_and_a_tdx_app_order(tmp_path, capsys):
    from devnet.__main__ import status
    from devnet.up import Devnet, DevnetConfig
    from iexec.market import MarketClient

    data = tmp_path / "devnet"
    lines: list[str] = []
    async with Devnet(DevnetConfig(data_dir=data, app="test", persist_chain=False), progress=lines.append) as net:
        assert "[4/8] sms ... ok" in " ".join(lines) and lines[-1].startswith("[8/8] telegram ... ok")
        env = dict(line.split("=", 1) for line in (data / "bot.env").read_text().splitlines())
        assert env["SMS_URL"] == net.sms.base_url and env["SMS_URL"].startswith("http://127.0.0.1:")
        assert env["IPFS_UPLOAD_URL"] == env["IPFS_GATEWAY"] == net.gateway.url
        info = json.loads((data / "devnet.json").read_text())
        assert info["sms"] == {"url": net.sms.base_url, "state": str(data / "sms.json")}
        assert net.pool.sms is net.sms and net.pool.orders[-1].tag == TDX_TAG
        assert net.app_order.tag == bytes(32) and net.tdx_app_order.tag == TDX_TAG
        async with MarketClient(net.market.base_url, net.deployment.chain_id, hub=net.deployment.hub) as market:
            standard = await market.app_orders(net.app_address, max_tag=0)
            tdx = await market.app_orders(net.app_address, min_tag=TDX_TAG)
        assert [m.order.tag for m in standard] == [bytes(32)] and [m.order.tag for m in tdx] == [TDX_TAG]
        capsys.readouterr()
        assert await asyncio.to_thread(status, data) == 0
        assert "sms         ok" in capsys.readouterr().out
        async with (  # the SMS answers as the real one does
            aiohttp.ClientSession() as session,
            session.get(f"{env['SMS_URL']}/actuator/health") as resp,
        ):
            assert resp.status == 200
    assert net.sms is None  # stopped with the rest
