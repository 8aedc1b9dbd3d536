"""Limiter arithmetic on a fake clock: buckets, FIFO order, header sync, 429 pauses, AIMD."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from promptbake.teacher.client import RateInfo
from promptbake.teacher.limiter import AdaptiveConcurrency, Limiter, Permit, wait_hint


class FakeClock:
    """Time only moves when someone sleeps; only the limiter's head waiter sleeps, so this is
    exactly the schedule the limiter asks for."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **kwargs: Any) -> Limiter:
    return Limiter(clock=clock, sleep=clock.sleep, **kwargs)


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


async def acquire_times(lim: Limiter, clock: FakeClock, amounts: list[int]) -> list[float]:
    """Acquire one after another (releasing at once); when did each get through?"""
    times = []
    for amount in amounts:
        lim.release(await lim.acquire(amount))
        times.append(clock.now)
    return times


def test_rpm_allows_the_burst_then_spaces_requests():
    clock = FakeClock()
    lim = limiter(clock, rpm=60, burst_s=3)  # 1 a second, bucket of 3
    times = run(lambda: acquire_times(lim, clock, [1] * 6))
    assert times == pytest.approx([0, 0, 0, 1, 2, 3])


def test_tpm_weighs_requests_by_tokens():
    clock = FakeClock()
    lim = limiter(clock, tpm=6000, burst_s=1)  # 100 tokens a second, bucket of 100
    times = run(lambda: acquire_times(lim, clock, [80, 80, 10, 100]))
    # 80 fits; the next 80 waits for 60 more (0.6 s); 10 waits 0.1 s; 100 needs a full bucket.
    assert times == pytest.approx([0, 0.6, 0.7, 1.7])


def test_request_larger_than_the_bucket_passes_when_full_and_leaves_debt():
    clock = FakeClock()
    lim = limiter(clock, tpm=6000, burst_s=1)
    times = run(lambda: acquire_times(lim, clock, [500, 1]))
    assert times == pytest.approx([0, 4.01])  # debt of 400 tokens, then 1 more
    assert lim.tokens is not None and lim.tokens.level == pytest.approx(0)


def test_waiters_are_served_first_come_first_served():
    """aiolimiter orders waiters by amount, so a big request starves; ours keeps arrival order."""
    clock = FakeClock()
    lim = limiter(clock, tpm=6000, burst_s=1)
    order: list[str] = []

    async def one(name: str, amount: int) -> None:
        lim.release(await lim.acquire(amount))
        order.append(name)

    async def go() -> None:
        await lim.acquire(100)  # empty the bucket
        await asyncio.gather(one("big", 100), *(one(f"small{i}", 5) for i in range(5)))

    run(go)
    assert order == ["big", "small0", "small1", "small2", "small3", "small4"]


def test_adjust_returns_unused_tokens():
    clock = FakeClock()
    lim = limiter(clock, tpm=6000, burst_s=1)

    async def go() -> list[float]:
        permit = await lim.acquire(100)
        lim.adjust(permit, actual=30)  # the answer was shorter than max_tokens
        return await acquire_times(lim, clock, [70, 1])

    assert run(go) == pytest.approx([0, 0.01])


def test_429_pauses_everyone_until_the_deadline_and_no_longer():
    clock = FakeClock()
    lim = limiter(clock, rpm=600, burst_s=1)  # 10 a second, bucket of 10

    async def go() -> list[float]:
        permit = await lim.acquire(1)
        lim.release(permit)
        lim.throttled(permit, retry_after=0.5)
        return await acquire_times(lim, clock, [1] * 7)

    # paused until 0.5 s; the drained bucket refilled 5 requests meanwhile, then 10 a second
    assert run(go) == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7])


def test_server_limit_lower_than_ours_wins_and_creates_buckets():
    clock = FakeClock()
    lim = limiter(clock, rpm=6000, burst_s=1)
    permit = Permit(tokens=1, sent_at=0.0, requests_left=99.0, tokens_left=None)
    lim.observe(permit, RateInfo(limit_requests=600, limit_tokens=60_000))
    assert lim.requests is not None and lim.requests.rate == pytest.approx(10)
    assert lim.tokens is not None and lim.tokens.rate == pytest.approx(1000)
    lim.observe(permit, RateInfo(limit_requests=1200))  # higher than ours: ignored
    assert lim.requests.rate == pytest.approx(10)


