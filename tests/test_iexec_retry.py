"""The iExec client's one retry policy (iexec.retry): what it retries, its bounds, its delays.

Time is a fake clock that the fake sleep advances: nothing here waits for real.
"""

from __future__ import annotations

import pytest

from iexec.errors import ChainUnavailable
from iexec.retry import RetryPolicy, retry_async
from iexec.tx import with_retry


class FakeTime:
    """A clock that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky(Exception):
    pass


class GaveUp(Exception):
    pass


def failing(times: int, exc: type[BaseException] = Flaky, result: str = "done"):
    calls: list[int] = []

    async def op() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc("no answer")
        return result

    return op, calls


def give_up(exc: BaseException, attempts: int, waited: float) -> GaveUp:
    return GaveUp(f"gave up after {attempts} attempts in {waited:.2f}s: {exc}")


async def test_retries_what_it_is_told_until_success_with_growing_capped_delays() -> None:
    fake = FakeTime()
    op, calls = failing(5)
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=2.0, deadline_s=None, attempts=10, jitter=0.0)
    retried: list[tuple[int, float]] = []
    result = await retry_async(
        op,
        policy,
        retry_on=lambda e: isinstance(e, Flaky),
        give_up=give_up,
        on_retry=lambda e, n, d: retried.append((n, d)),
        sleep=fake.sleep,
        clock=fake.clock,
    )
    assert result == "done" and len(calls) == 6
    assert fake.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert retried == [(1, 0.5), (2, 1.0), (3, 2.0), (4, 2.0), (5, 2.0)]


async def test_an_error_it_is_not_told_to_retry_propagates_at_once() -> None:
    fake = FakeTime()
    op, calls = failing(3, exc=ValueError)
    with pytest.raises(ValueError, match="no answer"):
        await retry_async(
            op,
            RetryPolicy(),
            retry_on=lambda e: isinstance(e, Flaky),
            give_up=give_up,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    assert len(calls) == 1 and fake.sleeps == []


async def test_attempts_bound_gives_the_callers_typed_error() -> None:
    fake = FakeTime()
    op, calls = failing(100)
    policy = RetryPolicy(base_delay_s=0.1, deadline_s=None, attempts=4)
    with pytest.raises(GaveUp, match=r"after 4 attempts.*no answer") as raised:
        await retry_async(op, policy, retry_on=lambda e: True, give_up=give_up, sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 4 and len(fake.sleeps) == 3  # no wait after the last attempt
    assert raised.value.__cause__ is None


async def test_deadline_bound_never_sleeps_past_it() -> None:
    fake = FakeTime()
    op, calls = failing(1000)
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, deadline_s=20.0)
    with pytest.raises(GaveUp, match=r"in 20\.00s"):
        await retry_async(op, policy, retry_on=lambda e: True, give_up=give_up, sleep=fake.sleep, clock=fake.clock)
    assert sum(fake.sleeps) == pytest.approx(20.0)
    assert all(s <= 8.0 for s in fake.sleeps) and 5 <= len(calls) <= 12


async def test_jitter_only_shortens_delays_within_its_fraction() -> None:
    fake = FakeTime()
    draws = iter([0.0, 1.0, 0.5])
    op, _ = failing(3)
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=10.0, deadline_s=None, attempts=5, jitter=0.2)
    await retry_async(
        op,
        policy,
        retry_on=lambda e: True,
        give_up=give_up,
        sleep=fake.sleep,
        clock=fake.clock,
        rand=lambda: next(draws),
    )
    assert fake.sleeps == pytest.approx([1.0, 2.0 * 0.8, 4.0 * 0.9])
    assert policy.wait_s(5, rand=lambda: 1.0) == pytest.approx(10.0 * 0.8)  # capped, then jittered


async def test_no_wait_keeps_the_bounds_and_drops_the_delays() -> None:
    fake = FakeTime()
    op, calls = failing(100)
    policy = RetryPolicy(base_delay_s=0.5, deadline_s=None, attempts=3).no_wait()
    with pytest.raises(GaveUp):
        await retry_async(op, policy, retry_on=lambda e: True, give_up=give_up, sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 3 and fake.sleeps == [0.0, 0.0]


async def test_a_lambda_returning_an_awaitable_is_awaited_on_every_attempt() -> None:
    fake = FakeTime()
    op, calls = failing(2)
    result = await retry_async(
        lambda: op(),
        RetryPolicy(attempts=5, deadline_s=None),
        retry_on=lambda e: True,
        give_up=give_up,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    assert result == "done" and len(calls) == 3


def test_a_policy_without_a_bound_or_with_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="bound"):
        RetryPolicy(deadline_s=None, attempts=None)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay_s=-1)


async def test_chain_retry_retries_network_errors_only_and_ends_in_chain_unavailable() -> None:
    policy = RetryPolicy(base_delay_s=0.0, max_delay_s=0.0, deadline_s=None, attempts=3)
    op, calls = failing(100, exc=ConnectionRefusedError)
    with pytest.raises(ChainUnavailable, match=r"during eth_call .*3 attempts, last error ConnectionRefusedError"):
        await with_retry(op, policy, "eth_call")
    assert len(calls) == 3
    op, calls = failing(100, exc=KeyError)
    with pytest.raises(KeyError):
        await with_retry(op, policy, "eth_call")
    assert len(calls) == 1
