"""bot.intake: the address deny table, URL checks, and fetch_image against a local 127.0.0.1 server.

Only loopback is used here (with a settings object that allows it, or with the defaults that must refuse
it without ever connecting). Names resolving to private or metadata addresses are tested in
tests/test_intake_netns.py, inside a network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from PIL import Image

from bot.images import ImageLimits
from bot.intake import (
    FetchPolicy,
    InputRejected,
    _guarded_socket_factory,
    address_denial,
    check_url,
    fetch_image,
)
from bot.settings import Settings

# --- the address table --------------------------------------------------------------------------------------

DENIED = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("192.0.0.8", "reserved protocol"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),  # mapped forms are refused whatever they embed
    ("::ffff:169.254.169.254", "IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::a01:203", "NAT64"),  # 10.1.2.3
    ("64:ff9b::808:808", "NAT64"),
    ("64:ff9b:1::1", "NAT64"),
    ("2002:a01:203::1", "6to4"),  # embeds 10.1.2.3
    ("2002:808:808::1", "6to4"),  # deprecated, refused even when it embeds a public address
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "reserved protocol"),  # benchmarking
    ("2001:10::1", "reserved protocol"),  # ORCHID
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard"),
    ("5f00::1", "segment-routing"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("4000::1", "reserved"),  # outside the global unicast 2000::/3
    ("::2", "IPv4-compatible"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.128.0.1",
    "172.32.0.1",
    "192.169.0.1",
    "11.0.0.1",
    "223.255.255.254",
    "2606:4700:4700::1111",
    "2a00:1450:4007:80e::200e",
    "2001:4860:4860::8888",
    "2400:cb00::1",
]


@pytest.mark.parametrize(("address", "reason"), DENIED)
def test_denied_addresses(address: str, reason: str) -> None:
    denial = address_denial(address)
    assert denial is not None and reason in denial, (address, denial)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert address_denial(address) is None


def test_settings_open_only_loopback_and_private() -> None:
    assert address_denial("127.0.0.1", allow_loopback=True) is None
    assert address_denial("::1", allow_loopback=True) is None
    assert address_denial("10.1.2.3", allow_loopback=True) is not None
    assert address_denial("10.1.2.3", allow_private=True) is None
    assert address_denial("fd00::1", allow_private=True) is None
    everything = {"allow_loopback": True, "allow_private": True}
    for never in (
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "fe80::1",
        "224.0.0.1",
        "::",
    ):
        assert address_denial(never, **everything) is not None, never


def test_python_global_flag_is_not_trusted() -> None:
    """ipaddress calls some of these global; the table must not."""
    import ipaddress

    for addr in ("2002:a01:203::1", "64:ff9b::a01:203", "192.88.99.1"):
        assert address_denial(addr) is not None
    assert ipaddress.ip_address("64:ff9b::a01:203").is_global  # the reason for our own table


# --- URL checks (no network) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "example.com/a.jpg",
        "//example.com/a.jpg",
        "",
        "http://",
        "http:///a.jpg",
        "ws://example.com/a.jpg",
    ],
)
def test_non_http_urls_refused(url: str) -> None:
    with pytest.raises(InputRejected, match=r"link"):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://user:pass@example.com/a.jpg", "https://user@example.com/a.jpg", "http://:secret@example.com/a.jpg"],
)
def test_credentials_in_url_refused(url: str) -> None:
    with pytest.raises(InputRejected, match="user name or password"):
        check_url(url)


def test_too_long_url_refused() -> None:
    with pytest.raises(InputRejected, match="too long"):
        check_url("https://example.com/" + "a" * 3000)


def test_public_url_accepted() -> None:
    assert check_url("  https://Example.COM/cat.jpg?x=1 ").host == "example.com"


# --- a local image server --------------------------------------------------------------------------------


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares width x height pixels (a few hundred bytes on the wire)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


JPEG = jpeg_bytes()


def make_app(hits: list[str]) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    async def good(_: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><html><body>cat</body></html>", content_type="text/html")

    async def disguised(request: web.Request) -> web.Response:
        bodies = {
            "html": b"<!DOCTYPE html><html>nope</html>",
            "text": b"just some words",
            "svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
            "pdf": b"%PDF-1.7\n%\xe2\xe3",
            "bomb": png_bomb_header(),
        }
        return web.Response(body=bodies[request.match_info["kind"]], content_type="image/jpeg")

    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound("/good.jpg" if n == 0 else f"/redirect/{n - 1}")

    async def redirect_to(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        if request.match_info["kind"] == "declared":
            resp.content_length = 10**9
        await resp.prepare(request)
        while True:
            await resp.write(b"\xff" * 65536)
            await asyncio.sleep(0.5 if request.match_info["kind"] == "slow" else 0)

    async def gzipped(_: web.Request) -> web.Response:
        body = gzip.compress(b"\0" * 5_000_000)  # 5 kB on the wire, 5 MB inflated
        return web.Response(body=body, headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})

    app = web.Application(middlewares=[count])
    app.router.add_get("/good.jpg", good)
    app.router.add_get("/page", page)
    app.router.add_get("/disguised/{kind}", disguised)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/stream/{kind}", stream)
    app.router.add_get("/gzip", gzipped)
    return app


@contextlib.asynccontextmanager
async def image_server() -> AsyncIterator[SimpleNamespace]:
    """The server runs on the test's own loop (started inside each test, whatever the fixture loop scope)."""
    hits: list[str] = []
    runner = web.AppRunner(make_app(hits), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, hits=hits)
    finally:
        await runner.cleanup()


