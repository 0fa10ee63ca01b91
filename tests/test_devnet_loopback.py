"""devnet.loopback: the stand-ins listen on a loopback address only, and say so when asked for another."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from devnet.loopback import serve_loopback


async def test_an_app_is_served_on_loopback_at_the_url_returned() -> None:
    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner, url = await serve_loopback(app)
    try:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/ping") as resp:
            assert resp.status == 200 and await resp.text() == "pong"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
async def test_a_host_that_is_not_loopback_is_refused_before_anything_listens(host: str) -> None:
    with pytest.raises(ValueError, match="loopback address only"):
        await serve_loopback(web.Application(), host=host)
