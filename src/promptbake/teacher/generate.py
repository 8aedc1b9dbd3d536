"""Generation: run a spec's steps against the teacher, round by round, into the store.

Each step is planned from the store (idempotent), served from the content-keyed cache where an
identical request was answered before, and the rest goes through the rate-limited pool. One writer
task commits finished requests as they come, so a kill loses at most what was in flight.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from promptbake.errors import BudgetExceeded, TeacherError
from promptbake.plan.conversation import planned_steps
from promptbake.plan.expand import Expander
from promptbake.plan.planner import DEFAULT_RESERVE, Planner, row_key
from promptbake.plan.routing import check_routes
from promptbake.specification.models import Spec, Step, TeacherConfig
from promptbake.store.db import FanoutDrop, PlannedRequest, Store
from promptbake.teacher.ahead import Setup, slices
from promptbake.teacher.client import Endpoint
from promptbake.teacher.endpoints import EndpointStats
from promptbake.teacher.jobs import Outcome, StepJob, capped, checker, step_job, unseeded
from promptbake.teacher.link import Link
from promptbake.teacher.online import say, send_to_store
from promptbake.teacher.pool import FailingFast, FailureLog, Notice
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.progress import Progress

if TYPE_CHECKING:
    from promptbake.teacher.batch import BatchOptions, BatchTotals

# A grid of more cells than this is not planned whole before the first request: step 0 of round 0
# is planned a slice of cells at a time while the pool sends what is planned (10^8 cells would
# otherwise take hours of planning, and as many rows, before anything is asked). The first slice
# is STREAM_CHUNK cells, each next one twice the last, up to STREAM_CHUNK_MAX: the first answers
# come at once, and the plan goes into the store in a few big commits. Request ids and cache keys
# are hashes, so a slice's rows land all over their indexes and its commit writes most of their
# pages again, however few rows it adds: 1,000-cell slices all the way cost a sixth of generate's
# time at 100,000 requests (README, Benchmarks).
STREAM_CELLS = 10_000
STREAM_CHUNK = 1_000
STREAM_CHUNK_MAX = 16_000
# A step of at most this many requests keeps them after planning: when every one of them is still
# to be sent (nothing answered, cached or repeated), they are sent as planned instead of being
# read back from the store (a tenth of generate's work per request at 10,000 requests).
KEEP_PLANNED = 20_000
# A grid of more cells than this has its slices planned by a helper process, on another core,
# while this one sends (a quarter of generate's CPU per request at 100,000 requests; README,
# Benchmarks); smaller ones are sent before the helper would have started.
PLAN_AHEAD_CELLS = 50_000


@dataclass
class GenerateOptions:
    no_cache: bool = False
    max_cost: float | None = None
    progress: bool = True
    batch: BatchOptions | None = None  # --batch: steps go through the Batch API, not the online pool
    notice: Notice = say
    topup_round: int = 0  # a built dataset's top-up round: varies unseeded requests (see Planner)


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


def check_run(spec: Spec, config: TeacherConfig, max_cost: float | None) -> list[str]:
    """Refuse to start a run that could not go as asked: a model no endpoint serves (see
    :func:`check_routes`), or a ``--max-cost`` that could not hold (a model without a price would
    be counted as free: every model a step may be answered by needs one). Returns notes for the
    summary: steps without ``max_tokens`` are sent with ``DEFAULT_RESERVE`` under a budget (see
    :func:`bounded`)."""
    steps = planned_steps(spec)  # a judge's verdicts are paid like answers, a dialogue's turns too
    models = check_routes(steps, config)
    if max_cost is None:
        return []
    PriceTable(config.prices).require((m for step in models for m in step), max_cost)
    # a conversation's turns are one side's steps: say it once per side
    uncapped = dict.fromkeys(step.name.rsplit(".", 1)[0] for step in steps if not capped(step.body_params()))
    return [
        f"step {name} sets no max_tokens: under --max-cost its answers are sent with max_tokens "
        f"{DEFAULT_RESERVE}, the worst case reserved for each (set max_tokens in the spec to choose)"
        for name in uncapped
    ]


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
        self.planner = Planner(spec, expander.templates, config, topup_round=options.topup_round)
        self.report = GenerateReport()
        self._forgotten: set[int] = set()
        # --no-cache re-pays a whole step, which needs it planned whole first
        self.streams = not options.no_cache and expander.totals()[0] > STREAM_CELLS
        self._hopeless: set[str] = set()  # requests (seed aside) that failed for good this run
        self._planned: dict[tuple[int, int], list[PlannedRequest] | None] = {}  # see KEEP_PLANNED

    def plan(self, round_: int, k: int) -> int:
        wants = None if round_ == 0 else self.store.wants(self.spec.name, round_)
        if k == 0:
            return self.store.replan(self.spec.name, k, round_, self._kept(k, round_, self._hopeful(
                self.planner.first_step(self.expander.cells(), round_, wants), round_)))
        if wants is None:
            wants = {c.key: c.count for c in self.expander.cells()}
        earlier: dict[str, dict[str, str]] = {}
        for row in self.store.planned_rows(self.spec.name, k, below_round=round_):
            if row.cell_key in wants:
                earlier.setdefault(row.cell_key, {})[row_key(row.vars)] = f"{row.parent_id}:{row.item_index}"
        drops: list[FanoutDrop] = []
        parent = self.planner.parent_index(k)
        # in lineage order: a conversation's judges read every turn a dialogue may end at
        parents = heapq.merge(*(self.store.succeeded(self.spec.name, p, round_) for p in self.planner.parent_steps(k)),
                              key=lambda r: r.ord)
        requests = self.planner.next_step(k, parents, wants, earlier=earlier, drops=drops)
        return self.store.replan(self.spec.name, k, round_, self._kept(k, round_, self._hopeful(requests, round_)),
                                 drops, parent)

    def _kept(self, k: int, round_: int, requests: Iterable[PlannedRequest]) -> Iterator[PlannedRequest]:
        """``requests``, kept as they go by while there are at most ``KEEP_PLANNED``."""
        kept: list[PlannedRequest] | None = []
        for request in requests:
            if kept is not None:
                kept.append(request)
                if len(kept) > KEEP_PLANNED:
                    kept = None
            yield request
        self._planned[(k, round_)] = kept

    def _hopeful(self, requests: Iterable[PlannedRequest], round_: int) -> Iterable[PlannedRequest]:
        """A top-up round varies the seed only: what failed for good this run would fail again."""
        if round_ > 0 and self._hopeless:
            return (r for r in requests if unseeded(r.body) not in self._hopeless)
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
            if (round_ == 0 and report.failed and not self.store.step_ok(self.spec.name, k, round_)
                    and self._telling(k)):
                n, reason = self.report.failures.most_common(1)[0]
                raise TeacherError(
                    f"step {step.name!r} failed entirely: none of its {report.failed} requests to "
                    f"{self.endpoint.where(step.model)} succeeded ({self.report.failures.total - failed_before} "
                    f"failed; most common, {n} ×: {reason}); the store keeps every error"
                )

    def _telling(self, k: int) -> bool:
        """Whether step k failing entirely says the teacher cannot do it: not for a dialogue's
        later turn, asked of the few dialogues that got that far after its side answered before
        (those dialogues end short and the count loop starts others)."""
        flow = self.planner.flow
        return flow is None or flow.turn(k) is None or flow.first_of_side(k)

    def _check_budget(self) -> None:
        if self.report.stopped_for_budget:
            raise BudgetExceeded(
                f"--max-cost ${self.options.max_cost:.2f} reached after spending "
                f"{self.report.spend()}; everything paid for is stored, re-run to continue"
            )

    def _streamed_jobs(self, step: Step, report: StepReport) -> Iterator[StepJob]:
        """Step 0 of round 0 of a big grid: plan (and save) a slice of cells, hand its unanswered
        requests to the pool, then plan the next slice; the pool pulls lazily, so planning keeps
        just ahead of sending. Over ``PLAN_AHEAD_CELLS`` cells the slices after the first few are
        planned by a helper process (see :mod:`promptbake.teacher.ahead`)."""
        check = checker(step)
        setup = None
        if self.expander.totals()[0] > PLAN_AHEAD_CELLS:
            setup = Setup(self.spec, self.config, self.options.topup_round)
        parts = slices(self.planner, self.expander.cells, setup, STREAM_CHUNK, STREAM_CHUNK_MAX, self.options.notice)
        with closing(parts):
            for part in parts:
                with self.store.transaction():  # one commit a slice
                    self.store.save_cell_rows(part.cells)
                    report.planned += self.store.add_plan_rows(part.rows, part.blobs)
                    report.cached += self.store.serve_from_cache(self.spec.name, 0)
                # the slice's requests still to send, as planned: the same bytes as the stored rows
                # (their ids hash their bodies), without reading every body back; each let go of
                # once it is handed to the pool, so a big slice's memory shrinks as it is sent
                by_id = {ask.id: ask for ask in part.asks}
                del part
                for request_id, est_tokens in self.store.pending_among(self.spec.name, 0, by_id):
                    job = step_job(by_id.pop(request_id), check)
                    job.est_tokens = est_tokens  # what a resumed store planned, as the stored row says
                    yield job

    def _jobs(self, k: int, round_: int, step: Step) -> Iterator[StepJob]:
        check = checker(step)
        for request in self.store.pending(self.spec.name, k):
            if request.round != round_:
                continue
            yield step_job(request, check)

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
        planned = self._planned.pop((k, round_), None)
        online = self.options.batch is None
        if jobs is None and online and planned is not None and total == report.planned == len(planned):
            # every request just planned is still to be sent, none repeats another: as planned
            check = checker(step)
            jobs = (step_job(request, check) for request in planned)

        def count(outcome: Outcome) -> None:
            report.sent += 1
            if outcome.ok:
                report.ok += 1
            elif not outcome.abandoned:
                report.failed += 1
                if outcome.final:
                    self._hopeless.add(unseeded(outcome.job.body))

        progress = Progress(self.options.progress, total, f"{step.name} (round {round_})")
        budget = None if self.options.max_cost is None else self.options.max_cost - self.report.spent
        if self.options.batch is not None:
            from promptbake.teacher.batch import BatchTotals, Scope, send_step_batches  # only for --batch

            if self.report.batch is None:
                self.report.batch = BatchTotals()
            stats = await send_step_batches(
                self.store, link, Scope(self.spec.name, k, round_, step), self.options.batch, self.report.batch,
                lambda: self._jobs(k, round_, step), first=jobs, progress=progress,
                show_progress=self.options.progress, max_cost=budget, on_outcome=count,
                failures=self.report.failures, notice=self.options.notice)
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


