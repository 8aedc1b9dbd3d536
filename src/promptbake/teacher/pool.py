"""The async worker pool: jobs in, outcomes out, through the limiter, with retries and a budget.

It knows nothing about steps, cells or the store: the pipeline feeds it :class:`Job` objects from
any (async) iterator and gets one :class:`Outcome` per finished job through ``sink``. Jobs are
pulled lazily, one per idle worker, so a million-request run holds at most ``concurrency`` jobs in
memory. Every attempt, paid or not, is reported in the outcome so the store can account for it.

A run that gets nothing done stops instead of paying on: when the first requests of a pool all
fail for one reason after their retries (``fail_fast`` of them, or two for an error that repeated
on its request or a 4xx that is not about one request), or a server stays unreachable through
every attempt, the pool raises a ``TeacherError`` naming the server, the model and the reason.
Retries must change something: a rejected answer is re-asked with another seed, and the same
rejected bytes twice in a row end the job.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from promptbake import errors
from promptbake.teacher.client import CANNOT_CONNECT, AttemptError, ChatClient, RateLimited
from promptbake.teacher.jobs import Attempt, CostFn, Job, Outcome, attempt_body, charge, worst_cost
from promptbake.teacher.limiter import Limiter, wait_hint

Notice = Callable[[str], None]
FAIL_FAST = 10  # identical failures with no success before a pool gives up
MAX_RETRY_AFTER = 60.0  # seconds: a longer retry-after pauses only its own request, this long
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


class FailingFast(errors.TeacherError):
    """The first requests of a pool all failed for one reason: stop paying (see ``fail_fast``)."""


@dataclass
class FailureLog:
    """Why requests failed, grouped by reason across every pool of a command. Numbers do not
    split a reason ("try again in 523ms" and "in 610ms" are one), and the first wording is shown."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str) -> int:
        key = _NUMBERS.sub("#", reason)[:300]
        self.counts[key] += 1
        self.examples.setdefault(key, reason)
        return self.counts[key]

    def most_common(self, k: int = 3) -> list[tuple[int, str]]:
        return [(n, self.examples[key]) for key, n in self.counts.most_common(k)]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def format(self, k: int = 3) -> str:
        """The end-of-command summary: the ``k`` most common reasons, with counts."""
        if not self.counts:
            return ""
        lines = [f"{self.total} requests failed; most common reasons:"]
        lines += [f"  {n} × {reason}" for n, reason in self.most_common(k)]
        return "\n".join(lines)


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
    estimated: int = 0  # answers without usable usage, charged their worst case
    estimated_cost: float = 0.0  # the part of ``cost`` they account for
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
        return attempt_body(self.job, self.rejections)


