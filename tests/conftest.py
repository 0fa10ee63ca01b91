"""Shared pytest set-up: fixture modules of each area are registered here, and every test's chain
connections are closed when it ends."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from iexec.tx import close_all

pytest_plugins: list[str] = [
    "tests.fixtures_telegram",
    "tests.fixtures_worker",
    "tests.fixtures_chain",
    "tests.fixtures_market",
    "tests.fixtures_devnet",
    "tests.fixtures_bot",
    "tests.fixtures_e2e",
]


@pytest.fixture(autouse=True)
async def close_chain_connections() -> AsyncIterator[None]:
    """After each test (and its other fixtures), close the aiohttp sessions of every `iexec.tx.connect()`
    connection still alive: tests build Hubs, senders and watchers without an owner that closes them, and
    each session left open is an "Unclosed client session" error when it is garbage-collected."""
    yield
    await close_all()
