"""The bot in TEE (TDX) mode: settings, tags, the result key, the input secret, the texts; then (slow) whole
jobs on a devnet running TDX deals.

Fast tests need no chain: real order objects, the real SMS stand-in over HTTP, the real key files. The slow
tests run the bot against the Telegram stand-in on a devnet whose workerpool runs TEE deals as iExec does
(enclave signature, secrets from the SMS stand-in, encrypted results).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from bot import texts
from bot.chain_gateway import ChainGateway, load_or_create_result_key, secret_name, usable_offers
from bot.errors import TeeUnavailable
from bot.settings import Settings
from devnet.sms import SmsStandIn
from iexec.orders import AppOrder, Domain, WorkerpoolOrder, tag_to_int
from iexec.tee import RESULT_KEY_SECRET, dataset_key_secret, decrypt_dataset, encrypt_dataset
from tests.fixtures_bot import bot_on, photo_bytes
from tests.fixtures_e2e import E2E

TDX = "0x" + "00" * 31 + "09"
TEE_ONLY = "0x" + "00" * 31 + "01"
GPU = "0x" + "00" * 30 + "0100"
ZERO = "0x" + "00" * 32
APP = "0x" + "ab" * 20
POOL = "0x" + "cd" * 20


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]  # a pydantic-settings option


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
    return AppOrder(
        app=APP,
        appprice=price,
        volume=10,
        tag=tag,
        datasetrestrict=ZERO[:42],
        workerpoolrestrict=ZERO[:42],
        requesterrestrict=ZERO[:42],
        salt=salt.to_bytes(32, "big"),
        sign=b"",
    )


def _pool(tag: str, price: int = 0, salt: int = 1) -> WorkerpoolOrder:
    return WorkerpoolOrder(
        workerpool=POOL,
        workerpoolprice=price,
        volume=10,
        tag=tag,
        category=0,
        trust=0,
        apprestrict=ZERO[:42],
        datasetrestrict=ZERO[:42],
        requesterrestrict=ZERO[:42],
        salt=salt.to_bytes(32, "big"),
        sign=b"",
    )


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
    settings = _settings(
        tee_mode="on",
        sms_url=sms_url,
        wallet_password="pw",
        result_key_file=str(key_file),
        app_address=APP,
        data_dir=str(tmp_path),
        db_path=str(tmp_path / "books.db"),
    )
    return ChainGateway(settings, None, account=account)


async def test_start_pushes_the_result_key_and_a_new_key_replaces_the_old(
    tmp_path: Path, key_file: Path, sms: SmsStandIn
) -> None:
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
    with pytest.raises(TeeUnavailable, match=r"SMS .* does not answer"):
        try:
            await gw._start_tee()
        finally:
            if gw.sms is not None:
                await gw.sms.close()


async def test_the_input_secret_is_the_photo_key_and_a_second_push_is_success(
    tmp_path: Path, key_file: Path, sms: SmsStandIn
) -> None:
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
        return texts.START.format(
            price="0.31 RLC",
            fee="0.01 RLC",
            available="1 RLC",
            demo="",
            privacy=texts.privacy(tee, simulated=simulated),
        )

    standard = start(False)
    assert "public parameters on the blockchain" in standard and "Do not send pictures" in standard
    assert "encrypted" not in standard
    tee = start(True)
    assert "encrypted before it leaves me" in tee and "attested enclave" in tee
    assert "still see your picture" in tee  # the bot itself is not blind
    assert "public parameters" not in tee
    assert "simulated" in start(True, simulated=True) and "simulated" not in tee


# ------------------------------------------------------------------------------------------- on a devnet (slow)


async def _deal(chain: ChainGateway, deal_id: str) -> Any:
    return await chain.hub.view_deal(bytes.fromhex(deal_id.removeprefix("0x")))


def _secrets_seen(result_ref: str) -> dict[str, str]:
    return json.loads((Path(result_ref).parent / "secrets.json").read_text())


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_a_photo_comes_back_segmented_through_a_tdx_deal(devnet_module: Any, tmp_path: Path) -> None:
    import hashlib

    net = devnet_module
    async with bot_on(net, tmp_path, tee_mode="on") as botnet:
        assert botnet.settings.resolved_ipfs_upload  # the devnet's gateway takes uploads: IPFS path
        user = botnet.new_user()
        photo = photo_bytes(seed=12)
        botnet.tg.inject_photo(user, photo)
        msg = await botnet.result_for(user, timeout=90)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert job.state.value == "DELIVERED", (job.state, job.error)
        assert msg.data and msg.data != photo
        chain = botnet.bot.chain
        deal = await _deal(chain, job.deal_id)
        assert int.from_bytes(deal.tag, "big") & 0b1001 == 0b1001  # bits 0 (TEE) and 3 (TDX) on chain
        params = json.loads(deal.params)
        name = secret_name(job.id)
        assert params["iexec_secrets"] == {"1": name} and params["iexec_result_encryption"] is True
        [input_url] = params["iexec_input_files"]
        assert input_url.startswith(f"{net.gateway.url}/ipfs/")
        # the SMS holds the job's key, the enclave got it, the stored input is encrypted with it
        value = net.sms.requester_secret(chain.address, name)
        assert value == dataset_key_secret(chain.input_key(job.id))
        assert _secrets_seen(job.result_ref) == {"IEXEC_REQUESTER_SECRET_1": hashlib.sha256(value.encode()).hexdigest()}
        plain = Path(job.input_ref).read_bytes()
        cid = input_url.rsplit("/", 1)[1]
        stored = [b for b in net.gateway._blobs.values() if len(b) >= len(plain)]
        assert not any(plain in b or photo in b for b in net.gateway._blobs.values())
        assert any(decrypt_dataset(b, chain.input_key(job.id)) == plain for b in stored if len(b) % 16 == 0)
        outcome = await net.pool.wait_task(job.task_id, 10)
        assert outcome.tee and outcome.encrypted, outcome
        assert cid


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_an_undecryptable_result_is_refunded_and_not_retried(devnet_module: Any, tmp_path: Path) -> None:
    """Someone replaced the bot's result key in the SMS: the result comes back encrypted to another key."""
    from iexec.sms import SmsClient
    from iexec.tee import ResultKey

    net = devnet_module
    async with bot_on(net, tmp_path, tee_mode="on", ipfs_upload_url="none") as botnet:
        chain = botnet.bot.chain
        async with SmsClient(net.sms.base_url) as sms:
            await sms.set_web2_secret(chain._account, RESULT_KEY_SECRET, ResultKey.generate().sms_value)
        user = botnet.new_user()
        botnet.tg.inject_photo(user, photo_bytes(seed=13))
        await botnet.wait_for_text(user, "could not be decrypted", timeout=90)
        await botnet.settle()
        [job] = botnet.ledger.user_jobs(user.id)
        assert job.state.value == "REFUNDED" and job.error.startswith("bad_result"), (job.state, job.error)
        bal = botnet.ledger.balance(user.id)
        assert (bal.available, bal.pending) == (10**9, 0)  # the operator paid the task
        params = json.loads((await _deal(chain, job.deal_id)).params)
        assert params["iexec_input_files"][0].startswith(botnet.bot.inputs.base_url)  # own input server
        assert botnet.bot.inputs.published(job.id) is None  # revoked with the refund
        outcome = await net.pool.wait_task(job.task_id, 10)
        assert outcome.state == "completed" and outcome.encrypted
    # the next start pushes the bot's own key again
    async with bot_on(net, tmp_path, tee_mode="on") as again:
        assert net.sms.web2_secret(again.bot.chain.address, RESULT_KEY_SECRET) == again.bot.chain.result_key.sms_value


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("crash_at", ["before_secret", "after_secret"])
async def test_a_crash_around_the_secret_push_still_ends_in_one_deal(
    devnet_module: Any, tmp_path: Path, crash_at: str
) -> None:
    """The bot as a real process, SIGKILLed just before / just after pushing the job's secret (the order
    not signed yet), then started again on the same books."""
    net = devnet_module
    net.pool.faults.clear()
    run = E2E(net, tmp_path / "books")
    run.write_env(TEE_MODE="on")
    try:
        user = run.new_user()
        await run.start_bot(crash_at=crash_at)
        run.tg.inject_photo(user, photo_bytes(seed=14))
        assert await run.wait_dead() == -9
        await run.start_bot()
        [job] = await run.wait_terminal(user, timeout=90)
        assert job.state.value == "DELIVERED", (job.state, job.error)
        assert await asyncio.to_thread(run.deals_on_chain, job) == (1, 1)
        assert net.sms.requester_secret(net.bot_address, secret_name(job.id)) is not None
        assert f"event=crash_injected point={crash_at}" in run.logs()
        assert "input_secret_pushed" in run.logs() or "input_secret_existed" in run.logs()
    finally:
        run.close()


