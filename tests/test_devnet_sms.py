"""The SMS stand-in: its HTTP answers as the real iexec-sms gives them, and the official JS SDK as its peer."""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_account import Account
from eth_account.messages import encode_defunct

from devnet.accounts import APP_OWNER, REQUESTER, SPARE_1
from devnet.sms import MAX_SECRET_BYTES, SmsStandIn, sms_challenge
from tests.sdk_peer import JS, run_sdk_script

SCRIPT = JS / "sms_sdk_peer.mjs"


def auth(account: Account, address: str, name: str, value: str) -> str:
    """The Authorization header the SDK sends: personal_sign of the SMS challenge."""
    signed = Account.sign_message(encode_defunct(primitive=sms_challenge(address, name, value)), account.key)
    return "0x" + bytes(signed.signature).hex()


@pytest.fixture
async def sms(tmp_path: Path) -> AsyncIterator[SmsStandIn]:
    stand_in = SmsStandIn(state_path=tmp_path / "sms.json")
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def web2_url(sms: SmsStandIn, owner: str, name: str) -> str:
    return f"{sms.base_url}/secrets/web2?ownerAddress={owner}&secretName={name}"


def requester_url(sms: SmsStandIn, requester: str, name: str) -> str:
    return f"{sms.base_url}/requesters/{requester}/secrets/{name}"


async def test_requester_secret_push_check_and_no_second_push(sms: SmsStandIn, http: aiohttp.ClientSession) -> None:
    me = REQUESTER.address
    url = requester_url(sms, me, "segbot-job-1")
    async with http.head(url) as r:
        assert r.status == 404
    headers = {"Authorization": auth(REQUESTER, me, "segbot-job-1", "k3y"), "Content-Type": "text/plain"}
    async with http.post(url, data="k3y", headers=headers) as r:
        assert r.status == 204
    async with http.head(url) as r:
        assert r.status == 204
    async with http.head(requester_url(sms, me.lower(), "segbot-job-1")) as r:
        assert r.status == 204  # addresses are case-blind, as the real SMS lowercases them
    async with http.post(url, data="k3y", headers=headers) as r:
        assert r.status == 409
    async with http.put(url, data="k3y", headers=headers) as r:
        assert r.status == 405  # requester secrets cannot be updated
    assert sms.requester_secret(me, "segbot-job-1") == "k3y"
    assert sms.requester_secret(SPARE_1.address, "segbot-job-1") is None


async def test_web2_secret_create_then_update_only_by_its_owner(sms: SmsStandIn, http: aiohttp.ClientSession) -> None:
    me, name = REQUESTER.address, "iexec-result-encryption-public-key"
    url = web2_url(sms, me, name)
    async with http.put(url, data="v1", headers={"Authorization": auth(REQUESTER, me, name, "v1")}) as r:
        assert r.status == 404  # update before create
    async with http.post(url, data="v1", headers={"Authorization": auth(REQUESTER, me, name, "v1")}) as r:
        assert r.status == 204
    async with http.head(url) as r:
        assert r.status == 204
    async with http.post(url, data="v2", headers={"Authorization": auth(REQUESTER, me, name, "v2")}) as r:
        assert r.status == 409
    async with http.put(url, data="v2", headers={"Authorization": auth(SPARE_1, me, name, "v2")}) as r:
        assert r.status == 401  # someone else's signature
    assert sms.web2_secret(me, name) == "v1"
    async with http.put(url, data="v2", headers={"Authorization": auth(REQUESTER, me, name, "v2")}) as r:
        assert r.status == 204
    assert sms.web2_secret(me, name) == "v2"
    async with http.head(web2_url(sms, SPARE_1.address, name)) as r:
        assert r.status == 404


