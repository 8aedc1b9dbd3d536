"""Generation: run a spec's steps against the teacher, round by round, into the store.

Each step is planned from the store (idempotent), served from the content-keyed cache where an
identical request was answered before, and the rest goes through the rate-limited pool. One writer
task commits finished requests as they come, so a kill loses at most what was in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

from promptbake.errors import BudgetExceeded, TeacherError
from promptbake.ids import stable_hash
from promptbake.plan.expand import Expander
from promptbake.plan.judge import judge_steps
from promptbake.plan.planner import DEFAULT_RESERVE, Planner, row_key
from promptbake.specification.models import Spec, Step, TeacherConfig
from promptbake.store.db import AttemptRow, FanoutDrop, PlannedRequest, ResultRow, Store, StoredRequest
from promptbake.teacher.client import ChatResult, Endpoint
from promptbake.teacher.config import model_name
from promptbake.teacher.endpoints import EndpointStats, Fleet
from promptbake.teacher.link import Link
from promptbake.teacher.parse import parse_choices
from promptbake.teacher.pool import FailingFast, FailureLog, Job, Notice, Outcome, Pool, PoolStats
from promptbake.teacher.pricing import PriceTable

if TYPE_CHECKING:
    from promptbake.teacher.batch import BatchOptions, BatchTotals

# A grid of more cells than this is not planned whole before the first request: step 0 of round 0
# is planned STREAM_CHUNK cells at a time while the pool sends what is planned (10^8 cells would
# otherwise take hours of planning, and as many rows, before anything is asked).
STREAM_CELLS = 10_000
STREAM_CHUNK = 1_000


@dataclass
class StepJob(Job):
    cache_key: str = ""


def say(line: str) -> None:
    """Where the library's mid-run notices go by default: stderr, one line each (stdout is data)."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class GenerateOptions:
    no_cache: bool = False
    max_cost: float | None = None
    progress: bool = True
    batch: BatchOptions | None = None  # --batch: steps go through the Batch API, not the online pool
    notice: Notice = say


@dataclass
class StepReport:
    step: str
    round: int
    planned: int = 0
    stored: int = 0  # answered by an earlier run (a resume)
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
    batch: BatchTotals | None = None  # set in batch mode
    estimated: int = 0  # answers that came without usable usage, charged their worst case
    estimated_cost: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the summary must say about the figures
    failures: FailureLog = field(default_factory=FailureLog)
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)  # with teacher.endpoints

    def spend(self) -> str:
        """``$0.1234``, saying how much of it is a worst-case estimate rather than billed usage."""
        if not self.estimated:
            return f"${self.spent:.4f}"
        return (f"${self.spent:.4f} (${self.estimated_cost:.4f} of it estimated: {self.estimated} answers came "
                "without usage and were charged their worst case)")


def check_budget(spec: Spec, config: TeacherConfig, max_cost: float | None) -> list[str]:
    """Refuse to start a run whose ``--max-cost`` could not hold (a model without a price would be
    counted as free). Returns notes for the summary: steps without ``max_tokens`` are sent with
    ``DEFAULT_RESERVE`` under a budget (see :func:`bounded`)."""
    if max_cost is None:
        return []
    steps = [*spec.steps, *judge_steps(spec)]  # a judge's verdicts are paid like answers
    PriceTable(config.prices).require((step.model or model_name(config) for step in steps), max_cost)
    return [
        f"step {step.name} sets no max_tokens: under --max-cost its answers are sent with max_tokens "
        f"{DEFAULT_RESERVE}, the worst case reserved for each (set max_tokens in the spec to choose)"
        for step in steps if not _capped(step.body_params())
    ]


def _capped(body: dict[str, Any]) -> bool:
    return body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None


def bounded(job: StepJob) -> StepJob:
    """The job as sent under ``--max-cost``: without max tokens an answer has no worst case, so it
    gets ``DEFAULT_RESERVE`` (what its TPM estimate already assumed). Only the sent body changes,
    not the cache key: a capped answer that was not cut off is the same answer uncapped, and one
    that was cut off is rejected and retried like any other."""
    return job if _capped(job.body) else replace(job, body={**job.body, "max_tokens": DEFAULT_RESERVE})


def _checker(step: Step) -> Callable[[ChatResult], Any]:
    def check(result: ChatResult) -> Any:
        return parse_choices(result.contents, result.finish_reasons, step.parse, step.json_schema, step.min_items)

    return check


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where stderr is no terminal but a widget bar works."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return type(ipython).__name__ == "ZMQInteractiveShell"


