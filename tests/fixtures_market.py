"""Test helpers for the market and results tests: serve a tiny aiohttp app on 127.0.0.1, build zip archives.

`serve(app)` is how a test stands up a misbehaving gateway or market on loopback; `market` is the market
stand-in over the `chain` fixture. Nothing here ever binds anything but 127.0.0.1.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free 127.0.0.1 port for the duration of the block; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def make_zip(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    """A zip with the given files (names used verbatim, even hostile ones) and symlink entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return buf.getvalue()


def zero_bomb(name: str = "iexec_out/zeros.bin", gib: int = 1) -> bytes:
    """A valid zip holding `gib` GiB of zeros in about 1 MiB, built in well under a second.

    Each MiB of zeros is deflated once after a full flush, so the same compressed block can be repeated.
    """
    mib = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(mib) + comp.flush(zlib.Z_FULL_FLUSH)
    count = 1024 * gib
    data = block * count + comp.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    size = count << 20
    raw = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(raw), 0)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        (3 << 8) | 20,
        20,
        0,
        8,
        0,
        0x21,
        crc,
        len(data),
        size,
        len(raw),
        0,
        0,
        0,
        0,
        0o100644 << 16,
        0,
    )
    body = local + raw + data
    cd = central + raw
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), len(body), 0)
    return body + cd + eocd


@pytest.fixture
async def market(chain):
    """The market stand-in over a fresh chain (session event loop); its URL is `.base_url`."""
    from devnet.market import MarketStandIn

    async with MarketStandIn(
        chain_id=chain.deployment.chain_id, rpc_url=chain.rpc_url, hub=chain.deployment.hub
    ) as stand_in:
        yield stand_in