async def test_bad_signatures_names_and_sizes_are_refused_and_store_nothing(
    sms: SmsStandIn, http: aiohttp.ClientSession
) -> None:
    me = REQUESTER.address
    url = requester_url(sms, me, "n1")
    tampered = {"Authorization": auth(REQUESTER, me, "n1", "good")}
    cases = [
        (url, "evil", tampered, 401),  # value changed after signing
        (url, "good", {}, 401),  # no signature
        (url, "good", {"Authorization": "0x1234"}, 401),  # garbage signature
        (url, "good", {"Authorization": auth(SPARE_1, me, "n1", "good")}, 401),  # signer is not the requester
        (requester_url(sms, me, "bad.name"), "good", {"Authorization": auth(REQUESTER, me, "bad.name", "good")}, 400),
        (requester_url(sms, me, "x" * 65), "good", {"Authorization": auth(REQUESTER, me, "x" * 65, "good")}, 400),
        (requester_url(sms, "0xnot", "n1"), "good", tampered, 400),
        (
            url,
            "x" * (MAX_SECRET_BYTES + 1),
            {"Authorization": auth(REQUESTER, me, "n1", "x" * (MAX_SECRET_BYTES + 1))},
            400,
        ),
        (url, "x" * 200_000, tampered, 413),  # over the read cap
        (url, "", {"Authorization": auth(REQUESTER, me, "n1", "")}, 400),
    ]
    for target, body, headers, status in cases:
        async with http.post(target, data=body, headers=headers) as r:
            assert r.status == status, (target[-30:], body[:10], headers)
    big = "y" * (MAX_SECRET_BYTES + 1)
    async with http.post(
        web2_url(sms, me, "k"), data=big, headers={"Authorization": auth(REQUESTER, me, "k", big)}
    ) as r:
        assert r.status == 413
    fits = "z" * MAX_SECRET_BYTES
    async with http.post(
        web2_url(sms, me, "k"), data=fits, headers={"Authorization": auth(REQUESTER, me, "k", fits)}
    ) as r:
        assert r.status == 204
    assert sms.requester_secret(me, "n1") is None and sms.web2_secret(me, "k") == fits


async def test_secrets_survive_a_restart_in_a_private_file(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devnet.sms")
    state = tmp_path / "data" / "sms.json"
    first = SmsStandIn(state_path=state)
    await first.start()
    me = APP_OWNER.address
    secret_value = "s3cr3t-value-never-logged"
    async with http.post(
        requester_url(first, me, "a"),
        data=secret_value,
        headers={"Authorization": auth(APP_OWNER, me, "a", secret_value)},
    ) as r:
        assert r.status == 204
    await first.stop()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert [p.name for p in state.parent.iterdir()] == ["sms.json"]  # no temp file left behind
    second = SmsStandIn(state_path=state)
    await second.start()
    try:
        assert second.requester_secret(me, "a") == secret_value
        async with http.head(requester_url(second, me, "a")) as r:
            assert r.status == 204
        async with http.get(f"{second.base_url}/up") as r:
            assert r.status == 200 and (await r.text()).startswith("Up!")
        async with http.get(f"{second.base_url}/actuator/health") as r:
            assert (await r.json()) == {"status": "UP"}
    finally:
        await second.stop()
    assert "event=sms_requester_added" in caplog.text and secret_value not in caplog.text


@pytest.mark.slow
async def test_the_js_sdk_pushes_and_checks_secrets_against_the_stand_in(chain: Any, sms: SmsStandIn) -> None:
    # two real RSA-4096 public keys, as the bot pushes: their base64 PEM must fit the SMS's 4096-byte limit
    pem, pem2 = (
        rsa.generate_private_key(public_exponent=65537, key_size=4096)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        for _ in range(2)
    )
    env = {
        "RPC": chain.rpc_url,
        "KEY": "0x" + bytes(REQUESTER.key).hex(),
        "HUB": chain.deployment.hub,
        "SMS": sms.base_url,
        "NAME": "segbot-job-7",
        "VALUE": "c2VjcmV0a2V5",
        "PEM": pem,
        "PEM2": pem2,
    }
    seen = await run_sdk_script(SCRIPT, env, timeout=120)
    me = REQUESTER.address
    assert seen["requesterBefore"] is False and seen["requesterPush"] == {"isPushed": True}
    assert seen["requesterAfter"] is True
    assert seen["requesterAgain"] == f'Secret "segbot-job-7" already exists for {me}'
    assert seen["keyBefore"] is False and seen["keyPush"] == {"isPushed": True, "isUpdated": False}
    assert seen["keyAfter"] is True
    assert "already exists" in seen["keyAgain"]
    assert seen["keyUpdate"] == {"isPushed": True, "isUpdated": True}
    assert sms.requester_secret(me, "segbot-job-7") == "c2VjcmV0a2V5"
    # the SDK pushes a PEM key base64-encoded
    assert sms.web2_secret(me, "iexec-result-encryption-public-key") == base64.b64encode(pem2.encode()).decode()


def test_a_damaged_state_file_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    state = tmp_path / "sms.json"
    state.write_text('{"version": 1, "web2": {')
    with pytest.raises(ValueError, match="unreadable SMS state"):
        SmsStandIn(state_path=state)
    state.write_text('{"version": 7}')
    with pytest.raises(ValueError, match="not an SMS state file of version 1"):
        SmsStandIn(state_path=state)
