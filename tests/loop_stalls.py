"""How long the event loop was held up: a coroutine that wants to wake every 10 ms records how late it was.

    async with loop_stalls() as stalls:
        await work_that_must_not_block()
    assert max(stalls) < what_blocking_would_cost / 2

A behaviour check (no handler may hold every other user up), not a speed target: the bound is half of what
the work would stall the loop for if it ran there (a lock's hold, one decode measured in the test), so a
loaded machine, which slows both, does not trip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

TICK_S = 0.01


@contextlib.asynccontextmanager
async def loop_stalls(tick_s: float = TICK_S) -> AsyncIterator[list[float]]:
    """Yield the list of the ticker's delays (seconds late per tick), filled until the block ends."""
    stalls: list[float] = []
    done, ticking = asyncio.Event(), asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(tick_s)  # the ticker's period: what it measures, not a synchronisation
            stalls.append(time.monotonic() - before - tick_s)
            ticking.set()

    ticker = asyncio.create_task(tick())
    await ticking.wait()  # the ticker runs before the work starts
    try:
        yield stalls
    finally:
        done.set()
        await ticker
