"""Generation: run a spec's steps against the teacher, round by round, into the store.

Each step is planned from the store (idempotent), served from the content-keyed cache where an
identical request was answered before, and the rest goes through the rate-limited pool. One writer
task commits finished requests as they come, so a kill loses at most what was in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from promptbake.errors import BudgetExceeded
from promptbake.plan.expand import Expander
from promptbake.plan.planner import Planner
from promptbake.spec.models import Spec, Step, TeacherConfig
from promptbake.store.db import Store, StoredRequest
from promptbake.teacher.client import ChatResult, Endpoint
from promptbake.teacher.endpoints import EndpointStats
from promptbake.teacher.parse import parse_choices
from promptbake.teacher.pool import Outcome
from promptbake.teacher.send import Progress, StepJob, send_to_store


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

    def plan(self, round_: int, k: int) -> int:
        wants = None if round_ == 0 else self.store.wants(self.spec.name, round_)
        if k == 0:
            requests = self.planner.first_step(self.expander.cells(), round_, wants)
        else:
            if wants is None:
                wants = {c.key: c.count for c in self.expander.cells()}
            parents = self.store.succeeded(self.spec.name, self.planner.parent_index(k), round_)
            requests = self.planner.next_step(k, parents, wants)
        return self.store.replan(self.spec.name, k, round_, requests)

    async def run_round(self, round_: int) -> None:
        for k, step in enumerate(self.planner.steps):
            report = StepReport(step.name, round_)
            self.report.steps.append(report)
            report.planned = self.plan(round_, k)
            if self.options.no_cache and k not in self._forgotten:
                self.store.forget_answers(self.spec.name, k)
                self._forgotten.add(k)
            elif not self.options.no_cache:
                report.cached = self.store.serve_from_cache(self.spec.name, k)
            await self._execute(k, round_, step, report)
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

    async def _execute(self, k: int, round_: int, step: Step, report: StepReport) -> None:
        total = self.store.count_pending(self.spec.name, k)
        if total == 0:
            return

        def count(outcome: Outcome) -> None:
            report.sent += 1
            if outcome.ok:
                report.ok += 1
            elif not outcome.abandoned:
                report.failed += 1

        stats = await send_to_store(
            self.store,
            self.endpoint,
            self.config,
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
        for name, endpoint_stats in stats.endpoints.items():
            self.report.endpoints.setdefault(name, EndpointStats()).merge(endpoint_stats)
        self.report.stopped_for_budget = stats.stopped_for_budget


def _job(request: StoredRequest, check: Callable[[ChatResult], Any], step: Step) -> StepJob:
    return StepJob(
        id=request.id,
        body=request.body,
        est_tokens=request.est_tokens,
        check=check,
        reseed=step.seed is not None,
        cache_key=request.cache_key,
    )
