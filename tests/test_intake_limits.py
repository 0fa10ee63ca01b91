"""bot.intake: downloads at once (per user, in all), refusing shapes that cannot be sent back, and image work
off the event loop — against a local 127.0.0.1 server that serves slow bodies and counts the connections
it holds at once (loopback is allowed through the settings' explicit switch)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from PIL import Image

from bot.errors import DownloadsBusy, InputRejected
from bot.images import MAX_FRAMES_COUNTED
from bot.intake import DownloadLimiter, FetchPolicy, fetch_image
from tests.loop_stalls import loop_stalls

LOOPBACK_OK = FetchPolicy(allow_loopback=True, timeout=20.0)


def jpeg_bytes(size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def hostile_gif(frames: int, side: int = 64) -> bytes:
    """Half a million empty frames in 8 MB: Pillow's n_frames walks them all (seconds of CPU)."""
    head = b"GIF89a" + struct.pack("<HH", side, side) + bytes([0x80, 0, 0]) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, side, side) + b"\0" + b"\x02\x02\x4c\x01\x00"
    return head + frame * frames + b"\x3b"


class SlowServer:
    """Serves `/slow/<user>/<n>.jpg` as a JPEG sent in pieces over about `seconds`; counts the bodies being
    sent at once, in all and per user (the `<user>` part of the path)."""

    def __init__(self, seconds: float = 0.6) -> None:
        self.seconds = seconds
        self.active: Counter[str] = Counter()
        self.peak_user: Counter[str] = Counter()
        self.peak = 0
        self.hits: list[str] = []
        self.bodies: dict[str, bytes] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        user = request.match_info["user"]
        self.hits.append(request.path)
        self.active[user] += 1
        self.peak_user[user] = max(self.peak_user[user], self.active[user])
        self.peak = max(self.peak, sum(self.active.values()))
        try:
            body = jpeg_bytes()
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await resp.prepare(request)
            pieces = 6
            step = -(-len(body) // pieces)
            for i in range(pieces):
                await resp.write(body[i * step : (i + 1) * step])
                await asyncio.sleep(self.seconds / pieces)  # a slow link, not a synchronisation
            await resp.write_eof()
            return resp
        finally:
            self.active[user] -= 1

    async def _fixed(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(body=self.bodies[request.match_info["name"]], content_type="image/gif")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SlowServer]:
        app = web.Application()
        app.router.add_get("/slow/{user}/{n}.jpg", self._slow)
        app.router.add_get("/fixed/{name}", self._fixed)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        try:
            yield self
        finally:
            await self._runner.cleanup()


async def download(limiter: DownloadLimiter, user: str, url: str) -> bytes:
    """What the pipeline does for each picture: a slot of the user's, then the fetch."""
    async with limiter.slot(user):
        return await fetch_image(url, LOOPBACK_OK)


# --- downloads at once -----------------------------------------------------------------------------------


@pytest.mark.slow  # over ~2 s
async def test_one_user_never_has_more_than_two_downloads_open() -> None:
    async with SlowServer().running() as server:
        limiter = DownloadLimiter(per_user=2, overall=16, max_waiting=10)
        urls = [f"{server.url}/slow/a/{n}.jpg" for n in range(6)]
        bodies = await asyncio.gather(*(download(limiter, "a", url) for url in urls))
        assert bodies == [jpeg_bytes()] * 6  # every one was fetched, in turn
        assert len(server.hits) == 6
        assert server.peak_user["a"] == 2 and server.peak == 2
        assert limiter.pending("a") == 0


@pytest.mark.slow  # over ~2 s
async def test_users_share_the_overall_limit_without_one_taking_it_all() -> None:
    async with SlowServer().running() as server:
        limiter = DownloadLimiter(per_user=2, overall=3, max_waiting=10)
        jobs = [download(limiter, user, f"{server.url}/slow/{user}/{n}.jpg") for n in range(4) for user in "abc"]
        await asyncio.gather(*jobs)
        assert len(server.hits) == 12
        assert server.peak == 3
        assert max(server.peak_user.values()) <= 2


@pytest.mark.slow  # over ~2 s
async def test_too_many_waiting_are_refused_at_once_without_connecting() -> None:
    async with SlowServer(seconds=1.0).running() as server:
        limiter = DownloadLimiter(per_user=1, overall=16, max_waiting=1)
        first = asyncio.create_task(download(limiter, "a", f"{server.url}/slow/a/1.jpg"))
        second = asyncio.create_task(download(limiter, "a", f"{server.url}/slow/a/2.jpg"))
        deadline = time.monotonic() + 10
        while limiter.pending("a") < 2:  # both taken in: one downloading, one waiting
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(DownloadsBusy) as info:
            await download(limiter, "a", f"{server.url}/slow/a/3.jpg")
        assert isinstance(info.value, InputRejected)  # the pipeline answers it like any refused input
        assert "2 pictures still downloading or waiting" in str(info.value)
        other = await download(limiter, "b", f"{server.url}/slow/b/1.jpg")  # another user is not held up
        assert other == jpeg_bytes()
        await asyncio.gather(first, second)
        assert sorted(server.hits) == ["/slow/a/1.jpg", "/slow/a/2.jpg", "/slow/b/1.jpg"]
        assert server.peak_user["a"] == 1
        assert await download(limiter, "a", f"{server.url}/slow/a/4.jpg") == jpeg_bytes()  # free again


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
async def test_a_cancelled_wait_gives_its_place_back() -> None:
    async with SlowServer(seconds=1.0).running() as server:
        limiter = DownloadLimiter(per_user=1, overall=16, max_waiting=1)
        first = asyncio.create_task(download(limiter, "a", f"{server.url}/slow/a/1.jpg"))
        waiting = asyncio.create_task(download(limiter, "a", f"{server.url}/slow/a/2.jpg"))
        deadline = time.monotonic() + 10
        while limiter.pending("a") < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert limiter.pending("a") == 1
        await first
        assert limiter.pending("a") == 0 and server.hits == ["/slow/a/1.jpg"]


def test_limits_come_from_the_settings() -> None:
    from bot.settings import Settings

    limiter = DownloadLimiter.from_settings(
        Settings(_env_file=None, max_downloads_per_user=1, max_downloads=5, max_downloads_waiting_per_user=0)
    )
    assert (limiter.per_user, limiter.overall, limiter.max_waiting) == (1, 5, 0)
    defaults = DownloadLimiter.from_settings(Settings(_env_file=None))
    assert (defaults.per_user, defaults.overall, defaults.max_waiting) == (2, 16, 8)
    built_in = DownloadLimiter.from_settings(None)
    assert (built_in.per_user, built_in.overall, built_in.max_waiting) == (2, 16, 8)


# --- shapes and hostile files, fetched ---------------------------------------------------------------------


async def test_a_link_to_a_picture_that_cannot_be_sent_back_is_refused() -> None:
    server = SlowServer()
    server.bodies = {"long.png": png_header(4000, 150), "dot.png": png_header(1, 1)}
    async with server.running():
        with pytest.raises(InputRejected, match="4000×150: too wide and short to send back"):
            await fetch_image(f"{server.url}/fixed/long.png", LOOPBACK_OK)
        with pytest.raises(InputRejected, match="1×1: too small"):
            await fetch_image(f"{server.url}/fixed/dot.png", LOOPBACK_OK)


async def test_a_hostile_gif_does_not_stall_the_event_loop() -> None:
    """The fetched bytes are identified (frames counted) on the image threads, and the count is bounded:
    a coroutine ticking every 10 ms meanwhile is never held up for long."""
    gif = hostile_gif(500_000)
    server = SlowServer()
    server.bodies = {"many.gif": gif}
    async with server.running(), loop_stalls() as stalls:
        fetched = await asyncio.gather(*(fetch_image(f"{server.url}/fixed/many.gif", LOOPBACK_OK) for _ in range(3)))
    assert fetched == [gif] * 3
    assert len(stalls) > 3 and max(stalls) < 0.5, max(stalls)
    from bot.images import identify

    assert identify(gif).frames == MAX_FRAMES_COUNTED