LOOPBACK_OK = FetchPolicy(allow_loopback=True, timeout=10.0, max_bytes=2_000_000)


async def rejected(url: str, limits: FetchPolicy | None = LOOPBACK_OK, **options: object) -> str:
    with pytest.raises(InputRejected) as info:
        await fetch_image(url, limits, **options)
    return str(info.value)


async def test_good_image_fetched() -> None:
    async with image_server() as server:
        assert await fetch_image(f"{server.url}/good.jpg", LOOPBACK_OK) == JPEG


async def test_not_found() -> None:
    async with image_server() as server:
        assert "404" in await rejected(f"{server.url}/nothing-here.jpg")


async def test_html_page_refused() -> None:
    async with image_server() as server:
        assert "web page" in await rejected(f"{server.url}/page")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("html", "not an image I can read (web page)"),
        ("text", "not an image I can read (text)"),
        ("svg", "(SVG)"),
        ("pdf", "(PDF)"),
        ("bomb", "too many pixels"),
    ],
)
async def test_content_must_be_an_image(kind: str, expected: str) -> None:
    async with image_server() as server:
        assert expected in await rejected(f"{server.url}/disguised/{kind}")


async def test_compressed_body_is_not_inflated() -> None:
    async with image_server() as server:
        assert "gzip archive" in await rejected(f"{server.url}/gzip", max_bytes=100_000)


@pytest.mark.slow  # over ~1 s: keeps the fast tier under a minute
@pytest.mark.timeout(60)  # hang guard only: without the deadline the endless stream would never end
async def test_endless_slow_stream_hits_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.intake")
    async with image_server() as server:
        message = await rejected(f"{server.url}/stream/slow", timeout=1.0, max_bytes=10**9)
        # the download's own deadline cut it (that message and log reason come from it alone), while the
        # server was streaming: the request reached it, and it never ends on its own
        assert message.startswith("The image took too long to download.")
        assert server.hits == ["/stream/slow"]
        assert "url refused host=127.0.0.1 reason=timeout" in [r.getMessage() for r in caplog.records]


async def test_too_big_by_header() -> None:
    async with image_server() as server:
        assert "too large" in await rejected(f"{server.url}/stream/declared")


async def test_too_big_by_stream() -> None:
    async with image_server() as server:
        assert "too large" in await rejected(f"{server.url}/stream/fast", max_bytes=300_000)


async def test_redirects_followed_within_the_limit() -> None:
    async with image_server() as server:
        # /redirect/n answers n + 1 redirects: 3 is the default limit
        assert await fetch_image(f"{server.url}/redirect/2", LOOPBACK_OK) == JPEG
        assert server.hits == ["/redirect/2", "/redirect/1", "/redirect/0", "/good.jpg"]


async def test_redirect_chain_too_long() -> None:
    async with image_server() as server:
        assert "redirects more than 3 times" in await rejected(f"{server.url}/redirect/3")
        assert "/good.jpg" not in server.hits
        assert "redirects more than 1 times" in await rejected(f"{server.url}/redirect/1", max_redirects=1)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg", "gopher://127.0.0.1:70/x"])
async def test_redirect_to_other_scheme_refused(target: str) -> None:
    async with image_server() as server:
        assert "http" in await rejected(f"{server.url}/redirect-to?to={target}")


async def test_redirect_with_credentials_refused() -> None:
    async with image_server() as server:
        from yarl import URL

        target = f"http://u:p@127.0.0.1:{server.port}/good.jpg"
        url = URL(f"{server.url}/redirect-to").with_query(to=target)
        assert "user name or password" in await rejected(str(url))


