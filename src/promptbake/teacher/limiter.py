"""Client-side rate limiting: RPM and TPM token buckets plus adaptive concurrency (AIMD).

Choice: a small token bucket of our own, not aiolimiter or asyncio-throttle. asyncio-throttle
cannot weigh a call by its tokens; aiolimiter can, but orders its waiters by amount, so a large
request starves behind small ones. Ours serves waiters strictly first come, first served, lets one
request larger than the bucket through when the bucket is full (it then runs into debt instead of
deadlocking), and can be corrected from the server's ``x-ratelimit-*`` headers and 429s.

The buckets refill continuously (as OpenAI's limits do) and hold only ``burst_s`` seconds of the
limit: the server usually tolerates a bigger burst than that, and the difference is the headroom
that absorbs network jitter, which is how we stay at the limit without hitting it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from promptbake.teacher.client import RateInfo

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

DEFAULT_BURST_S = 0.5


class TokenBucket:
    """``rate`` units a second, holding at most ``capacity``; the level may go negative (debt)."""

    def __init__(self, per_minute: float, burst_s: float, clock: Clock) -> None:
        self.clock = clock
        self.level = 0.0
        self.rate = self.capacity = 0.0
        self.stamp = clock()
        self.set_limit(per_minute, burst_s)
        self.level = self.capacity

    def set_limit(self, per_minute: float, burst_s: float) -> None:
        self.refill()
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = min(self.level, self.capacity)

    def refill(self) -> None:
        now = self.clock()
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` may be taken; an oversized amount needs only a full bucket."""
        self.refill()
        missing = min(amount, self.capacity) - self.level
        # a rounding crumb must not become a sleep too short to move the clock (a busy loop)
        return missing / self.rate if missing > 1e-9 * self.capacity else 0.0


class AdaptiveConcurrency:
    """A semaphore whose size follows AIMD between 1 and ``cap``, waking waiters FIFO.

    Additive increase: +1 slot per window of successes (+1/limit each). Multiplicative decrease:
    halve on a 429 or timeout, but only once per window — a failure of a request sent before the
    last decrease reflects the old concurrency and must not cut it again.
    """

    def __init__(self, cap: int, clock: Clock, *, decrease: float = 0.5) -> None:
        self.cap = cap
        self.limit = float(cap)
        self.inflight = 0
        self.decrease_factor = decrease
        self.clock = clock
        self.last_decrease = float("-inf")
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if not self._waiters and self.inflight < int(self.limit):
            self.inflight += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        self.inflight -= 1
        self._wake()

    def increase(self) -> None:
        if self.limit < self.cap:
            self.limit = min(float(self.cap), self.limit + 1.0 / self.limit)
            self._wake()

    def decrease(self, sent_at: float) -> None:
        if sent_at < self.last_decrease:
            return
        self.limit = max(1.0, self.limit * self.decrease_factor)
        self.last_decrease = self.clock()

    def _wake(self) -> None:
        while self._waiters and self.inflight < int(self.limit):
            future = self._waiters.popleft()
            if not future.done():
                self.inflight += 1
                future.set_result(None)


@dataclass
class Permit:
    """One admitted request: what it reserved and the bucket levels right after, for header sync."""

    tokens: int
    sent_at: float
    requests_left: float | None
    tokens_left: float | None
    client: Any = None  # set by a Fleet (endpoints.py): the endpoint's client this attempt goes to


