"""The async worker pool: jobs in, outcomes out, through the limiter, with retries and a budget.

It knows nothing about steps, cells or the store: the pipeline feeds it :class:`Job` objects from
any (async) iterator and gets one :class:`Outcome` per finished job through ``sink``. Jobs are
pulled lazily, one per idle worker, so a million-request run holds at most ``concurrency`` jobs in
memory. Every attempt, paid or not, is reported in the outcome so the store can account for it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from promptbake import errors
from promptbake.teacher.client import AttemptError, ChatClient, ChatResult, RateLimited
from promptbake.teacher.limiter import Limiter, wait_hint

CostFn = Callable[[str, int, int], float]


@dataclass
class Job:
    id: str
    body: dict[str, Any]  # the full request body including the model; never the key
    est_tokens: int  # what TPM reserves: estimated prompt + max tokens × n
    check: Callable[[ChatResult], Any] | None = None  # raises errors.ResponseRejected to retry
    reseed: bool = False  # after a rejection, retry with a different "seed"


@dataclass
class Attempt:
    """One HTTP attempt. ``raw`` keeps the content the check rejected; ``cost`` is what it billed."""

    number: int
    status: int | None
    error_kind: str | None
    error: str | None
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    raw: str | None = None
    seed: int | None = None


@dataclass
class Outcome:
    """A finished job. ``abandoned`` means it was cut short (budget, 401, cancellation), not that it
    failed: its paid attempts must be stored, and the job stays pending for the next run."""

    job: Job
    ok: bool
    result: ChatResult | None
    parsed: Any
    attempts: list[Attempt]
    error: str | None
    abandoned: bool = False


@dataclass
class PoolStats:
    done: int = 0
    failed: int = 0
    abandoned: int = 0
    attempts: int = 0
    retries: int = 0
    throttled: int = 0  # 429s received
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    elapsed: float = 0.0
    stopped_for_budget: bool = False
    endpoints: dict[str, Any] = field(default_factory=dict)  # per endpoint, when a Fleet ran it

    @property
    def per_second(self) -> float:
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class _Budget:
    limit: float | None
    spent: float = 0.0
    reserved: float = 0.0

    def reserve(self, worst: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            return False
        self.reserved += worst
        return True


@dataclass
class _JobRun:
    """Per-job retry state."""

    job: Job
    attempts: list[Attempt] = field(default_factory=list)
    rejections: int = 0

    @property
    def body(self) -> dict[str, Any]:
        body = self.job.body
        if self.job.reseed and self.rejections and isinstance(body.get("seed"), int):
            return {**body, "seed": body["seed"] + self.rejections}
        return body


class Pool:
    def __init__(self, client: ChatClient, limiter: Limiter, *, max_attempts: int, cost: CostFn,
                 max_cost: float | None = None, progress: Callable[[Outcome], None] | None = None,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0) -> None:
        self.client = client
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.cost = cost
        self.progress = progress
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stats = PoolStats()  # live: progress bars read it
        self._budget = _Budget(max_cost)
        self._stopping = False

    async def run(self, jobs: AsyncIterator[Job] | Iterable[Job],
                  sink: Callable[[Outcome], Awaitable[None]]) -> PoolStats:
        """Run every job; return when all are done, or the budget stopped us.

        A fatal error (:class:`errors.AuthError`, an exhausted quota) or an exception from ``sink``
        cancels everything in flight and is re-raised: every further request would be wasted.
        """
        started = time.perf_counter()
        pull = _puller(jobs)
        workers = [asyncio.create_task(self._worker(pull, sink))
                   for _ in range(self.limiter.concurrency.cap)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            failure = next((t.exception() for t in done if t.exception() is not None), None)
            if failure is not None:
                raise failure
        finally:
            for task in workers:
                task.cancel()
            # interrupted workers hand their paid attempts to the sink before we return or raise
            await asyncio.gather(*workers, return_exceptions=True)
            self.stats.elapsed = time.perf_counter() - started
        return self.stats

    async def _worker(self, pull: Callable[[], Awaitable[Job | None]],
                      sink: Callable[[Outcome], Awaitable[None]]) -> None:
        while not self._stopping:
            job = await pull()
            if job is None or self._stopping:
                return
            if not self._budget.reserve(self._worst_cost(job)):
                self._stopping = True
                self.stats.stopped_for_budget = True
                return
            run = _JobRun(job)
            try:
                outcome = await self._run_job(run)
            except BaseException:
                # Cancelled (Ctrl-C, or another worker hit a 401) or our own 401: answers this
                # job already paid for (rejected ones) must still reach the store.
                if any(attempt.status == 200 for attempt in run.attempts):
                    await self._finish(Outcome(job, False, None, None, run.attempts,
                                               "interrupted before the job finished",
                                               abandoned=True), sink)
                raise
            await self._finish(outcome, sink)

    async def _finish(self, outcome: Outcome, sink: Callable[[Outcome], Awaitable[None]]) -> None:
        self._account(outcome)
        if self.progress is not None:
            self.progress(outcome)
        await sink(outcome)

    def _worst_cost(self, job: Job) -> float:
        """Cost if the answer used every token it may; with no max tokens set, the whole
        estimate is priced as completion tokens (the dearer kind)."""
        body = job.body
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        model = str(body.get("model", ""))
        if cap is None:
            return self.cost(model, 0, job.est_tokens)
        out = int(cap) * int(body.get("n") or 1)
        return self.cost(model, max(0, job.est_tokens - out), out)

    async def _run_job(self, run: _JobRun) -> Outcome:
        """Attempt until success, a final error or ``max_attempts``. The first attempt's budget is
        reserved by the caller; each retry reserves its own."""
        job = run.job
        worst = self._worst_cost(job)
        error = "no attempt"
        for number in range(1, self.max_attempts + 1):
            if number > 1 and not self._budget.reserve(worst):
                self.stats.stopped_for_budget = True
                self._stopping = True
                return Outcome(job, False, None, None, run.attempts,
                               f"stopped before attempt {number}: --max-cost reached", abandoned=True)
            delay, outcome = await self._attempt(run, number, worst)
            if outcome is not None:
                return outcome
            error = run.attempts[-1].error or "failed"
            if number < self.max_attempts:
                await asyncio.sleep(delay)
        return Outcome(job, False, None, None, run.attempts,
                       f"gave up after {self.max_attempts} attempts: {error}")

    async def _attempt(self, run: _JobRun, number: int, worst: float) -> tuple[float, Outcome | None]:
        """One attempt. Returns (delay before the next attempt, outcome if the job is finished)."""
        body = run.body
        seed = body.get("seed") if isinstance(body.get("seed"), int) else None
        permit = await self.limiter.acquire(run.job.est_tokens)
        start = time.perf_counter()
        try:
            result = await (permit.client or self.client).chat(body)  # a Fleet picks the endpoint
        except AttemptError as exc:
            latency = (time.perf_counter() - start) * 1000
            run.attempts.append(Attempt(number, exc.status, exc.kind, str(exc), latency, seed=seed))
            if exc.fatal:
                raise
            self.limiter.observe(permit, exc.rate)
            if not exc.retryable:
                return 0.0, Outcome(run.job, False, None, None, run.attempts, str(exc))
            told = exc.retry_after if exc.retry_after is not None else wait_hint(exc.rate)
            if isinstance(exc, RateLimited):
                self.stats.throttled += 1
                self.limiter.throttled(permit, told or 0.0)
            elif exc.kind == "timeout":
                self.limiter.timed_out(permit)
            return self._delay(number, told), None
        finally:
            self.limiter.release(permit)
            self._budget.reserved -= worst

        latency = (time.perf_counter() - start) * 1000
        self.limiter.observe(permit, result.rate)
        self.limiter.adjust(permit, result.prompt_tokens + result.completion_tokens)
        self.limiter.succeeded()
        paid = self.cost(str(body.get("model", result.model)), result.prompt_tokens,
                         result.completion_tokens)
        self._budget.spent += paid
        attempt = Attempt(number, 200, None, None, latency, result.prompt_tokens,
                          result.completion_tokens, paid, seed=seed)
        run.attempts.append(attempt)
        if run.job.check is None:
            return 0.0, Outcome(run.job, True, result, None, run.attempts, None)
        try:
            parsed = run.job.check(result)
        except errors.ResponseRejected as exc:
            raw = exc.raw or "\n\n".join(result.contents)  # keep what we paid for, whatever the check said
            attempt.error_kind, attempt.error, attempt.raw = "rejected", str(exc), raw
            run.rejections += 1
            return self._delay(number, None), None
        return 0.0, Outcome(run.job, True, result, parsed, run.attempts, None)

    def _delay(self, number: int, told: float | None) -> float:
        """Exponential backoff with full jitter; a server's retry-after is a floor, never cut."""
        if told is not None:
            return told + random.uniform(0, min(0.05 * told, 1.0))
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (number - 1)))

    def _account(self, outcome: Outcome) -> None:
        stats = self.stats
        if outcome.abandoned:
            stats.abandoned += 1
        elif outcome.ok:
            stats.done += 1
        else:
            stats.failed += 1
        stats.attempts += len(outcome.attempts)
        stats.retries += max(0, len(outcome.attempts) - 1)
        for attempt in outcome.attempts:
            stats.prompt_tokens += attempt.prompt_tokens
            stats.completion_tokens += attempt.completion_tokens
            stats.cost += attempt.cost


def _puller(jobs: AsyncIterator[Job] | Iterable[Job]) -> Callable[[], Awaitable[Job | None]]:
    """One job at a time for whichever worker asks; async generators cannot be advanced by two
    workers at once, hence the lock."""
    if isinstance(jobs, AsyncIterator):
        lock = asyncio.Lock()

        async def pull_async() -> Job | None:
            async with lock:
                return await anext(jobs, None)

        return pull_async
    iterator = iter(jobs)

    async def pull_sync() -> Job | None:
        return next(iterator, None)

    return pull_sync
