"""iexec.sms: the SMS client sends byte for byte what the official JS SDK 9.0.1 sends.

A recorder server (here, in the test) plays a minimal SMS (HEAD 204/404, POST 204/409, PUT 204/404) and
records every request; the SDK and our SmsClient make the same pushes with the same key against it.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from devnet.accounts import REQUESTER, SPARE_1
from devnet.sms import SmsStandIn
from iexec.errors import SmsError
from iexec.networks import ARBITRUM, ARBITRUM_SEPOLIA, DEVNET, TDX_TAG, resolve_network
from iexec.sms import MAX_SECRET_BYTES, SmsClient
from iexec.tee import RESULT_KEY_SECRET, ResultKey
from tests.fixtures_chain import ChainEnv
from tests.sdk_peer import JS, SDK_SOURCES, missing, run_sdk_script

SCRIPT = JS / "tee_sdk_peer.mjs"


@dataclass
class Recorder:
    """A loopback HTTP server answering like an SMS and recording each request."""

    seen: list[dict[str, str]] = field(default_factory=list)
    created: set[str] = field(default_factory=set)
    force_status: int | None = None
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "content_type": request.headers.get("Content-Type", ""),
                "authorization": request.headers.get("Authorization", ""),
                "body": body.decode("utf-8"),
            }
        )
        if self.force_status is not None:
            return web.Response(status=self.force_status)
        key = request.path + "?" + request.query_string
        if request.method == "HEAD":
            return web.Response(status=204 if key in self.created else 404)
        if request.method == "POST":
            if key in self.created:
                return web.Response(status=409)
            self.created.add(key)
            return web.Response(status=204)
        if request.method == "PUT":
            return web.Response(status=204 if key in self.created else 404)
        return web.Response(status=405)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.start()
    yield rec
    await rec.stop()


def writes(seen: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in seen if r["method"] != "HEAD"]


@pytest.mark.slow
async def test_pushes_match_the_js_sdk_byte_for_byte(chain: ChainEnv) -> None:
    k1, k2 = ResultKey.generate(), ResultKey.generate()
    name, value = "segbot-job-42", base64.b64encode(os.urandom(32)).decode()
    sdk_rec, our_rec = Recorder(), Recorder()
    await sdk_rec.start()
    await our_rec.start()
    try:
        env = {
            "MODE": "sms",
            "RPC": chain.rpc_url,
            "KEY": "0x" + bytes(REQUESTER.key).hex(),
            "HUB": chain.deployment.hub,
            "SMS": sdk_rec.url,
            "NAME": name,
            "VALUE": value,
            "PEM": k1.public_pem.decode(),
            "PEM2": k2.public_pem.decode(),
        }
        sdk = await run_sdk_script(SCRIPT, env, timeout=120)
        assert sdk["requesterPush"] == {"isPushed": True} and sdk["requesterExists"] is True
        assert sdk["keyPush"] == {"isPushed": True, "isUpdated": False}
        assert sdk["keyUpdate"] == {"isPushed": True, "isUpdated": True}

        async with SmsClient(our_rec.url) as client:
            assert not await client.requester_secret_exists(REQUESTER.address, name)
            await client.push_requester_secret(REQUESTER, name, value)
            assert await client.requester_secret_exists(REQUESTER.address, name)
            await client.set_web2_secret(REQUESTER, RESULT_KEY_SECRET, k1.sms_value)
            await client.set_web2_secret(REQUESTER, RESULT_KEY_SECRET, k2.sms_value)
    finally:
        await sdk_rec.stop()
        await our_rec.stop()

    ours, theirs = writes(our_rec.seen), writes(sdk_rec.seen)
    assert [r["method"] for r in theirs] == ["POST", "POST", "PUT"]
    assert ours == theirs  # method, path, query, content type, body and signature, request by request
    assert theirs[0]["path"] == f"/requesters/{REQUESTER.address}/secrets/{name}" and theirs[0]["body"] == value
    assert theirs[1]["query"] == f"ownerAddress={REQUESTER.address}&secretName={RESULT_KEY_SECRET}"
    assert theirs[1]["body"] == k1.sms_value and theirs[2]["body"] == k2.sms_value
    # the lookups go to the same places too
    head_paths = {(r["path"], r["query"]) for r in sdk_rec.seen if r["method"] == "HEAD"}
    assert head_paths == {(r["path"], r["query"]) for r in our_rec.seen if r["method"] == "HEAD"}


async def test_statuses_become_clear_errors(recorder: Recorder) -> None:
    async with SmsClient(recorder.url + "/") as client:
        await client.push_requester_secret(REQUESTER, "segbot-1", "v")
        with pytest.raises(SmsError, match="already exists") as exc:
            await client.push_requester_secret(REQUESTER, "segbot-1", "v2")
        assert exc.value.status == 409
        with pytest.raises(SmsError, match="nothing to update") as exc:
            await client.push_web2_secret(REQUESTER, "other", "v", update=True)
        assert exc.value.status == 404
        recorder.force_status = 401
        with pytest.raises(SmsError, match="refused the signature") as exc:
            await client.push_requester_secret(REQUESTER, "segbot-2", "v")
        assert exc.value.status == 401
        recorder.force_status = 500
        with pytest.raises(SmsError, match="500") as exc:
            await client.requester_secret_exists(REQUESTER.address, "segbot-2")
        assert exc.value.status == 500
        assert not await client.health()
        recorder.force_status = None
        assert await client.health()
        before = len(recorder.seen)
        for bad in ("", "a" * 65, "has space", "ünï", "a/b", "a?b"):
            with pytest.raises(SmsError, match="secret name"):
                await client.push_requester_secret(REQUESTER, bad, "v")
        with pytest.raises(SmsError, match="at most 4096 bytes"):
            await client.push_requester_secret(REQUESTER, "segbot-3", "x" * (MAX_SECRET_BYTES + 1))
        with pytest.raises(SmsError, match="non-empty"):
            await client.push_requester_secret(REQUESTER, "segbot-3", "")
        with pytest.raises(SmsError, match="not an Ethereum address"):
            await client.requester_secret_exists("0x1234", "segbot-3")
        assert len(recorder.seen) == before  # refused before anything was sent


async def test_an_sms_that_does_not_answer_is_an_sms_error(recorder: Recorder) -> None:
    url = recorder.url
    await recorder.stop()
    async with SmsClient(url, timeout=5) as client:
        with pytest.raises(SmsError, match="did not answer") as exc:
            await client.web2_secret_exists(REQUESTER.address, RESULT_KEY_SECRET)
        assert exc.value.status is None
        assert not await client.health()


@pytest.mark.slow  # ~2 s: node and the devnet's SMS
async def test_against_the_devnet_stand_in(tmp_path: Path) -> None:
    """The stand-in checks signatures with its own code: our pushes pass, someone else's key does not."""
    sms = SmsStandIn(state_path=tmp_path / "sms.json")
    await sms.start()
    try:
        async with SmsClient(sms.base_url) as client:
            assert await client.health()
            await client.push_requester_secret(REQUESTER, "segbot-7", "s3cret")
            assert sms.requester_secret(REQUESTER.address, "segbot-7") == "s3cret"
            with pytest.raises(SmsError) as exc:
                await client.push_requester_secret(REQUESTER, "segbot-7", "again")
            assert exc.value.status == 409
            key = ResultKey.generate()
            await client.set_web2_secret(REQUESTER, RESULT_KEY_SECRET, key.sms_value)
            await client.set_web2_secret(REQUESTER, RESULT_KEY_SECRET, "updated")
            assert sms.web2_secret(REQUESTER.address, RESULT_KEY_SECRET) == "updated"
            assert await client.web2_secret_exists(REQUESTER.address, RESULT_KEY_SECRET)
            assert not await client.web2_secret_exists(SPARE_1.address, RESULT_KEY_SECRET)

            class Impostor:  # signs with SPARE_1's key but claims REQUESTER's address
                address = REQUESTER.address
                sign_message = SPARE_1.sign_message

            with pytest.raises(SmsError, match="refused the signature") as exc:
                await client.push_requester_secret(Impostor(), "segbot-8", "x")
            assert exc.value.status == 401
            assert sms.requester_secret(REQUESTER.address, "segbot-8") is None
    finally:
        await sms.stop()


def test_network_presets_name_the_sdks_sms_and_tdx_tag() -> None:
    """sms_url and tee_tag of the Arbitrum presets are the SDK 9.0.1's (read from its sources)."""
    if not SDK_SOURCES.exists():
        missing("npm install has not put the iexec SDK in devnet/node_modules")
    src = SDK_SOURCES / "common/utils"
    config = (src / "config.js").read_text()
    for net in (ARBITRUM_SEPOLIA, ARBITRUM):
        block = config[config.index(f"id: {net.chain_id},") :]
        assert re.search(r"sms: '([^']+)'", block).group(1) == net.sms_url  # type: ignore[union-attr]  # no match fails the test either way
        assert net.tee_tag == TDX_TAG
    constant = (src / "constant.js").read_text()
    tdx = re.search(r"TDX_DEFAULT_TAG =\s*'(0x[0-9a-f]{64})'", constant)
    assert tdx is not None and tdx.group(1) == TDX_TAG
    assert DEVNET.sms_url == "http://127.0.0.1:13300" and DEVNET.tee_tag == ""
    assert resolve_network("arbitrum-sepolia", sms_url="http://127.0.0.1:1").sms_url == "http://127.0.0.1:1"
