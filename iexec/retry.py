"""The one retry policy of the iExec client: bounded exponential backoff with jitter, run by tenacity.

A `RetryPolicy` says how long to wait between attempts and when to give up; `retry_async` runs an operation
under it. The caller decides which errors are worth another attempt (`retry_on`, a predicate over the
exception: "the node did not answer" is retried, "the node said no" is not), which typed error to raise on
giving up (`give_up`), and logs each retry with its own `event=... key=value` line (`on_retry`).

Delays start at `base_delay_s`, double up to `max_delay_s`, and each one is shortened by a random fraction of
at most `jitter` (clients that failed together do not retry in lockstep). The policy gives up after
`attempts` attempts and/or once `deadline_s` seconds have passed since the first one; no delay runs past the
deadline. Tests never wait for real: `policy.no_wait()` makes every delay zero, and `sleep`, `clock` and
`rand` are injectable.

Why tenacity and not a loop of our own: it is typed and maintained, runs sync (the ledger uses it directly)
and async code, takes an injectable sleep, and accepts plain callables as stop and wait rules (so the
deadline uses our clock). Its cost, measured on this machine at ~20 us per call (sync) and ~30 us (async),
is nothing next to the HTTP or RPC round trip it wraps.

This module must never retry an error `retry_on` does not accept, nor retry without a bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import tenacity

T = TypeVar("T")

#: (last error, attempts made, seconds since the first attempt) -> the error to raise instead.
GiveUp = Callable[[BaseException, int, float], BaseException]
#: (error, number of the attempt that failed, seconds to wait before the next one).
OnRetry = Callable[[BaseException, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from `base_delay_s`, doubling up to `max_delay_s`, each delay jittered down by up to `jitter`
    (a fraction); give up after `attempts` attempts and/or `deadline_s` seconds (at least one is set)."""

    base_delay_s: float = 0.2
    max_delay_s: float = 3.0
    deadline_s: float | None = 60.0
    attempts: int | None = None
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.deadline_s is None and self.attempts is None:
            raise ValueError("a retry policy needs a bound: deadline_s or attempts")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or (self.deadline_s is not None and self.deadline_s < 0):
            raise ValueError("delays and deadline must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter is a fraction between 0 and 1")

    def delay(self, failed: int) -> float:
        """The wait after the `failed`-th failed attempt (1 = the first), before jitter and deadline."""
        return min(self.base_delay_s * 2 ** (failed - 1), self.max_delay_s)

    def wait_s(self, failed: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered wait after the `failed`-th failed attempt (no deadline applied): for a supervising
        loop that never gives up on its own (a job driver, a watcher) but should back off like everyone."""
        return self.delay(failed) * (1.0 - self.jitter * rand())

    def no_wait(self) -> RetryPolicy:
        """The same bounds with every delay zero (tests)."""
        return replace(self, base_delay_s=0.0, max_delay_s=0.0)


async def retry_async(
    op: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: Callable[[BaseException], bool],
    give_up: GiveUp,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> T:
    """Run `op` until it returns, an error `retry_on` refuses propagates (at once, unchanged), or the policy
    gives up: then the error `give_up` builds is raised, unchained (its message names the last error)."""
    started = clock()

    def stop(state: tenacity.RetryCallState) -> bool:
        if policy.attempts is not None and state.attempt_number >= policy.attempts:
            return True
        return policy.deadline_s is not None and clock() - started >= policy.deadline_s

    def wait(state: tenacity.RetryCallState) -> float:
        delay = policy.wait_s(state.attempt_number, rand)
        if policy.deadline_s is not None:
            delay = min(delay, max(0.0, policy.deadline_s - (clock() - started)))
        return delay

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and exc is not None:
            on_retry(exc, state.attempt_number, state.upcoming_sleep)

    retrying = tenacity.AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(retry_on),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=False,
    )

    async def attempt() -> T:
        # tenacity calls a callable that is not a coroutine function without awaiting it; `op` is often a
        # lambda returning an awaitable (web3's `fn.call()`), so it is awaited here.
        return await op()

    try:
        return await retrying(attempt)
    except tenacity.RetryError as gave_up:
        last = gave_up.last_attempt.exception()
        assert last is not None  # tenacity gives up only after a failed attempt
        raise give_up(last, gave_up.last_attempt.attempt_number, clock() - started) from None
