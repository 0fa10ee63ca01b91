"""bot.input_server: publish, fetch, expire, revoke, forget and restore job inputs over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from yarl import URL

from bot.errors import InputsError
from bot.input_server import InputServer

URL_RE = re.compile(r"http://127\.0\.0\.1:\d+/in/([A-Za-z0-9_-]{43})/input\.jpg")
DATA = b"\xff\xd8\xff\xe0" + b"pretend jpeg" * 100


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def get(url: str | URL, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_publish_and_fetch(tmp_path: Path) -> None:
    async with InputServer(tmp_path) as server:
        url = server.publish("job-1", DATA, ttl=600, user_id=7)
        assert URL_RE.fullmatch(url), url
        status, body, headers = await get(url)
        assert (status, body) == (200, DATA)
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["Cache-Control"] == "no-store"
        assert (await get(url, "HEAD"))[0] == 200
        png = server.publish("job-2", b"\x89PNG....", ttl=600, name="input.png")
        assert (await get(png))[2]["Content-Type"] == "image/png"
        assert server.published("job-1") is not None and server.published("nope") is None


async def test_tokens_are_unguessable_and_nothing_is_listed(tmp_path: Path) -> None:
    async with InputServer(tmp_path) as server:
        urls = {server.publish(f"job-{i}", DATA, ttl=600) for i in range(20)}
        tokens = {URL_RE.fullmatch(u).group(1) for u in urls}  # type: ignore[union-attr]  # no match fails the test either way
        assert len(tokens) == 20  # fresh 256-bit token each time
        url = URL(next(iter(urls)))
        token = url.parts[2]
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        base = URL(server.base_url)
        for path in (
            f"/in/{flipped}/input.jpg",
            f"/in/{token}/other.jpg",
            f"/in/{token}/",
            f"/in/{token}",
            "/in/",
            "/in",
            "/",
            f"/in/{token[:20]}/input.jpg",
            f"/in/{token}/input.jpg/..",
            "/in/../input.jpg",
        ):
            status, body, _ = await get(base.with_path(path, encoded=True))
            assert status == 404, path
            assert DATA not in body
        assert (await get(url))[0] == 200


async def test_expiry(tmp_path: Path) -> None:
    clock = Clock()
    async with InputServer(tmp_path, clock=clock) as server:
        url = server.publish("job-1", DATA, ttl=60)
        clock.now += 59
        assert (await get(url))[0] == 200
        clock.now += 2
        assert (await get(url))[0] == 404
        assert list(tmp_path.iterdir()) == []  # the file is deleted, not only hidden
        other = server.publish("job-2", DATA, ttl=10)
        clock.now += 11
        assert server.purge_expired() == 1
        assert (await get(other))[0] == 404


async def test_revoke_and_republish(tmp_path: Path) -> None:
    async with InputServer(tmp_path) as server:
        first = server.publish(42, DATA, ttl=600)
        second = server.publish(42, DATA + b"v2", ttl=600)
        assert (await get(first))[0] == 404  # a job has one live URL
        assert (await get(second))[1] == DATA + b"v2"
        assert server.revoke(42) is True
        assert (await get(second))[0] == 404
        assert server.revoke(42) is False
        assert list(tmp_path.iterdir()) == []


async def test_forget_user(tmp_path: Path) -> None:
    async with InputServer(tmp_path) as server:
        mine = [server.publish(f"a{i}", DATA, ttl=600, user_id=1) for i in range(3)]
        theirs = server.publish("b", DATA, ttl=600, user_id=2)
        assert server.forget(1) == 3
        for url in mine:
            assert (await get(url))[0] == 404
        assert (await get(theirs))[0] == 200
        assert len(list(tmp_path.iterdir())) == 2  # one .bin + one .json left


async def test_restore_after_restart(tmp_path: Path) -> None:
    clock = Clock()
    async with InputServer(tmp_path, clock=clock) as server:
        kept = URL(server.publish("running", DATA, ttl=3600, user_id=5))
        short = URL(server.publish("short", DATA, ttl=30))
    (tmp_path / "stray.bin.tmp").write_bytes(b"half a write")
    (tmp_path / ("0" * 64 + ".bin")).write_bytes(b"orphan")
    clock.now += 60
    restarted = InputServer(tmp_path, clock=clock)
    assert restarted.published("running") is not None and restarted.published("short") is None
    async with restarted as server:
        base = URL(server.base_url)
        assert (await get(base.with_path(kept.path)))[1] == DATA
        assert (await get(base.with_path(short.path)))[0] == 404
        assert server.forget(5) == 1
    assert list(tmp_path.iterdir()) == []


async def test_no_token_in_logs_or_on_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with InputServer(tmp_path) as server:
        url = server.publish("job-9", DATA, ttl=600)
        token = URL(url).parts[2]
        await get(url)
        await get(URL(url).with_name("wrong.jpg"))
        server.revoke("job-9")
        server.publish("job-10", DATA, ttl=600)
    assert caplog.records, "the server logs its events"
    assert all(token not in r.getMessage() for r in caplog.records)
    assert any("event=input_served job=job-9" in r.getMessage() for r in caplog.records)
    for path in tmp_path.iterdir():
        assert token.encode() not in path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) & 0o077 == 0 or os.getuid() == 0


async def test_public_url_and_settings(tmp_path: Path) -> None:
    settings = SimpleNamespace(
        data_dir=tmp_path, inputs_listen="127.0.0.1", inputs_port=0, inputs_public_url="https://inputs.example.org/seg/"
    )
    server = InputServer.from_settings(settings)
    url = server.publish("j", DATA, ttl=60)
    assert re.fullmatch(r"https://inputs\.example\.org/seg/in/[A-Za-z0-9_-]{43}/input\.jpg", url)
    assert (tmp_path / "inputs").is_dir()


async def test_bad_arguments(tmp_path: Path) -> None:
    server = InputServer(tmp_path)
    with pytest.raises(InputsError, match="not started"):
        server.publish("j", DATA, ttl=60)
    async with server:
        for name in ("../x.jpg", "a/b.jpg", "", ".hidden", "x" * 80):
            with pytest.raises(InputsError, match="bad input name"):
                server.publish("j", DATA, ttl=60, name=name)
        for ttl in (0, -1, 10**9):
            with pytest.raises(InputsError, match="ttl"):
                server.publish("j", DATA, ttl=ttl)
        with pytest.raises(InputsError, match="empty"):
            server.publish("j", b"", ttl=60)


async def test_port_in_use(tmp_path: Path) -> None:
    async with InputServer(tmp_path / "a") as first:
        port = URL(first.base_url).port
        with pytest.raises(InputsError, match="cannot listen"):
            await InputServer(tmp_path / "b", port=port).start()


async def test_expired_files_are_swept_without_a_request(tmp_path: Path) -> None:
    import asyncio

    clock = Clock()
    async with InputServer(tmp_path, clock=clock, sweep_interval=0.02) as server:
        server.publish("job-1", DATA, ttl=5)
        clock.now += 6
        for _ in range(100):
            if not list(tmp_path.iterdir()):
                break
            await asyncio.sleep(0.02)
        assert list(tmp_path.iterdir()) == []
