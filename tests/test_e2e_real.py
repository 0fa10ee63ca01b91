"""End to end with the real worker: Mask R-CNN (ResNet50, random test weights made once and cached) runs as
the devnet workerpool's app, the bot runs as a subprocess and users talk to it through the Telegram stand-in.

A photo, an image document and an image URL (served on 127.0.0.1; the bot allows loopback here) each come
back as a segmented picture; the charge is the matched prices plus the fee; the books balance. TensorFlow is
slow on 2 cores (about 10 s a task), so these are marked slow and share one devnet.

Real-size pictures too, as people send them: a 3000x3000 JPEG of several MB as a file, a 12-megapixel
phone photo turned by its EXIF Orientation tag as a Telegram photo, and a PNG over 1 MB as a file. Each is
delivered, charged once, and the worker saw the whole picture (its detections name the input's size).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from devnet.up import Devnet
from tests.fixtures_bot import phone_photo, photo_bytes
from tests.fixtures_e2e import E2E, open_devnet

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]
CREDIT = 10**9


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def real_devnet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Devnet]:
    """A devnet whose workerpool runs `python -m worker` (one at a time: TensorFlow takes both cores)."""
    net = await open_devnet(tmp_path_factory.mktemp("e2e-real"), "real", workers=1)
    try:
        yield net
    finally:
        await net.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def real(real_devnet: Devnet, tmp_path: Path) -> AsyncIterator[E2E]:
    run = E2E(real_devnet, tmp_path / "books")
    run.write_env(WORKER_ARGS="--max-dim 256 --min-confidence 0.5", MATCH_TIMEOUT_S="60")
    await run.start_bot()
    try:
        yield run
    finally:
        run.close()


def assert_segmented(e2e: E2E, result, sent: bytes) -> None:  # type: ignore[no-untyped-def]  # result: the bot's delivered photo, as E2E returns it
    """The reply is a picture the worker drew (not the input sent back), with a caption and the charge."""
    assert result.data and result.data != sent
    with Image.open(io.BytesIO(result.data)) as img:
        img.load()
        assert min(img.size) > 0
    assert "Charged" in (result.caption or "")


async def check_books(e2e: E2E, user) -> dict:  # type: ignore[no-untyped-def,type-arg]  # user: the E2E fixture's; the books as a plain dict
    """The job was delivered and charged once; returns the worker's detections.json."""
    [job] = await e2e.wait_terminal(user, timeout=60)
    assert job.state.value == "DELIVERED", (job.state, job.error)
    assert (job.app_price, job.workerpool_price) == (e2e.net.config.app_price, e2e.net.config.pool_price)
    bal = e2e.ledger.balance(user.id)
    assert (bal.posted, bal.pending) == (CREDIT - e2e.charged(job), 0)
    # sync web3 off the event loop: its session lock is shared with the workerpool's async calls here
    assert await asyncio.to_thread(e2e.deals_on_chain, job) == (1, 1)
    result_dir = Path(job.result_ref).parent
    assert (result_dir / "computed.json").exists() and (result_dir / "detections.json").exists()
    e2e.ledger.audit()
    return json.loads((result_dir / "detections.json").read_text())


def picture_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


async def test_photo_comes_back_segmented(real: E2E) -> None:
    user = real.new_user(CREDIT)
    sent = photo_bytes((320, 240), seed=1)
    real.tg.inject_photo(user, sent)
    result = await real.result_for(user, timeout=240)
    assert result.kind == "photo"
    assert_segmented(real, result, sent)
    await check_books(real, user)


async def test_image_document_comes_back_segmented(real: E2E) -> None:
    user = real.new_user(CREDIT)
    sent = photo_bytes((300, 200), fmt="PNG", seed=2)
    real.tg.inject_document(user, sent, "street.png", mime_type="image/png")
    result = await real.result_for(user, timeout=240)
    assert_segmented(real, result, sent)
    await check_books(real, user)


async def test_image_url_comes_back_segmented(real: E2E) -> None:
    sent = photo_bytes((256, 256), seed=3)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=sent, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/pictures/cat.jpg", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/pictures/cat.jpg"
        user = real.new_user(CREDIT)
        real.tg.inject_text(user, url)
        result = await real.result_for(user, timeout=240)
        assert_segmented(real, result, sent)
        await check_books(real, user)
    finally:
        await runner.cleanup()


# --- real-size pictures ------------------------------------------------------------------------------------


async def test_a_3000px_jpeg_of_several_mb_as_a_file(real: E2E) -> None:
    user = real.new_user(CREDIT)
    sent = phone_photo(3000, 3000, seed=11)
    assert len(sent) > 3 * 1024 * 1024
    real.tg.inject_document(user, sent, "IMG_3000.jpg", mime_type="image/jpeg")
    result = await real.result_for(user, timeout=240)
    assert_segmented(real, result, sent)
    assert picture_size(result.data) == (2048, 2048)  # the worker's largest output, from the whole picture
    detections = await check_books(real, user)
    assert (detections["image"]["source_width"], detections["image"]["source_height"]) == (3000, 3000)


async def test_a_12_megapixel_phone_photo_comes_back_upright(real: E2E) -> None:
    user = real.new_user(CREDIT)
    sent = phone_photo(4000, 3000, orientation=6, seed=12)  # stored landscape, shown portrait
    assert len(sent) > 3 * 1024 * 1024
    real.tg.inject_photo(user, sent)
    result = await real.result_for(user, timeout=240)
    assert result.kind == "photo"
    assert_segmented(real, result, sent)
    width, height = picture_size(result.data)
    assert width < height and abs(width / height - 3 / 4) < 0.01, (width, height)
    detections = await check_books(real, user)
    # Telegram keeps a photo at most 2560 px on its longest side: the worker got all of that, upright
    assert (detections["image"]["source_width"], detections["image"]["source_height"]) == (1920, 2560)


async def test_a_png_over_1_mb_as_a_file(real: E2E) -> None:
    user = real.new_user(CREDIT)
    sent = phone_photo(900, 700, seed=13, fmt="PNG")
    assert len(sent) > 1024 * 1024
    real.tg.inject_document(user, sent, "scan.png", mime_type="image/png")
    result = await real.result_for(user, timeout=240)
    assert_segmented(real, result, sent)
    assert picture_size(result.data) == (900, 700)
    detections = await check_books(real, user)
    assert (detections["image"]["source_width"], detections["image"]["source_height"]) == (900, 700)
