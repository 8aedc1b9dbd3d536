"""Generation: run a spec's steps against the teacher, round by round, into the store.

Each step is planned from the store (idempotent), served from the content-keyed cache where an
identical request was answered before, and the rest goes through the rate-limited pool. One writer
task commits finished requests as they come, so a kill loses at most what was in flight.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from promptbake.errors import BudgetExceeded
from promptbake.plan.expand import Expander
from promptbake.plan.planner import Planner, row_key
from promptbake.spec.models import Spec, Step, TeacherConfig
from promptbake.store.db import AttemptRow, FanoutDrop, ResultRow, Store, StoredRequest
from promptbake.teacher.client import ChatResult, Endpoint
from promptbake.teacher.endpoints import EndpointStats, Fleet
from promptbake.teacher.link import Link
from promptbake.teacher.parse import parse_choices
from promptbake.teacher.pool import Job, Outcome, Pool, PoolStats
from promptbake.teacher.pricing import PriceTable


@dataclass
class StepJob(Job):
    cache_key: str = ""


@dataclass
class GenerateOptions:
    no_cache: bool = False
    max_cost: float | None = None
    progress: bool = True


@dataclass
class StepReport:
    step: str
    round: int
    planned: int = 0
    cached: int = 0
    sent: int = 0
    shared: int = 0  # identical to a request sent in this run: answered by its answer, not paid
    ok: int = 0
    failed: int = 0


@dataclass
class GenerateReport:
    steps: list[StepReport] = field(default_factory=list)
    spent: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    rate_limited: int = 0
    stopped_for_budget: bool = False
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)  # with teacher.endpoints


def _checker(step: Step) -> Callable[[ChatResult], Any]:
    def check(result: ChatResult) -> Any:
        return parse_choices(result.contents, result.finish_reasons, step.parse, step.json_schema, step.min_items)

    return check


class Progress:
    """tqdm on stderr: done/total, req/s, tok/s, spend and errors; off when not a TTY."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="req", file=sys.stderr, dynamic_ncols=True)
        self.start = time.monotonic()
        self.tokens = 0
        self.spent = 0.0
        self.errors = 0

    def update(self, outcome: Outcome) -> None:
        self.tokens += sum(a.prompt_tokens + a.completion_tokens for a in outcome.attempts)
        self.spent += sum(a.cost for a in outcome.attempts)
        self.errors += 0 if outcome.ok else 1
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.start, 1e-6)
            self.bar.set_postfix_str(
                f"{self.tokens / elapsed:,.0f} tok/s, ${self.spent:.4f}, {self.errors} failed", refresh=False
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Generation:
    def __init__(
        self,
        spec: Spec,
        store: Store,
        expander: Expander,
        endpoint: Endpoint,
        config: TeacherConfig,
        options: GenerateOptions,
    ) -> None:
        self.spec = spec
        self.store = store
        self.expander = expander
        self.options = options
        self.planner = Planner(spec, expander.templates, endpoint.model, config.kind)
        self.report = GenerateReport()
        self._forgotten: set[int] = set()

    def plan(self, round_: int, k: int) -> int:
        wants = None if round_ == 0 else self.store.wants(self.spec.name, round_)
        if k == 0:
            return self.store.replan(self.spec.name, k, round_, self.planner.first_step(self.expander.cells(), round_,
                                                                                         wants))
        if wants is None:
            wants = {c.key: c.count for c in self.expander.cells()}
        earlier: dict[str, dict[str, str]] = {}
        for row in self.store.planned_rows(self.spec.name, k, below_round=round_):
            if row.cell_key in wants:
                earlier.setdefault(row.cell_key, {})[row_key(row.vars)] = f"{row.parent_id}:{row.item_index}"
        drops: list[FanoutDrop] = []
        parent = self.planner.parent_index(k)
        requests = self.planner.next_step(k, self.store.succeeded(self.spec.name, parent, round_), wants,
                                          earlier=earlier, drops=drops)
        return self.store.replan(self.spec.name, k, round_, requests, drops, parent)

    async def run_round(self, round_: int, link: Link) -> None:
        for k, step in enumerate(self.planner.steps):
            report = StepReport(step.name, round_)
            self.report.steps.append(report)
            report.planned = self.plan(round_, k)
            if self.options.no_cache and k not in self._forgotten:
                self.store.forget_answers(self.spec.name, k)
                self._forgotten.add(k)
            elif not self.options.no_cache:
                report.cached = self.store.serve_from_cache(self.spec.name, k)
            await self._execute(k, round_, step, report, link)
            if self.report.stopped_for_budget:
                raise BudgetExceeded(
                    f"--max-cost ${self.options.max_cost:.2f} reached after spending "
                    f"${self.report.spent:.4f}; everything paid for is stored, re-run to continue"
                )

    def _jobs(self, k: int, round_: int, step: Step) -> Iterator[StepJob]:
        check = _checker(step)
        for request in self.store.pending(self.spec.name, k):
            if request.round != round_:
                continue
            yield _job(request, check, step)

    async def _execute(self, k: int, round_: int, step: Step, report: StepReport, link: Link) -> None:
        total = self.store.count_pending(self.spec.name, k)
        if total == 0:
            return
        report.shared = self.store.count_pending(self.spec.name, k, distinct=False) - total

        def count(outcome: Outcome) -> None:
            report.sent += 1
            if outcome.ok:
                report.ok += 1
            elif not outcome.abandoned:
                report.failed += 1

        stats = await send_to_store(
            self.store,
            link,
            self._jobs(k, round_, step),
            progress=Progress(self.options.progress, total, f"{step.name} (round {round_})"),
            max_cost=None if self.options.max_cost is None else self.options.max_cost - self.report.spent,
            on_outcome=count,
        )
        self.report.spent += stats.cost
        self.report.prompt_tokens += stats.prompt_tokens
        self.report.completion_tokens += stats.completion_tokens
        self.report.attempts += stats.attempts
        self.report.rate_limited += stats.throttled
        if stats.endpoints:  # the run's one fleet counts every step so far: the latest is the total
            self.report.endpoints = stats.endpoints
        self.report.stopped_for_budget = stats.stopped_for_budget


async def send_to_store(
    store: Store,
    link: Link,
    jobs: Iterable[StepJob],
    *,
    progress: Progress,
    max_cost: float | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> PoolStats:
    """Send jobs through the rate-limited pool; every finished one goes to the store's single
    writer. The one path by which generate and eval pay for answers, through the run's ``link``
    to the endpoint (its client and limiter serve every step and phase of the run)."""
    queue: asyncio.Queue[ResultRow | None] = asyncio.Queue()
    writer = asyncio.create_task(_writer(store, queue))

    async def sink(outcome: Outcome) -> None:
        if writer.done():
            # the writer died (disk full): stop the pool, or it pays for answers nobody keeps
            writer.result()
        progress.update(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        queue.put_nowait(result_row(outcome))

    try:
        assert link.limiter is not None, "send through an open link"
        pool = Pool(
            link.client,
            link.limiter,  # type: ignore[arg-type]  # a Fleet over teacher.endpoints has Limiter's methods
            max_attempts=link.config.max_attempts,
            cost=PriceTable(link.config.prices).cost,
            max_cost=max_cost,
        )
        try:
            return await pool.run(jobs, sink)
        finally:
            if isinstance(link.limiter, Fleet):  # counted over the whole run: the link is shared
                pool.stats.endpoints = link.limiter.summary()
    finally:
        queue.put_nowait(None)
        await writer
        progress.close()


async def _writer(store: Store, queue: asyncio.Queue[ResultRow | None]) -> None:
    """The single writer: commits everything waiting each time it wakes.

    Under load, results pile up while a commit runs, so batches grow by themselves; when the
    pool is idle each result is committed at once. A kill therefore loses only what was in
    flight, never a backlog of finished answers.
    """
    while True:
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            # Ctrl-C: what already finished is paid for, so it is committed before we go
            store.record([r for r in _drain(queue) if r is not None])
            raise
        batch = [first, *_drain(queue)]
        rows = [r for r in batch if r is not None]
        if rows:
            store.record(rows)
        if None in batch:
            return


def _drain(queue: asyncio.Queue[ResultRow | None]) -> list[ResultRow | None]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _job(request: StoredRequest, check: Callable[[ChatResult], Any], step: Step) -> StepJob:
    return StepJob(
        id=request.id,
        body=request.body,
        est_tokens=request.est_tokens,
        check=check,
        reseed=step.seed is not None,
        cache_key=request.cache_key,
    )


def result_row(outcome: Outcome) -> ResultRow:
    job = outcome.job
    assert isinstance(job, StepJob)
    attempts = [
        AttemptRow(
            a.number, a.status, a.error_kind, a.error, a.latency_ms, a.prompt_tokens, a.completion_tokens, a.cost, a.raw
        )
        for a in outcome.attempts
    ]
    result = outcome.result
    return ResultRow(
        request_id=job.id,
        cache_key=job.cache_key,
        ok=outcome.ok,
        abandoned=outcome.abandoned,
        attempts=attempts,
        error=outcome.error,
        model=result.model if result else None,
        contents=result.contents if result else None,
        outputs=outcome.parsed if outcome.ok else None,
        finish_reasons=result.finish_reasons if result else None,
    )