class Pool:
    def __init__(self, client: ChatClient, limiter: Limiter, *, max_attempts: int, cost: CostFn,
                 max_cost: float | None = None, progress: Callable[[Outcome], None] | None = None,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 max_retry_after: float = MAX_RETRY_AFTER, fail_fast: int = FAIL_FAST,
                 failures: FailureLog | None = None, notice: Notice | None = None, one_server: bool = True) -> None:
        self.client = client
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.cost = cost
        self.progress = progress
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.fail_fast = fail_fast
        self.failures = failures if failures is not None else FailureLog()  # the command's, shared
        self.notice = notice
        self.one_server = one_server  # a fleet survives one server going away
        self.stats = PoolStats()  # live: progress bars read it
        self._budget = _Budget(max_cost)
        self._stopping = False
        self._mine = FailureLog()  # this pool's alone: the fail-fast rule looks at one step
        self._long_wait_said = float("-inf")

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
            worst = self._worst_cost(job)
            if not self._budget.reserve(worst):
                self._stopping = True
                self.stats.stopped_for_budget = True
                return
            run = _JobRun(job)
            try:
                outcome = await self._run_job(run, worst)
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
        if not outcome.ok and not outcome.abandoned:
            self._judge(outcome)

    def _judge(self, outcome: Outcome) -> None:
        """After a failure (already stored): stop the run when nothing has worked and the same
        reason keeps coming, else say so once when a reason reaches ``fail_fast``.

        Only finished requests count, each after its own retries: a failed first attempt that a
        retry made good never trips the breaker, however many requests share it. A request ended
        by the same answer twice (a 4xx about the setup, a 5xx or a 200 carrying an error that
        repeats) counts at once, since the next request would likely repeat it too."""
        reason = outcome.reason
        self.failures.add(reason)
        seen = self._mine.add(reason)
        kind = outcome.kind or ""
        setup = outcome.final and (kind.startswith("http_") or kind == "error_body")
        model = str(outcome.job.body.get("model", ""))
        if self.stats.done == 0 and (seen >= self.fail_fast or (setup and seen >= 2)):
            self._stopping = True
            raise FailingFast(f"stopped: the first {seen} requests to {self.client.endpoint.where(model)} "
                                      f"all failed, none succeeded: {reason}")
        if seen == self.fail_fast and self.notice is not None:
            self.notice(f"{seen} requests have failed with: {reason} ({self.stats.done} ok so far; going on)")

    def _worst_cost(self, job: Job) -> float:
        return worst_cost(self.cost, job)

    async def _run_job(self, run: _JobRun, worst: float) -> Outcome:
        """Attempt until success, a final error or ``max_attempts``. The first attempt's budget
        (``worst``) is reserved by the caller; each retry reserves its own."""
        job = run.job
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
        last = run.attempts[-1]
        if (last.error or "").startswith(CANNOT_CONNECT) and self.one_server:
            # nobody answers at that address: every other request would fail the same way
            where = self.client.endpoint.where(str(job.body.get("model", "")))
            raise errors.TeacherError(f"cannot reach {where} after {self.max_attempts} attempts: {error}")
        return Outcome(job, False, None, None, run.attempts,
                       f"gave up after {self.max_attempts} attempts: {error}", kind=last.error_kind)

    async def _attempt(self, run: _JobRun, number: int, worst: float) -> tuple[float, Outcome | None]:
        """One attempt. Returns (delay before the next attempt, outcome if the job is finished)."""
        body = run.body
        seed = body.get("seed") if isinstance(body.get("seed"), int) else None
        permit = await self.limiter.acquire(run.job.est_tokens, str(body.get("model") or "") or None)  # routing
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
                return 0.0, Outcome(run.job, False, None, None, run.attempts, str(exc), kind=exc.kind, final=True)
            previous = run.attempts[-2] if len(run.attempts) > 1 else None
            if exc.final_if_repeated and previous is not None and previous.error == str(exc):
                # the same request, the same words twice (a 5xx that blames the request, a 200
                # carrying an error): sending it again would get them a third time
                return 0.0, Outcome(run.job, False, None, None, run.attempts,
                                    f"{exc} (twice in a row: {exc.final_if_repeated}, so it is not retried)",
                                    kind=exc.kind, final=True)
            told = exc.retry_after if exc.retry_after is not None else wait_hint(exc.rate)
            long_wait = told is not None and told > self.max_retry_after
            if long_wait:
                if number < self.max_attempts:  # it will wait: say until when
                    self._say_long_wait(told or 0.0, str(body.get("model", "")), exc)
                told = self.max_retry_after
            if isinstance(exc, RateLimited):
                self.stats.throttled += 1
                # a wait beyond the cap pauses this request only; the others keep flowing
                self.limiter.throttled(permit, 0.0 if long_wait else told or 0.0)
            elif exc.kind == "timeout":
                self.limiter.timed_out(permit)
            return self._delay(number, told), None
        finally:
            self.limiter.release(permit)
            self._budget.reserved -= worst

        latency = (time.perf_counter() - start) * 1000
        self.limiter.observe(permit, result.rate)
        bill = charge(self.cost, run.job, result)
        if not bill.estimated:
            self.limiter.adjust(permit, bill.prompt_tokens + bill.completion_tokens)
        self.limiter.succeeded()
        self._budget.spent += bill.cost
        attempt = Attempt(number, 200, None, None, latency, bill.prompt_tokens, bill.completion_tokens, bill.cost,
                          seed=seed, estimated=bill.estimated)
        run.attempts.append(attempt)
        if run.job.check is None:
            return 0.0, Outcome(run.job, True, result, None, run.attempts, None)
        try:
            parsed = run.job.check(result)
        except errors.ResponseRejected as exc:
            raw = exc.raw or "\n\n".join(result.contents)  # keep what we paid for, whatever the check said
            attempt.error_kind, attempt.error, attempt.raw = "rejected", str(exc), raw
            run.rejections += 1
            previous = run.attempts[-2] if len(run.attempts) > 1 else None
            if previous is not None and previous.error_kind == "rejected" and previous.raw == raw:
                return 0.0, Outcome(run.job, False, None, None, run.attempts,
                                    f"the teacher gave the same rejected answer twice in a row, so it is not "
                                    f"asked again: {exc}", kind="repeated_rejection", final=True)
            return self._delay(number, None), None
        return 0.0, Outcome(run.job, True, result, parsed, run.attempts, None)

    def _say_long_wait(self, told: float, model: str, exc: AttemptError) -> None:
        """One line (at most one per ``max_retry_after``) when a server asks for a wait beyond it."""
        now = time.monotonic()
        if self.notice is None or now - self._long_wait_said < self.max_retry_after:
            return
        self._long_wait_said = now
        asked = "an unbounded wait" if math.isinf(told) else f"a {told:,.0f} s wait"
        resume = datetime.datetime.now() + datetime.timedelta(seconds=self.max_retry_after)
        self.notice(f"{self.client.endpoint.where(model)} asked for {asked} (HTTP {exc.status}), more than "
                    f"--max-retry-after {self.max_retry_after:g} s: that request pauses until "
                    f"{resume:%H:%M:%S}, the others keep going")

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
            if attempt.estimated:
                stats.estimated += 1
                stats.estimated_cost += attempt.cost


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
