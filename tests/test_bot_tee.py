"""The bot in TEE (TDX) mode: settings, tags, the result key, the input secret, the texts; then (slow) whole
jobs on a devnet running TDX deals.

Fast tests need no chain: real order objects, the real SMS stand-in over HTTP, the real key files. The slow
tests run the bot against the Telegram stand-in on a devnet whose workerpool runs TEE deals as iExec does
(enclave signature, secrets from the SMS stand-in, encrypted results).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from bot import texts
from bot.chain import (ChainGateway, TeeUnavailable, load_or_create_result_key, secret_name,
                       usable_offers)
from bot.settings import Settings
from devnet.sms import SmsStandIn
from iexec.orders import AppOrder, Domain, WorkerpoolOrder, tag_to_int
from iexec.tee import RESULT_KEY_SECRET, dataset_key_secret, decrypt_dataset, encrypt_dataset

TDX = "0x" + "00" * 31 + "09"
TEE_ONLY = "0x" + "00" * 31 + "01"
GPU = "0x" + "00" * 30 + "0100"
ZERO = "0x" + "00" * 32
APP = "0x" + "ab" * 20
POOL = "0x" + "cd" * 20


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------------------- settings


def test_tee_mode_follows_the_network_preset_and_the_setting() -> None:
    sepolia = _settings(network="arbitrum-sepolia")
    assert sepolia.tee and sepolia.request_tag.hex().endswith("09")
    assert sepolia.resolved_sms_url.startswith("https://sms.")
    assert sepolia.resolved_ipfs_upload == "https://ipfs-upload.arbitrum-sepolia-testnet.iex.ec"
    assert not _settings(network="arbitrum-sepolia", tee_mode="off").tee
    devnet = _settings()
    assert not devnet.tee and tag_to_int(devnet.request_tag) == 0  # the devnet runs both: off unless asked
    on = _settings(tee_mode="on")
    assert on.tee and tag_to_int(on.request_tag) == 0x09  # devnet preset has no TEE tag: TDX all the same


def test_a_user_tag_never_drops_the_tee_bit_and_a_tee_tag_needs_tee_mode() -> None:
    assert tag_to_int(_settings(tee_mode="on", tag=ZERO).request_tag) == 0x09
    assert tag_to_int(_settings(tee_mode="on", tag=GPU).request_tag) == 0x109
    assert tag_to_int(_settings(network="arbitrum-sepolia", tag=ZERO).request_tag) == 0x09
    with pytest.raises(ValueError, match="TEE_MODE=on"):
        _settings(tag=TDX)  # a TEE deal without the encrypted-input path


def test_upload_and_key_file_settings() -> None:
    assert _settings(network="arbitrum-sepolia", ipfs_upload_url="none").resolved_ipfs_upload == ""
    assert _settings(ipfs_upload_url="http://127.0.0.1:5001/").resolved_ipfs_upload == "http://127.0.0.1:5001"
    assert _settings().resolved_ipfs_upload == ""  # the devnet preset has no upload node: our input server
    assert _settings(wallet_keystore="keys/w.json").result_key_path == Path("keys/result-key.pem")
    assert _settings(result_key_file="").result_key_path == Path("data/result-key.pem")
    assert _settings(sms_url="http://127.0.0.1:1/").resolved_sms_url == "http://127.0.0.1:1"


# ------------------------------------------------------------------------------------------- offers


def _app(tag: str, price: int = 0, salt: int = 1) -> AppOrder:
    return AppOrder(app=APP, appprice=price, volume=10, tag=tag, datasetrestrict=ZERO[:42],
                    workerpoolrestrict=ZERO[:42], requesterrestrict=ZERO[:42], salt=salt.to_bytes(32, "big"),
                    sign=b"")


def _pool(tag: str, price: int = 0, salt: int = 1) -> WorkerpoolOrder:
    return WorkerpoolOrder(workerpool=POOL, workerpoolprice=price, volume=10, tag=tag, category=0, trust=0,
                           apprestrict=ZERO[:42], datasetrestrict=ZERO[:42], requesterrestrict=ZERO[:42],
                           salt=salt.to_bytes(32, "big"), sign=b"")


def _offer(apps: list[AppOrder], pools: list[WorkerpoolOrder], tag: str) -> list[tuple[str, str]]:
    found = usable_offers(apps, pools, tag, app_max_price=100, workerpool_max_price=100)
    return [(hex(tag_to_int(o.app.tag)), hex(tag_to_int(o.workerpool.tag))) for o in found]


def test_a_tee_request_takes_only_tee_app_orders_and_pools_that_cover_them() -> None:
    apps = [_app(ZERO), _app(TDX, salt=2), _app(GPU, salt=3)]
    pools = [_pool(ZERO), _pool(TDX, salt=2), _pool(TEE_ONLY, salt=3)]
    assert _offer(apps, pools, TDX) == [("0x9", "0x9")]


def test_a_standard_request_never_takes_a_tee_app_order() -> None:
    apps = [_app(TDX), _app(ZERO, salt=2)]
    pools = [_pool(TDX), _pool(ZERO, salt=2)]
    # the TDX pool covers a standard deal too; the TDX app order would turn the deal into a TDX one
    assert sorted(_offer(apps, pools, ZERO)) == [("0x0", "0x0"), ("0x0", "0x9")]
    assert _offer([_app(TDX)], pools, ZERO) == []


def test_offers_are_cheapest_first_and_within_the_prices() -> None:
    apps = [_app(TDX, price=30), _app(TDX, price=10, salt=2), _app(TDX, price=101, salt=3)]
    pools = [_pool(TDX, price=50), _pool(TDX, price=5, salt=2), _pool(TDX, price=500, salt=3)]
    found = usable_offers(apps, pools, TDX, app_max_price=100, workerpool_max_price=100)
    assert [o.total_price for o in found] == [15, 35, 60, 80]


# ------------------------------------------------------------------------------------------- the result key


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "result-key.pem"
    load_or_create_result_key(path, "pw")
    return path


def test_the_result_key_is_saved_encrypted_private_and_reproduces_input_keys(key_file: Path) -> None:
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    text = key_file.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in text and b"BEGIN RSA PRIVATE KEY" not in text
    again = load_or_create_result_key(key_file, "pw")  # a restart
    assert key_file.read_bytes() == text  # never overwritten
    first = load_or_create_result_key(key_file, "pw").derive_key("input:c1m2")
    assert again.derive_key("input:c1m2") == first and len(first) == 32
    assert again.derive_key("input:c1m3") != first
    with pytest.raises(TeeUnavailable, match="wallet password"):
        load_or_create_result_key(key_file, "wrong")
    assert not list(key_file.parent.glob("*.tmp"))


# ------------------------------------------------------------------------------------------- SMS and orders


@pytest.fixture
async def sms(tmp_path: Path) -> Any:
    stand_in = SmsStandIn(state_path=tmp_path / "sms.json")
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


def _gateway(tmp_path: Path, key_file: Path, sms_url: str, account: Any) -> ChainGateway:
    settings = _settings(tee_mode="on", sms_url=sms_url, wallet_password="pw", result_key_file=str(key_file),
                         app_address=APP, data_dir=str(tmp_path), db_path=str(tmp_path / "books.db"))
    return ChainGateway(settings, None, account=account)


async def test_start_pushes_the_result_key_and_a_new_key_replaces_the_old(tmp_path: Path, key_file: Path,
                                                                          sms: SmsStandIn) -> None:
    account = Account.create()
    gw = _gateway(tmp_path, key_file, sms.base_url, account)
    await gw._start_tee()
    try:
        assert sms.web2_secret(account.address, RESULT_KEY_SECRET) == gw.result_key.sms_value
    finally:
        await gw.sms.close()
    other = _gateway(tmp_path, tmp_path / "new-key.pem", sms.base_url, account)
    await other._start_tee()
    try:
        assert other.result_key.sms_value != gw.result_key.sms_value
        assert sms.web2_secret(account.address, RESULT_KEY_SECRET) == other.result_key.sms_value
    finally:
        await other.sms.close()


async def test_start_fails_clearly_when_the_sms_does_not_answer(tmp_path: Path, key_file: Path) -> None:
    from devnet.anvil import free_port

    gw = _gateway(tmp_path, key_file, f"http://127.0.0.1:{free_port()}", Account.create())
    with pytest.raises(TeeUnavailable, match="SMS .* does not answer"):
        try:
            await gw._start_tee()
        finally:
            if gw.sms is not None:
                await gw.sms.close()


async def test_the_input_secret_is_the_photo_key_and_a_second_push_is_success(tmp_path: Path, key_file: Path,
                                                                              sms: SmsStandIn) -> None:
    account = Account.create()
    gw = _gateway(tmp_path, key_file, sms.base_url, account)
    await gw._start_tee()
    try:
        job = "c-1001234m77"
        key = gw.input_key(job)
        assert not await gw.input_secret_pushed(job)
        await gw.push_input_secret(job, key)
        await gw.push_input_secret(job, key)  # after a restart: "already exists" is done
        assert await gw.input_secret_pushed(job)
        value = sms.requester_secret(account.address, secret_name(job))
        assert value == dataset_key_secret(key)
        photo = b"\xff\xd8 a photo \xff\xd9" * 100
        import base64
        assert decrypt_dataset(encrypt_dataset(photo, key), base64.b64decode(value)) == photo

        gw._domain = Domain(31337, "0x" + "11" * 20)
        order = await gw.sign_request_order(job, "http://127.0.0.1:1/in/x/input.bin", "--max-dim 256")
        params = json.loads(order.params)
        assert params["iexec_secrets"] == {"1": secret_name(job)}
        assert params["iexec_result_encryption"] is True
        assert tag_to_int(order.tag) == 0x09
        assert dataset_key_secret(key) not in order.params
    finally:
        await gw.sms.close()


async def test_standard_mode_orders_carry_no_secret_and_no_tee_bit(tmp_path: Path) -> None:
    settings = _settings(app_address=APP, data_dir=str(tmp_path))
    gw = ChainGateway(settings, None, account=Account.create())
    gw._domain = Domain(31337, "0x" + "11" * 20)
    order = await gw.sign_request_order("c1m2", "http://127.0.0.1:1/in/x/input.jpg", "")
    assert tag_to_int(order.tag) == 0
    assert "iexec_secrets" not in order.params and "iexec_result_encryption" not in order.params


# ------------------------------------------------------------------------------------------- texts


def test_start_says_what_is_true_in_each_mode() -> None:
    def start(tee: bool, simulated: bool = False) -> str:
        return texts.START.format(price="0.31 RLC", fee="0.01 RLC", available="1 RLC", demo="",
                                  privacy=texts.privacy(tee, simulated=simulated))

    standard = start(False)
    assert "public parameters on the blockchain" in standard and "Do not send pictures" in standard
    assert "encrypted" not in standard
    tee = start(True)
    assert "encrypted before it leaves me" in tee and "attested enclave" in tee
    assert "still see your picture" in tee  # the bot itself is not blind
    assert "public parameters" not in tee
    assert "simulated" in start(True, simulated=True) and "simulated" not in tee
