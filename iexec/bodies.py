"""Whole HTTP bodies, read with a size cap.

    body = await read_capped(resp, 8 << 20, "market reply")     # raises BodyTooLarge past 8 MiB

aiohttp's `StreamReader.read(n)` returns *at most* n bytes: whatever chunk arrived next (often 64 KiB), not
n bytes. A body must therefore be read in a loop until its end; and a body from the network must be refused
once it passes the caller's cap, without reading the rest. A Content-Length above the cap is refused before
reading anything.
"""

from __future__ import annotations

import aiohttp

from iexec.errors import BodyTooLarge

__all__ = ["BodyTooLarge", "read_at_most", "read_capped"]

_STEP = 1 << 20


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read `stream` until its end or until `limit` bytes, whichever comes first."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await stream.read(min(limit - len(buf), _STEP))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def read_capped(resp: aiohttp.ClientResponse, cap: int, what: str = "reply") -> bytes:
    """The whole body of `resp`; raises BodyTooLarge when it is (or announces to be) larger than `cap`.

    Transport errors (aiohttp.ClientError, asyncio.TimeoutError) propagate unchanged.
    """
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyTooLarge(f"{what} announces {resp.content_length} bytes, more than the {cap} bytes allowed")
    body = await read_at_most(resp.content, cap + 1)
    if len(body) > cap:
        raise BodyTooLarge(f"{what} is larger than the {cap} bytes allowed")
    return body