def test_remaining_below_ours_is_taken_out_once_per_round_trip():
    clock = FakeClock()
    lim = limiter(clock, rpm=600, burst_s=1)

    async def go() -> None:
        first = await lim.acquire(1)
        second = await lim.acquire(1)
        assert lim.requests is not None and lim.requests.level == pytest.approx(8)
        # someone else spent the quota: the server had 3 left where we thought 9 (and 8)
        lim.observe(first, RateInfo(remaining_requests=3))
        assert lim.requests.level == pytest.approx(2)
        lim.observe(second, RateInfo(remaining_requests=2))  # same shortfall, seen again
        assert lim.requests.level == pytest.approx(2)
        clock.now += 0.05
        third = await lim.acquire(1)  # sent after the sync: a new shortfall counts
        lim.observe(third, RateInfo(remaining_requests=0))
        assert lim.requests.level == pytest.approx(0)

    run(go)


def test_remaining_above_ours_changes_nothing():
    clock = FakeClock()
    lim = limiter(clock, rpm=600, burst_s=1)
    permit = Permit(tokens=1, sent_at=0.0, requests_left=9.0, tokens_left=None)
    lim.observe(permit, RateInfo(limit_requests=600, remaining_requests=590))
    assert lim.requests is not None and lim.requests.level == pytest.approx(10)


def test_wait_hint_uses_the_exhausted_quota_reset():
    assert wait_hint(None) is None
    assert wait_hint(RateInfo(remaining_requests=5, reset_requests=1.0)) is None
    assert wait_hint(RateInfo(remaining_requests=0, reset_requests=1.5,
                              remaining_tokens=10, reset_tokens=0.2)) == 1.5


def test_aimd_halves_once_per_window_and_grows_by_one_per_window():
    clock = FakeClock()
    gate = AdaptiveConcurrency(16, clock)
    clock.now = 1.0
    gate.decrease(sent_at=0.5)
    assert gate.limit == 8
    gate.decrease(sent_at=0.9)  # sent before the cut: the cut already answered it
    assert gate.limit == 8
    clock.now = 2.0
    gate.decrease(sent_at=1.5)
    assert gate.limit == 4
    for _ in range(4):  # one window of successes at 4 → 5
        gate.increase()
    assert gate.limit == pytest.approx(5, abs=0.1)
    for _ in range(1000):
        gate.increase()
    assert gate.limit == 16  # never above the cap


def test_aimd_never_goes_below_one():
    clock = FakeClock()
    gate = AdaptiveConcurrency(4, clock)
    for step in range(10):
        clock.now = step + 1
        gate.decrease(sent_at=step + 0.5)
    assert gate.limit == 1


def test_concurrency_gate_holds_back_beyond_the_limit_and_wakes_in_order():
    clock = FakeClock()
    lim = limiter(clock, concurrency=2)
    admitted: list[int] = []

    async def go() -> None:
        permits = [await lim.acquire(1), await lim.acquire(1)]

        async def wait(i: int) -> None:
            permits.append(await lim.acquire(1))
            admitted.append(i)

        waiters = [asyncio.create_task(wait(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert admitted == []
        lim.release(permits[0])
        lim.release(permits[1])
        await asyncio.sleep(0)
        assert admitted == [0, 1]
        lim.release(permits[2])
        await asyncio.gather(*waiters)

    run(go)
    assert admitted == [0, 1, 2]


def test_429_and_timeouts_shrink_concurrency_success_grows_it():
    clock = FakeClock()
    lim = limiter(clock, concurrency=8)

    async def go() -> None:
        permit = await lim.acquire(1)
        lim.release(permit)
        clock.now = 1.0
        lim.throttled(permit, retry_after=0.0)
        assert lim.concurrency.limit == 4
        clock.now = 2.0
        later = await lim.acquire(1)
        lim.release(later)
        lim.timed_out(later)
        assert lim.concurrency.limit == 2
        lim.succeeded()
        assert lim.concurrency.limit == 2.5

    run(go)


def test_non_adaptive_limiter_keeps_its_concurrency():
    clock = FakeClock()
    lim = limiter(clock, concurrency=8, adaptive=False)
    permit = Permit(tokens=1, sent_at=0.0, requests_left=None, tokens_left=None)
    lim.throttled(permit, retry_after=0.0)
    lim.timed_out(permit)
    assert lim.concurrency.limit == 8


def test_snapshot_from_before_a_lowered_limit_is_clamped_to_the_new_bucket():
    """A client told 10× the real limit learns it from the first answer; the bucket level it
    recorded at send time belongs to the old, bigger bucket and must not put us deep in debt."""
    clock = FakeClock()
    lim = limiter(clock, rpm=12_000, burst_s=0.5)  # bucket of 100
    permit = Permit(tokens=1, sent_at=0.0, requests_left=99.0, tokens_left=None)
    lim.observe(permit, RateInfo(limit_requests=1200, remaining_requests=0))
    assert lim.requests is not None
    assert lim.requests.capacity == 10
    assert lim.requests.level == pytest.approx(0)  # not 10 - 99
