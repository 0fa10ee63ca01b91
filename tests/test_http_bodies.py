"""Whole HTTP bodies well over one 64 KiB chunk are read to their end, and bodies over the cap are refused.

aiohttp's `StreamReader.read(n)` hands back the next chunk (often 64 KiB), not n bytes: the workerpool once
passed the first 64 KiB of every phone photo to the app. Here real servers on 127.0.0.1 send 5 MB bodies
with a Content-Length, chunked, and chunked with pauses between chunks, to `iexec.bodies`, to the devnet
workerpool's input download (the app must see the whole picture) and to the market client (a page of orders
larger than 64 KiB).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from iexec.bodies import read_at_most, read_capped
from iexec.errors import BodyTooLarge, MarketReplyError
from iexec.market import MarketClient
from iexec.results import fetch_result
from tests.fixtures_market import serve
from tests.test_iexec_market import APP, DOMAIN, entry, signed_app

pytestmark = pytest.mark.asyncio(loop_scope="session")
BIG = 5 * 1024 * 1024 + 12_345  # not a multiple of any chunk size


def payload(size: int = BIG, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def noise_png(side: int = 1300) -> bytes:
    """A PNG of random pixels (about 5 MB for 1300x1300: noise does not compress)."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def body_app(
    data: bytes, mode: str, content_type: str = "application/octet-stream", path: str = "/body"
) -> web.Application:
    """One route, GET `path`, sending `data`: "length" (Content-Length), "chunked", or "slow" (chunked,
    16 KiB pieces with a pause every 32 pieces, so the reader sees many short reads)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if mode == "length":
            return web.Response(body=data, content_type=content_type)
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        step = 16 * 1024 if mode == "slow" else 256 * 1024
        for n, start in enumerate(range(0, len(data), step)):
            await resp.write(data[start : start + step])
            if mode == "slow" and n % 32 == 31:
                await asyncio.sleep(0.01)  # the sender's pace, not a synchronisation
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get(path, handler)
    return app


@asynccontextmanager
async def fetched(app: web.Application) -> AsyncIterator[Callable[..., Any]]:
    """Serve `app`; yields `get(cap)` -> the body read with read_capped from GET /body."""
    async with serve(app) as url, aiohttp.ClientSession() as session:

        async def get(cap: int) -> bytes:
            async with session.get(url + "/body") as resp:
                assert resp.status == 200
                return await read_capped(resp, cap, "test body")

        yield get


# --- iexec.bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "chunked", "slow"])
async def test_a_5_mb_body_is_read_whole(mode: str) -> None:
    data = payload()
    async with fetched(body_app(data, mode)) as get:
        body = await get(cap=8 * 1024 * 1024)
    assert len(body) == len(data) and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("mode", ["length", "chunked", "slow"])
async def test_a_body_exactly_at_the_cap_passes_one_byte_more_is_refused(mode: str) -> None:
    data = payload(300_000)
    async with fetched(body_app(data, mode)) as get:
        assert await get(cap=300_000) == data
        with pytest.raises(BodyTooLarge, match=r"test body.*299999 bytes allowed"):
            await get(cap=299_999)


async def test_an_announced_length_over_the_cap_is_refused_before_reading() -> None:
    async with fetched(body_app(payload(), "length")) as get:
        with pytest.raises(BodyTooLarge, match=f"announces {BIG} bytes"):
            await get(cap=1024 * 1024)


async def test_a_chunked_body_over_the_cap_is_not_read_to_its_end() -> None:
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(10_000):  # 640 MB if the reader kept reading
                await resp.write(bytes(64 * 1024))
                sent.append(1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/body", endless)
    async with fetched(app) as get:
        with pytest.raises(BodyTooLarge, match="larger than the 2097152 bytes"):
            await get(cap=2 * 1024 * 1024)
    assert len(sent) < 1000


async def test_read_at_most_stops_at_the_limit_or_the_end() -> None:
    data = payload(1_000_000)
    async with serve(body_app(data, "slow")) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/body") as resp:
            assert await read_at_most(resp.content, 700_001) == data[:700_001]
        async with session.get(url + "/body") as resp:
            assert await read_at_most(resp.content, 5_000_000) == data


# --- the devnet workerpool: the app gets the whole input -------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "slow"])
async def test_workerpool_hands_the_app_a_5_mb_input_whole(pool_env: Any, tmp_path: Path, mode: str) -> None:
    picture = noise_png()
    assert len(picture) > 4 * 1024 * 1024
    async with serve(body_app(picture, mode, "image/png")) as url:
        _, (tid,) = await pool_env.request(input_files=[url + "/body"])
        outcome = await pool_env.pool.wait_task(tid, timeout=60)
    assert outcome.state == "completed", outcome.detail
    result = await fetch_result((await pool_env.task(tid))[12], [pool_env.gateway.url], tmp_path / "out")
    assert result.ok, result.error_message
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert (detections["width"], detections["height"]) == (1300, 1300)  # the app decoded every row


async def test_workerpool_refuses_an_input_over_its_cap(pool_env: Any) -> None:
    pool_env.pool.max_input_bytes = 1024 * 1024
    try:
        async with serve(body_app(payload(3 * 1024 * 1024), "chunked", "image/png")) as url:
            _, (tid,) = await pool_env.request(input_files=[url + "/body"])
            outcome = await pool_env.pool.wait_task(tid, timeout=30)
    finally:
        pool_env.pool.max_input_bytes = 50 * 1024 * 1024
    assert outcome.state == "input_failed"
    assert "input file is larger than the 1048576 bytes allowed" in outcome.detail


# --- the market client: a page of orders over 64 KiB ------------------------------------------------------


def orders_page(count: int) -> bytes:
    orders = [entry(signed_app(salt=salt)) for salt in range(1, count + 1)]
    return json.dumps({"ok": True, "count": count, "orders": orders}).encode()


@pytest.mark.parametrize("mode", ["length", "slow"])
async def test_market_client_reads_a_page_of_orders_larger_than_a_chunk(mode: str) -> None:
    page = orders_page(200)
    assert len(page) > 2 * 64 * 1024
    async with (
        serve(body_app(page, mode, "application/json", "/apporders")) as url,
        MarketClient(url, 31337, hub=DOMAIN.verifying_contract, page_size=1000, backoff=0) as client,
    ):
        listed = await client.app_orders(APP)
    assert len({m.order_hash for m in listed}) == 200  # every order parsed and its signature checked


async def test_market_client_refuses_a_reply_over_its_cap() -> None:
    page = orders_page(60)
    async with (
        serve(body_app(page, "chunked", "application/json", "/apporders")) as url,
        MarketClient(url, 31337, hub=DOMAIN.verifying_contract, backoff=0, max_reply=16 * 1024) as client,
    ):
        with pytest.raises(MarketReplyError, match="reply is larger than the 16384 bytes allowed"):
            await client.app_orders(APP)