class Progress:
    """Progress on stderr: done/total, req/s, tok/s, spend and failures.

    A tqdm bar on a terminal (``tqdm.auto``: a widget in a notebook); otherwise (a log file, CI,
    a pipe) one plain line at least every ``every`` seconds (``$PROMPTBAKE_PROGRESS_EVERY``,
    default 5) and a last one at the end, so a long run is never silent.
    """

    def __init__(self, enabled: bool, total: int | None, label: str, *, every: float | None = None,
                 stream: TextIO | None = None, unit: str = "req") -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.label = label
        self.bar = None
        self._stop: threading.Event | None = None
        self.start = time.monotonic()
        self.done = 0
        self.tokens = 0
        self.spent = 0.0
        self.errors = 0
        if not enabled:
            return
        if self.stream.isatty() or _in_notebook():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True)
            return
        every = every if every is not None else float(os.environ.get("PROMPTBAKE_PROGRESS_EVERY") or 5)
        self._stop = threading.Event()
        # a thread, not the event loop: the line must come even while every request is stuck
        threading.Thread(target=self._lines, args=(every, self._stop), daemon=True).start()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        total = "?" if self.total is None else self.total  # a streamed step's total is not known up front
        return (f"{self.label}: {self.done}/{total}{share}, {self.done / elapsed:,.1f} req/s, "
                f"{self.tokens / elapsed:,.0f} tok/s, ${self.spent:.4f}, {self.errors} failed")

    def _lines(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            print(self.line(), file=self.stream, flush=True)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
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
        if self._stop is not None and not self._stop.is_set():
            self._stop.set()
            print(self.line(), file=self.stream, flush=True)


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
        self.endpoint = endpoint
        self.config = config
        self.options = options
        self.planner = Planner(spec, expander.templates, endpoint.model, config.kind)
        self.report = GenerateReport()
        self._forgotten: set[int] = set()
        # --no-cache re-pays a whole step, which needs it planned whole first
        self.streams = not options.no_cache and expander.totals()[0] > STREAM_CELLS
        self._hopeless: set[str] = set()  # requests (seed aside) that failed for good this run

    def plan(self, round_: int, k: int) -> int:
        wants = None if round_ == 0 else self.store.wants(self.spec.name, round_)
        if k == 0:
            return self.store.replan(self.spec.name, k, round_, self._hopeful(
                self.planner.first_step(self.expander.cells(), round_, wants), round_))
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
        return self.store.replan(self.spec.name, k, round_, self._hopeful(requests, round_), drops, parent)

    def _hopeful(self, requests: Iterable[PlannedRequest], round_: int) -> Iterable[PlannedRequest]:
        """A top-up round varies the seed only: what failed for good this run would fail again."""
        if round_ > 0 and self._hopeless:
            return (r for r in requests if _unseeded(r.body) not in self._hopeless)
        return requests

    async def run_round(self, round_: int, link: Link) -> None:
        for k, step in enumerate(self.planner.steps):
            report = StepReport(step.name, round_)
            self.report.steps.append(report)
            if k == 0 and round_ == 0 and self.streams:
                self.store.replan(self.spec.name, 0, 0, [])  # the stream plans it again, slice by slice
                await self._execute(0, 0, step, report, link, self._streamed_jobs(step, report))
                self._check_budget()
                continue
            report.planned = self.plan(round_, k)
            if self.options.no_cache and k not in self._forgotten:
                self.store.forget_answers(self.spec.name, k)
                self._forgotten.add(k)
            elif not self.options.no_cache:
                report.cached = self.store.serve_from_cache(self.spec.name, k)
            failed_before = self.report.failures.total
            try:
                await self._execute(k, round_, step, report, link)
            except FailingFast:
                if round_ == 0 and not self.store.step_ok(self.spec.name, k, round_):
                    raise
                # a top-up round, or a resumed step that has answers: stop paying, keep what is
                # stored, and let the shortfall say the rest (see pipeline._top_up)
                return
            self._check_budget()
            if round_ == 0 and report.failed and not self.store.step_ok(self.spec.name, k, round_):
                n, reason = self.report.failures.most_common(1)[0]
                raise TeacherError(
                    f"step {step.name!r} failed entirely: none of its {report.failed} requests to "
                    f"{self.endpoint.where(step.model)} succeeded ({self.report.failures.total - failed_before} "
                    f"failed; most common, {n} ×: {reason}); the store keeps every error"
                )

    def _check_budget(self) -> None:
        if self.report.stopped_for_budget:
            raise BudgetExceeded(
                f"--max-cost ${self.options.max_cost:.2f} reached after spending "
                f"{self.report.spend()}; everything paid for is stored, re-run to continue"
            )

    def _streamed_jobs(self, step: Step, report: StepReport) -> Iterator[StepJob]:
        """Step 0 of round 0 of a big grid: plan (and save) a slice of cells, hand its unanswered
        requests to the pool, then plan the next slice; the pool pulls lazily, so planning keeps
        just ahead of sending."""
        check = _checker(step)
        cells = self.expander.cells()
        while chunk := list(itertools.islice(cells, STREAM_CHUNK)):
            self.store.save_cells(self.spec.name, chunk)
            planned = list(self.planner.first_step(chunk, 0))
            report.planned += self.store.extend_plan(planned)
            report.cached += self.store.serve_from_cache(self.spec.name, 0)
            ords = {r.ord for r in planned}
            # the not-done requests of the step are this slice's, plus the few in flight or failed
            for request in self.store.pending(self.spec.name, 0):
                if request.ord in ords:
                    yield _job(request, check)

    def _jobs(self, k: int, round_: int, step: Step) -> Iterator[StepJob]:
        check = _checker(step)
        for request in self.store.pending(self.spec.name, k):
            if request.round != round_:
                continue
            yield _job(request, check)

    async def _execute(self, k: int, round_: int, step: Step, report: StepReport, link: Link,
                       jobs: Iterable[StepJob] | None = None) -> None:
        """Send the step's pending requests (or ``jobs``, planned as they are sent: no total)."""
        total = None if jobs is not None else self.store.count_pending(self.spec.name, k, round_)
        if total is not None:
            report.stored = max(report.planned - report.cached - total, 0)
        if total == 0:
            return
        if total is not None:  # a streamed step (no total) is planned as it is sent
            report.shared = self.store.count_pending(self.spec.name, k, round_, distinct=False) - total

        def count(outcome: Outcome) -> None:
            report.sent += 1
            if outcome.ok:
                report.ok += 1
            elif not outcome.abandoned:
                report.failed += 1
                if outcome.final:
                    self._hopeless.add(_unseeded(outcome.job.body))

        progress = Progress(self.options.progress, total, f"{step.name} (round {round_})")
        budget = None if self.options.max_cost is None else self.options.max_cost - self.report.spent
        if self.options.batch is not None:
            from promptbake.teacher.batch import send_step_batches

            stats = await send_step_batches(self, k, round_, step, link, progress=progress, max_cost=budget,
                                            on_outcome=count)
        else:
            stats = await send_to_store(
                self.store,
                link,
                self._jobs(k, round_, step) if jobs is None else jobs,
                progress=progress,
                max_cost=budget,
                on_outcome=count,
                failures=self.report.failures,
                notice=self.options.notice,
            )
        self.report.spent += stats.cost
        self.report.prompt_tokens += stats.prompt_tokens
        self.report.completion_tokens += stats.completion_tokens
        self.report.attempts += stats.attempts
        self.report.rate_limited += stats.throttled
        self.report.estimated += stats.estimated
        self.report.estimated_cost += stats.estimated_cost
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
    failures: FailureLog | None = None,
    notice: Notice | None = say,
) -> PoolStats:
    """Send jobs through the rate-limited pool; every finished one goes to the store's single
    writer. The one path by which generate and eval pay for answers, through the run's ``link``
    to the endpoint (its client and limiter serve every step and phase of the run)."""
    if max_cost is not None:
        jobs = map(bounded, jobs)
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
            max_retry_after=link.config.max_retry_after,
            failures=failures,
            notice=notice,
            one_server=not isinstance(link.limiter, Fleet),
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


def _job(request: StoredRequest, check: Callable[[ChatResult], Any]) -> StepJob:
    return StepJob(
        id=request.id,
        body=request.body,
        est_tokens=request.est_tokens,
        check=check,
        reseed=True,  # a rejected answer is asked again with another seed, derived if the step sets none
        cache_key=request.cache_key,
    )


def _unseeded(body: dict[str, Any]) -> str:
    """A request's identity apart from its seed: what top-up rounds and retries vary."""
    return stable_hash({k: v for k, v in body.items() if k != "seed"}, length=32)


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