async def test_redirect_to_metadata_refused_even_with_loopback_allowed() -> None:
    async with image_server() as server:
        message = await rejected(f"{server.url}/redirect-to?to=http://169.254.169.254/latest/meta-data/")
        assert "link-local" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/good.jpg",
        "http://localhost:{port}/good.jpg",
        "http://LOCALHOST.:{port}/good.jpg",
        "http://[::1]:{port}/good.jpg",
        "http://0x7f.1:{port}/good.jpg",
        "http://2130706433:{port}/good.jpg",
        "http://127.1:{port}/good.jpg",
        "http://0177.0.0.1:{port}/good.jpg",
        "http://0:{port}/good.jpg",
        "http://0.0.0.0:{port}/good.jpg",
        "http://[::ffff:127.0.0.1]:{port}/good.jpg",
        "http://[::]:{port}/good.jpg",
        "http://foo.localhost:{port}/good.jpg",
    ],
)
async def test_defaults_refuse_loopback_without_connecting(url: str) -> None:
    async with image_server() as server:
        with pytest.raises(InputRejected, match="not to a public web server"):
            await fetch_image(url.format(port=server.port))
        assert server.hits == []


async def test_settings_without_loopback_refuse_it() -> None:
    async with image_server() as server:
        strict = Settings(_env_file=None, url_allow_loopback=False, url_allow_private=True)
        with pytest.raises(InputRejected, match="loopback"):
            await fetch_image(f"{server.url}/good.jpg", strict)
        assert server.hits == []


async def test_real_settings_object_is_understood() -> None:
    async with image_server() as server:
        settings = Settings(_env_file=None, url_allow_loopback=True)
        assert await fetch_image(f"{server.url}/good.jpg", settings) == JPEG
        defaults = Settings(_env_file=None)
        with pytest.raises(InputRejected):
            await fetch_image(f"{server.url}/good.jpg", defaults)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="allow_everything"):
        FetchPolicy.from_settings(None, allow_everything=True)
    with pytest.raises(TypeError, match="allow_everything"):
        FetchPolicy.of(LOOPBACK_OK, allow_everything=True)


def test_the_fetch_policy_comes_from_the_settings() -> None:
    assert FetchPolicy.from_settings(Settings(_env_file=None)) == FetchPolicy() == FetchPolicy.of(None)
    settings = Settings(
        _env_file=None,
        max_image_bytes=3_000_000,
        max_image_pixels=4_000_000,
        max_image_aspect=5.0,
        min_image_side=6,
        url_fetch_timeout=7.0,
        url_max_redirects=1,
        url_allow_loopback=True,
        url_allow_private=True,
    )
    policy = FetchPolicy.of(settings)
    assert policy == FetchPolicy(
        max_bytes=3_000_000,
        max_pixels=4_000_000,
        max_aspect=5.0,
        min_side=6,
        timeout=7.0,
        max_redirects=1,
        allow_loopback=True,
        allow_private=True,
    )
    assert policy.image_limits() == ImageLimits.from_settings(settings)  # what the download's header check uses
    assert FetchPolicy.of(settings, timeout=2.0, allow_private=False) == replace(
        policy, timeout=2.0, allow_private=False
    )
    assert FetchPolicy.of(policy) is policy
    with pytest.raises(ValueError, match="max_redirects"):
        FetchPolicy.of(Settings(_env_file=None, url_max_redirects=11))  # the settings allow it, a download not


async def test_logs_show_the_host_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with image_server() as server:
        await fetch_image(f"{server.url}/good.jpg?key=hunter2-secret", LOOPBACK_OK)
        await rejected(f"{server.url}/page?token=hunter2-secret")
    messages = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("bot."))
    assert "url fetched host=127.0.0.1" in messages
    assert "hunter2" not in messages and "/good.jpg" not in messages


def test_every_socket_is_checked_before_it_connects() -> None:
    """Defence in depth below the resolver: the connector's socket factory refuses denied peers."""
    factory = _guarded_socket_factory(FetchPolicy())
    for address in ("10.0.0.1", "169.254.169.254", "::1"):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with pytest.raises(OSError, match="address"):
            factory((family, socket.SOCK_STREAM, 6, "", (address, 80)))
    factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))).close()  # made, not connected


async def test_https_certificate_is_verified(tmp_path: Path) -> None:
    """A self-signed server is refused: TLS verification is on (and SNI/Host follow the URL's name)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hits: list[str] = []
    runner = web.AppRunner(make_app(hits), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # a started site has a server
    try:
        assert "certificate" in await rejected(f"https://127.0.0.1:{port}/good.jpg")
    finally:
        await runner.cleanup()
    assert hits == []
