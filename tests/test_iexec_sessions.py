"""Chain connections are closed by whoever opened them, so no aiohttp session is left for the garbage
collector to report as "Unclosed client session" (the lines that used to end every test run)."""

from __future__ import annotations

import gc
from typing import Any

import aiohttp
import pytest

from iexec.hub import Hub
from iexec.tx import close, close_all, connect

pytestmark = pytest.mark.asyncio(loop_scope="session")


def open_sessions() -> set[int]:
    """Ids of the live aiohttp sessions not closed yet: each would print the warning when collected."""
    return {id(o) for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed}


async def test_a_hub_closes_the_connection_it_opened(chain: Any) -> None:
    before = open_sessions()
    async with Hub(chain.rpc_url, chain.deployment.hub) as hub:
        assert (await hub.domain()).chain_id == chain.deployment.chain_id
        assert len(open_sessions() - before) == 1
    assert open_sessions() - before == set()


async def test_a_hub_leaves_the_callers_connection_to_the_caller(chain: Any) -> None:
    before = open_sessions()
    w3 = connect(chain.rpc_url)
    async with Hub(None, chain.deployment.hub, w3=w3) as hub:
        await hub.domain()
    assert len(open_sessions() - before) == 1  # still the caller's, still usable
    assert await w3.eth.block_number >= 0
    await close(w3)
    assert open_sessions() - before == set()


async def test_close_all_closes_every_open_connection_and_they_still_work(chain: Any) -> None:
    before = open_sessions()
    connections = [connect(chain.rpc_url) for _ in range(3)]
    for w3 in connections:
        assert await w3.eth.block_number >= 0
    assert len(open_sessions() - before) == 3
    assert await close_all() >= 3
    assert open_sessions() - before == set()
    assert await connections[0].eth.block_number >= 0  # a closed connection opens a new session
    await close_all()
    assert open_sessions() - before == set()
