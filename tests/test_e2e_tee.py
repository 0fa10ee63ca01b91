"""End to end in TEE (TDX) mode with the real worker: a real-size photo goes in, a segmented picture comes
back, and afterwards nothing outside the bot holds the plain photo or the plain result.

The devnet's workerpool runs `python -m worker` (Mask R-CNN, random test weights) as a TDX task: the
requester secret (the photo's key) comes from the SMS stand-in, the result is encrypted to the bot's key as
iExec's post-compute does. The bot is a real process with TEE_MODE=on (the photo uploaded encrypted to the
devnet's IPFS stand-in, its key pushed to the SMS before the order is signed).

Searched afterwards, for the photo as sent, the picture the bot published (after its checks), the result
picture as delivered, and a 64-byte slice from the middle of each: everything the result gateway stores,
the deal's params on chain, every log line the workerpool (and its app) wrote in this process, the files
left in the workerpool's work folder, the SMS stand-in's state file and the bytes served at the input URL.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from devnet.up import Devnet
from tests.fixtures_bot import phone_photo
from tests.fixtures_e2e import E2E, open_devnet

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]
CREDIT = 10**9


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tee_devnet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Devnet]:
    """A devnet whose workerpool runs the real worker, one task at a time."""
    net = await open_devnet(tmp_path_factory.mktemp("e2e-tee"), "real", workers=1)
    try:
        yield net
    finally:
        await net.stop()


class _Lines(logging.Handler):
    """Every log record of the devnet's parts in this process, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture
def pool_logs() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("devnet")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _needles(name: str, data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    return {f"{name} (whole)": data, f"{name} (64 bytes from the middle)": data[middle : middle + 64]}


def _text_forms(data: bytes) -> list[bytes]:
    """How bytes could appear in a text: raw, hex, base64."""
    return [data, data.hex().encode(), base64.b64encode(data)]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


async def test_a_real_size_photo_through_tdx_leaves_nothing_plain_outside_the_bot(
    tee_devnet: Devnet, tmp_path: Path, pool_logs: _Lines
) -> None:
    from iexec.tee import ResultKey, decrypt_dataset, is_encrypted_result

    net = tee_devnet
    run = E2E(net, tmp_path / "books")
    run.write_env(TEE_MODE="on", WORKER_ARGS="--max-dim 256 --min-confidence 0.5", MATCH_TIMEOUT_S="60")
    try:
        await run.start_bot()
        user = run.new_user(CREDIT)
        sent = phone_photo(3000, 3000, seed=21)
        assert len(sent) > 3 * 1024 * 1024
        run.tg.inject_document(user, sent, "IMG_TEE.jpg", mime_type="image/jpeg")
        result = await run.result_for(user, timeout=300)
        [job] = await run.wait_terminal(user, timeout=60)
        assert job.state.value == "DELIVERED", (job.state, job.error)
        assert await asyncio.to_thread(run.deals_on_chain, job) == (1, 1)
        with Image.open(io.BytesIO(result.data)) as img:
            assert img.size == (2048, 2048)  # the worker drew on the whole picture (decrypted in the task)
        published = Path(job.input_ref).read_bytes()  # what the bot checked and sent on, before encryption
        delivered = Path(job.result_ref).read_bytes()
        assert delivered == result.data
        outcome = await net.pool.wait_task(job.task_id, 30)
        assert outcome.state == "completed" and outcome.tee and outcome.encrypted, outcome
    finally:
        run.close()

    # the deal on chain: TDX tag, the secret's name and result encryption in its params, no key
    deal = await asyncio.to_thread(lambda: run.hub().functions.viewDeal(job.deal_id).call())
    tag, params_text = int.from_bytes(bytes(deal[5]), "big"), deal[9]
    assert tag & 0b1001 == 0b1001
    params = json.loads(params_text)
    assert params["iexec_result_encryption"] is True and list(params["iexec_secrets"]) == ["1"]
    secret_name = params["iexec_secrets"]["1"]
    key_b64 = net.sms.requester_secret(net.bot_address, secret_name)
    assert key_b64 and key_b64 not in params_text

    # the input URL serves encrypted bytes only, which the SMS's key opens to the published picture
    [input_url] = params["iexec_input_files"]
    async with aiohttp.ClientSession() as http, http.get(input_url) as resp:
        assert resp.status == 200
        served = await resp.read()
    assert decrypt_dataset(served, base64.b64decode(key_b64)) == published

    # the result archive the gateway holds is encrypted (aes-key.rsa + iexec_out.zip.aes); the bot's key
    # opens it to the picture delivered (so the search below looks where the picture would be if plain)
    blobs = list(net.gateway._blobs.values())
    archives = [b for b in blobs if is_encrypted_result(b)]
    assert archives
    password = net.password_file.read_text().rstrip("\r\n").encode()
    bot_key = ResultKey.from_encrypted_pem((net.keystore.parent / "result-key.pem").read_bytes(), password)
    opened = []
    for archive in archives:
        with zipfile.ZipFile(io.BytesIO(bot_key.decrypt_result(archive))) as zf:
            opened += [zf.read(name) for name in zf.namelist()]
    assert delivered in opened

    places: dict[str, list[bytes]] = {
        "result gateway": blobs,
        "deal params on chain": [params_text.encode()],
        "workerpool logs": ["\n".join(pool_logs.lines).encode("utf-8", "surrogateescape")],
        "workerpool files": [p.read_bytes() for p in _files(net.pool._workdir)],
        "SMS state file": [(net.data_dir / "sms.json").read_bytes()],
        "input URL": [served],
    }
    assert pool_logs.lines, "no workerpool log line captured: the search would prove nothing"
    needles = {
        **_needles("photo as sent", sent),
        **_needles("photo as published", published),
        **_needles("result picture", delivered),
    }
    found = [
        f"{what} in {where}"
        for what, needle in needles.items()
        for where, contents in places.items()
        for content in contents
        for form in _text_forms(needle)
        if form in content
    ]
    assert found == []
