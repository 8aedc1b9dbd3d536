"""Evals: run a model on a test split through the teacher pool and score every answer.

The model under test is called exactly like a teacher (same client, limiter, pool and store), so
rate limits, retries, ``--max-cost`` and resuming behave the same. Every request is planned into a
store before anything is sent, under its own namespace (``@eval/<model>``, ``@judge/<model>``), and
answers are committed as they arrive: a re-run sends only what has no stored answer, and an error
or Ctrl-C loses at most what was in flight.

``testset.py`` reads the split and the sweep, ``scoring.py`` scores each answer, ``summary.py``
makes the per-category table. With no checks or rubric every output is still recorded and the
table reports length and format statistics per category.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import BudgetExceeded, InputError, TeacherError
from promptbake.ids import stable_hash
from promptbake.output.atomic import ensure_dir, write_jsonl_atomic
from promptbake.plan.planner import DEFAULT_RESERVE
from promptbake.specification.models import TeacherConfig
from promptbake.store.db import PlannedRequest, Store
from promptbake.teacher.client import ChatResult
from promptbake.teacher.config import endpoint_identity, model_name
from promptbake.teacher.jobs import StepJob, bounded
from promptbake.teacher.link import Link, Links
from promptbake.teacher.online import send_to_store
from promptbake.teacher.pool import FailureLog, PoolStats
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.progress import Progress
from promptbake.teacher.tokens import count_messages
from promptbake.workflows.evaluate.scoring import (
    Scoring,
    answer_outputs,
    judge_format,
    judge_messages,
    parse_verdict,
    score_row,
)
from promptbake.workflows.evaluate.summary import Group, best_settings, format_table, summarise
from promptbake.workflows.evaluate.testset import TestItem, load_test, parse_sweeps
from promptbake.workflows.sync import synchronous


@dataclass
class EvalOptions:
    store_path: Path
    no_cache: bool = False
    max_cost: float | None = None
    progress: bool = True
    model_version: str | None = None  # keys the answers instead of the base URL (a retrained model)


@dataclass
class Usage:
    """Requests and spend of one eval run (both phases)."""

    planned: int = 0
    sent: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    estimated: int = 0  # answers without usable usage, charged their worst case
    estimated_cost: float = 0.0
    capped: int = 0  # requests sent with max_tokens DEFAULT_RESERVE because --max-cost needs a bound
    failures: FailureLog = field(default_factory=FailureLog)

    def add(self, stats: PoolStats) -> None:
        self.sent += stats.done + stats.failed
        self.prompt_tokens += stats.prompt_tokens
        self.completion_tokens += stats.completion_tokens
        self.cost += stats.cost
        self.estimated += stats.estimated
        self.estimated_cost += stats.estimated_cost


class _Calls:
    """One phase (answers, or verdicts): plan into the store, send what has no stored answer,
    read every answer back from the store."""

    def __init__(self, store: Store, config: TeacherConfig, namespace: str, options: EvalOptions,
                 usage: Usage, version: str | None = None) -> None:
        self.store = store
        self.config = config
        self.namespace = namespace
        self.options = options
        self.usage = usage
        # the same model name on another server, or retrained (a new --model-version), answers anew
        self.endpoint = version if version is not None else endpoint_identity(config)

    def plan(self, key: str, ord_: str, category: str, body: dict[str, Any], tag: str,
             variables: dict[str, Any]) -> PlannedRequest:
        cache_key = stable_hash(tag, body, self.endpoint, length=32)
        model = str(body["model"])
        reserve = int(body.get("max_tokens") or DEFAULT_RESERVE)
        return PlannedRequest(
            id=stable_hash(self.namespace, key, cache_key), spec_name=self.namespace, step=tag, step_index=0,
            round=0, ord=f"{ord_}.{cache_key[:8]}", cell_key=key, category=category, parent_id=None,
            item_index=0, vars=variables, body=body, cache_key=cache_key,
            est_tokens=count_messages(body["messages"], model) + reserve,
        )

    async def run(self, planned: list[PlannedRequest], check: Callable[[ChatResult], Any],
                  label: str, links: Links) -> tuple[dict[str, Any], dict[str, str]]:
        """(request id → stored outputs, request id → error) for ``planned``."""
        # the plan of this run only: --no-cache re-asks these, not every eval ever run into the store
        self.store.replan(self.namespace, 0, 0, planned)
        if self.options.no_cache:
            self.store.forget_answers(self.namespace, 0)
        else:
            self.store.serve_from_cache(self.namespace, 0)
        wanted = {r.id for r in planned}
        self.usage.planned += len(wanted)
        jobs = [StepJob(id=r.id, body=r.body, est_tokens=r.est_tokens, check=check, cache_key=r.cache_key)
                for r in self.store.pending(self.namespace, 0) if r.id in wanted]
        if self.options.max_cost is not None:  # these are sent with a cap (generate.bounded): say so
            self.usage.capped += sum(1 for job in jobs if bounded(job) is not job)
        where = ""
        if jobs:
            link = await links.get(self.config)
            where = link.endpoint.where()
            stats = await self._send(jobs, link, label)
            self.usage.add(stats)
            if stats.stopped_for_budget:
                raise BudgetExceeded(
                    f"--max-cost ${self.options.max_cost:.2f} reached after spending ${self.usage.cost:.4f}; "
                    f"every answer so far is stored in {self.options.store_path}, re-run to continue"
                )
        answers = {r.id: r.outputs for r in self.store.succeeded(self.namespace, 0) if r.id in wanted}
        errors = {f["id"]: f["error"] for f in self.store.failures(self.namespace) if f["id"] in wanted}
        if jobs and errors and not answers:
            n, reason = self.usage.failures.most_common(1)[0] if self.usage.failures.total else (len(errors), "")
            raise TeacherError(f"{label}: none of the {len(errors)} requests to {where} succeeded (most common, "
                               f"{n} ×: {reason}); nothing was written, the store keeps the errors")
        return answers, errors

    async def _send(self, jobs: list[StepJob], link: Link, label: str) -> PoolStats:
        def count(outcome: Any) -> None:
            self.usage.failed += 0 if outcome.ok else 1

        return await send_to_store(
            self.store, link, jobs,
            progress=Progress(self.options.progress, len(jobs), label),
            max_cost=None if self.options.max_cost is None else self.options.max_cost - self.usage.cost,
            on_outcome=count,
            failures=self.usage.failures,
        )


@dataclass
class EvalReport:
    out: Path
    rows: list[dict[str, Any]]
    groups: list[Group]
    settings: list[dict[str, Any]]
    usage: Usage

    def format(self) -> str:
        lines = [format_table(self.groups)]
        if len(self.settings) > 1:
            best = best_settings(self.groups)
            lines += [f"best for {cat}: {label} ({value:.2f})" for cat, (label, value) in best.items()]
        u = self.usage
        errors = sum(1 for r in self.rows if r["error"] is not None)
        lines.append(
            f"{len(self.rows)} results → {self.out}; {u.planned} requests, {u.planned - u.sent} from the store, "
            f"{u.sent} sent ({u.failed} failed), {u.prompt_tokens + u.completion_tokens:,} tokens, ${u.cost:.4f}"
        )
        if u.estimated:
            lines.append(f"note: ${u.estimated_cost:.4f} of the spend is estimated: {u.estimated} answers came "
                         "without usage and were charged their worst case")
        if u.capped:
            lines.append(f"note: under --max-cost, {u.capped} requests that set no max_tokens were sent with "
                         f"max_tokens {DEFAULT_RESERVE} (sweep max_tokens to choose another)")
        if errors:
            lines.append(f"warning: {errors} answers failed (see 'error' in {self.out}); re-run to retry them")
        if u.failures.total:
            lines.append(u.failures.format())
        return "\n".join(lines)


async def evaluate_async(items: list[TestItem], model: TeacherConfig, options: EvalOptions, *,
                         scoring: Scoring | None = None, grid: list[dict[str, Any]] | None = None,
                         judge: TeacherConfig | None = None, usage: Usage | None = None,
                         sampling: Mapping[str, Any] | None = None, given: Mapping[str, str] | None = None,
                         with_usage: bool = False) -> list[dict[str, Any]]:
    """Answer every (item, setting) with ``model``, judge the answers if there is a rubric, and
    return one scored row each, in item then setting order; ``usage`` accumulates requests and spend.

    ``sampling``: parameters every request carries under its setting (a study bounds answers by the
    spec's ``max_tokens``). ``given``: answers already known, by item id (the teacher's own, from the
    test split): nothing is asked of ``model``, the answers are scored (and judged) as they are.
    ``with_usage``: each row gets ``usage``, the tokens, cost and seconds of its answer as stored."""
    scoring = scoring or Scoring()
    grid = grid or [{}]
    if scoring.criteria is not None and judge is None:
        raise InputError("a rubric needs a judge: pass judge=judge_config(...)")
    usage = usage if usage is not None else Usage()
    for item in items:
        scoring.reference_for(item)  # a reference template that cannot render fails before anything is paid
    name = model_name(model)
    if options.max_cost is not None:  # before anything is sent: an unpriced model cannot be bounded
        if given is None:
            PriceTable(model.prices).require([name], options.max_cost)
        if judge is not None:
            PriceTable(judge.prices).require([model_name(judge)], options.max_cost)
    with Store(options.store_path) as store:
        calls = _Calls(store, model, f"@eval/{name}", options, usage, options.model_version)
        planned = []
        for i, item in enumerate(items):
            for j, settings in enumerate(grid):
                body: dict[str, Any] = {"model": name, "messages": item.prompt, **(sampling or {}), **settings}
                if item.tools:
                    body["tools"] = item.tools
                planned.append(calls.plan(item.id, f"{i:09d}.{j:04d}", item.category, body, "eval",
                                          {"id": item.id, "settings": settings}))
        verdicts: dict[str, Any] = {}
        judge_errors: dict[str, str] = {}
        judged: dict[str, str] = {}  # answer request id → judge request id
        async with Links() as links:  # the answers and the judge share a server's link
            if given is None:
                answers, errors = await calls.run(planned, answer_outputs, f"eval {name}", links)
            else:
                answers = {r.id: [{"text": given[items[k // len(grid)].id], "finish_reason": "stop"}]
                           for k, r in enumerate(planned) if items[k // len(grid)].id in given}
                errors = {}
            if scoring.criteria is not None and judge is not None:
                judge_name = model_name(judge)
                judges = _Calls(store, judge, f"@judge/{judge_name}", options, usage)
                judge_planned = []
                for k, request in enumerate(planned):
                    if answers.get(request.id):
                        item = items[k // len(grid)]
                        # no temperature: reasoning models reject any but their default
                        body = {"model": judge_name,
                                "messages": judge_messages(item, answers[request.id][0]["text"], scoring.criteria)}
                        response_format = judge_format(judge)
                        if response_format is not None:
                            body["response_format"] = response_format
                        jr = judges.plan(request.id, request.ord, request.category, body, "judge",
                                         {"answer": request.id})
                        judged[request.id] = jr.id
                        judge_planned.append(jr)
                verdicts, judge_errors = await judges.run(judge_planned, parse_verdict, f"judge {judge_name}", links)
        spent = store.answer_usage(r.id for r in planned) if with_usage and given is None else {}
    rows = []
    for k, request in enumerate(planned):
        item, settings = items[k // len(grid)], grid[k % len(grid)]
        outputs = answers.get(request.id)
        answer = outputs[0] if outputs else None
        error = None if answer is not None else errors.get(request.id, "no answer")
        jid = judged.get(request.id, "")
        verdict = verdicts[jid][0] if verdicts.get(jid) else None
        row = score_row(item, settings, answer, error, scoring, verdict, judge_errors.get(jid))
        if with_usage:
            row["usage"] = spent.get(request.id)
        rows.append(row)
    return rows


evaluate = synchronous(evaluate_async)


async def run_eval_async(data: str | Path, out: str | Path, model: TeacherConfig, *, metadata: str | Path | None = None,
                         scoring: Scoring | None = None,
                         sweeps: Sequence[str] | Mapping[str, Sequence[int | float]] = (),
                         judge: TeacherConfig | None = None,
                         store_path: str | Path | None = None, no_cache: bool = False,
                         max_cost: float | None = None, progress: bool = True,
                         model_version: str | None = None) -> EvalReport:
    """Load the test file, evaluate, write the per-example JSONL atomically; the library entry point
    behind ``promptbake eval``. The store defaults to OUT with a ``.db`` suffix, so re-running the
    same command resumes instead of paying again."""
    out = Path(out)
    store = Path(store_path) if store_path is not None else out.with_suffix(".db")
    if store.resolve() == out.resolve():
        raise InputError(f"{out}: the output file cannot also be the store")
    grid = parse_sweeps(sweeps)
    items = load_test(data, metadata)
    options = EvalOptions(store, no_cache=no_cache, max_cost=max_cost, progress=progress,
                          model_version=model_version)
    usage = Usage()
    rows = await evaluate_async(items, model, options, scoring=scoring, grid=grid, judge=judge, usage=usage)
    ensure_dir(out.parent)
    write_jsonl_atomic(out, rows)
    return EvalReport(out, rows, summarise(rows), grid, usage)


run_eval = synchronous(run_eval_async)