def test_the_doctor_knows_which_app_orders_fit_the_mode() -> None:
    from bot.doctor import _app_fits

    assert _app_fits(TDX, TDX) and _app_fits(TEE_ONLY, TDX)
    assert not _app_fits(ZERO, TDX)  # a TEE request needs a TEE app order
    assert not _app_fits(TDX, ZERO)  # it would turn a standard deal into a TDX one
    assert _app_fits(ZERO, ZERO) and not _app_fits(GPU, ZERO)


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="session")
async def test_the_doctor_checks_the_sms_and_the_app_orders_in_tee_mode(devnet_module: Any, tmp_path: Path) -> None:
    from devnet.anvil import free_port
    from tests.test_bot_doctor import _doctor

    net = devnet_module
    async with bot_on(net, tmp_path / "books", tee_mode="on"):
        pass  # a start in TEE mode pushes the result key
    proc = await _doctor(net, tmp_path, TEE_MODE="on")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mode: TEE (TDX) tasks" in proc.stdout
    assert "with a tag for TEE (TDX) tasks" in proc.stdout
    assert f"the SMS at {net.sms.base_url} answers" in proc.stdout
    assert "the SMS holds the wallet's result encryption key" in proc.stdout
    assert "TDX build" not in proc.stdout
    standard = await _doctor(net, tmp_path)
    assert standard.returncode == 0 and "with a tag for standard tasks" in standard.stdout
    assert "SMS" not in standard.stdout
    down = await _doctor(net, tmp_path, TEE_MODE="on", SMS_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "does not answer: the bot cannot start in TEE mode" in down.stdout


async def test_the_encrypted_photo_goes_to_ipfs_content_addressed() -> None:
    import aiohttp

    from bot.errors import UploadFailed
    from bot.input_server import upload_to_ipfs
    from devnet.anvil import free_port
    from devnet.gateway import ResultGateway

    gateway = ResultGateway()
    await gateway.start()
    try:
        blob = encrypt_dataset(b"a photo" * 1000, bytes(range(32)))
        url = await upload_to_ipfs(gateway.url, blob, gateway.url)
        assert url.startswith(f"{gateway.url}/ipfs/")
        assert await upload_to_ipfs(gateway.url, blob, gateway.url) == url  # a retry gives the same URL
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert await resp.read() == blob
        with pytest.raises(UploadFailed, match="HTTP 404"):
            await upload_to_ipfs(f"{gateway.url}/nowhere", blob, gateway.url)
        with pytest.raises(UploadFailed, match="does not answer"):
            await upload_to_ipfs(f"http://127.0.0.1:{free_port()}", blob, gateway.url)
    finally:
        await gateway.stop()