class Limiter:
    """Admission control for the pool: ``acquire`` before each attempt, ``release`` after it."""

    def __init__(self, *, rpm: float | None = None, tpm: float | None = None, concurrency: int = 64,
                 burst_s: float = DEFAULT_BURST_S, adaptive: bool = True,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self.burst_s = burst_s
        self.adaptive = adaptive
        self.requests = TokenBucket(rpm, burst_s, clock) if rpm else None
        self.tokens = TokenBucket(tpm, burst_s, clock) if tpm else None
        self.concurrency = AdaptiveConcurrency(concurrency, clock)
        self.paused_until = float("-inf")
        self._lock = asyncio.Lock()  # FIFO: only the head waiter watches the buckets
        self._synced_at = {"requests": float("-inf"), "tokens": float("-inf")}

    async def acquire(self, tokens: int, model: str | None = None) -> Permit:
        """``model`` is for a :class:`~promptbake.teacher.endpoints.Fleet`, which routes by it; one
        endpoint serves whatever it is asked."""
        await self.concurrency.acquire()
        try:
            if self.requests is not None or self.tokens is not None or self.paused_until > self.clock():
                async with self._lock:
                    await self._wait_for_buckets(tokens)
        except BaseException:
            self.concurrency.release()
            raise
        return Permit(tokens=tokens, sent_at=self.clock(),
                      requests_left=self.requests.level if self.requests else None,
                      tokens_left=self.tokens.level if self.tokens else None)

    async def _wait_for_buckets(self, tokens: int) -> None:
        while True:
            pause = self.paused_until - self.clock()
            if pause > 0:
                await self.sleep(pause)
                continue
            wait = max(self.requests.wait_time(1) if self.requests else 0.0,
                       self.tokens.wait_time(tokens) if self.tokens else 0.0)
            if wait <= 0:
                break
            await self.sleep(wait)
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= tokens

    def release(self, permit: Permit) -> None:
        self.concurrency.release()

    def adjust(self, permit: Permit, actual: int) -> None:
        """Give back (or charge) the difference between the estimate and the billed usage."""
        if self.tokens is not None:
            self.tokens.refill()
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + permit.tokens - actual)

    def succeeded(self) -> None:
        if self.adaptive:
            self.concurrency.increase()

    def timed_out(self, permit: Permit) -> None:
        if self.adaptive:
            self.concurrency.decrease(permit.sent_at)

    def throttled(self, permit: Permit, retry_after: float) -> None:
        """A 429: nobody starts before the deadline, and the buckets restart from empty.

        The request itself waits ``retry_after`` in the pool; everyone else waits only until the
        same deadline — the server told us when capacity comes back, so a longer stall is waste.
        """
        self.paused_until = max(self.paused_until, self.clock() + retry_after)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill()
                bucket.level = min(bucket.level, 0.0)
        if self.adaptive:
            self.concurrency.decrease(permit.sent_at)

    def observe(self, permit: Permit, rate: RateInfo | None) -> None:
        """Follow the server's headers when they say it has less than we think.

        A lower advertised limit replaces ours (or gives us one when the user set none). A
        ``remaining`` below our level at send time means someone else is spending the same quota
        (another run, another key user): we take the difference out of our bucket, at most once per
        round trip so one shortfall reported by many answers is not subtracted many times.
        """
        if rate is None:
            return
        self.requests = self._sync("requests", self.requests, rate.limit_requests,
                                   rate.remaining_requests, permit.requests_left, permit.sent_at)
        self.tokens = self._sync("tokens", self.tokens, rate.limit_tokens,
                                 rate.remaining_tokens, permit.tokens_left, permit.sent_at)

    def _sync(self, kind: str, bucket: TokenBucket | None, limit: float | None,
              remaining: float | None, ours: float | None, sent_at: float) -> TokenBucket | None:
        if limit is not None and limit > 0:
            if bucket is None:
                return TokenBucket(limit, self.burst_s, self.clock)
            if limit < bucket.per_minute:
                bucket.set_limit(limit, self.burst_s)
        if bucket is None or remaining is None or ours is None:
            return bucket
        # a snapshot taken before the limit was lowered may exceed the new capacity: clamp it
        shortfall = min(ours, bucket.capacity) - remaining
        if shortfall > 0 and sent_at > self._synced_at[kind]:
            bucket.refill()
            bucket.level -= shortfall
            self._synced_at[kind] = self.clock()
        return bucket


def wait_hint(rate: RateInfo | None) -> float | None:
    """When a 429 carries no retry-after: the reset time of whichever quota is exhausted."""
    if rate is None:
        return None
    hints = [reset for remaining, reset in ((rate.remaining_requests, rate.reset_requests),
                                            (rate.remaining_tokens, rate.reset_tokens))
             if remaining is not None and remaining < 1 and reset is not None]
    return min(hints) if hints else None
