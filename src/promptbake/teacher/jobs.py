"""What a planned request becomes when it is sent, and what its answer becomes when it comes back.

Every transport (the online pool, the Batch API, offline batch files) passes through these rules,
so they cannot drift apart: the model is the one planned (never rewritten at send time), the
output is capped under a budget, a retry after a rejected answer changes the seed, the budget
reserves the dearest answer a request can get, and an answer costs its usage, or that worst
case when it came without usage (marked estimated, never $0). One function turns an outcome into
the row the store keeps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from promptbake.ids import stable_hash
from promptbake.plan.planner import DEFAULT_RESERVE
from promptbake.store.db import AttemptRow, ResultRow
from promptbake.teacher.client import ChatResult
from promptbake.teacher.parse import parse_choices

if TYPE_CHECKING:
    from promptbake.specification.models import Step

CostFn = Callable[[str, int, int], float]

# The prompt's token count is an estimate (tiktoken, maybe another model's encoding); the server
# counts its own way. The budget reserves this much more, so the bound holds when it counts more.
PROMPT_MARGIN = 1.25
PROMPT_SLACK = 16  # tokens: the chat format's overhead varies between servers


@dataclass
class Job:
    id: str
    body: dict[str, Any]  # the full request body including the model; never the key
    est_tokens: int  # what TPM reserves: estimated prompt + max tokens × n
    check: Callable[[ChatResult], Any] | None = None  # raises errors.ResponseRejected to retry
    reseed: bool = False  # after a rejection, retry with a different "seed"


@dataclass
class StepJob(Job):
    cache_key: str = ""


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
    estimated: bool = False  # no usable usage came back: tokens and cost are the worst case


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
    kind: str | None = None  # the error kind that ended a failed job
    final: bool = False  # failed for a reason sending it again cannot fix

    @property
    def reason(self) -> str:
        """Why it failed, in the server's words: the last attempt's error without the "gave up
        after N attempts" wrapper, or, for a final failure, the error that says why it was final."""
        last = self.attempts[-1].error if self.attempts and not self.final else None
        return last or self.error or "unknown"


def checker(step: Step) -> Callable[[ChatResult], Any]:
    """The step's parse rules as a job's check: a rejected answer raises ResponseRejected."""

    def check(result: ChatResult) -> Any:
        return parse_choices(result.contents, result.finish_reasons, step.parse, step.json_schema, step.min_items)

    return check


class Sendable(Protocol):
    """A planned request as the store or the planner hands it over."""

    @property
    def id(self) -> str: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def est_tokens(self) -> int: ...
    @property
    def cache_key(self) -> str: ...


def step_job(request: Sendable, check: Callable[[ChatResult], Any]) -> StepJob:
    return StepJob(
        id=request.id,
        body=request.body,
        est_tokens=request.est_tokens,
        check=check,
        reseed=True,  # a rejected answer is asked again with another seed, derived if the step sets none
        cache_key=request.cache_key,
    )


def unseeded(body: dict[str, Any]) -> str:
    """A request's identity apart from its seed: what top-up rounds and retries vary."""
    return stable_hash({k: v for k, v in body.items() if k != "seed"}, length=32)


def capped(body: dict[str, Any]) -> bool:
    return body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None


def bounded(job: StepJob) -> StepJob:
    """The job as sent under ``--max-cost``: without max tokens an answer has no worst case, so it
    gets ``DEFAULT_RESERVE`` (what its TPM estimate already assumed). Only the sent body changes,
    not the cache key: a capped answer that was not cut off is the same answer uncapped, and one
    that was cut off is rejected and retried like any other."""
    return job if capped(job.body) else replace(job, body={**job.body, "max_tokens": DEFAULT_RESERVE})


def attempt_body(job: Job, rejections: int) -> dict[str, Any]:
    """After a rejection, the body with another seed: the step's own plus the number of
    rejections, or one derived from the job id when the step sets none (a deterministic
    teacher would otherwise answer the same bytes again)."""
    body = job.body
    if not (job.reseed and rejections):
        return body
    seed = body.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = int(hashlib.sha256(job.id.encode()).hexdigest()[:8], 16) % 1_000_000
    return {**body, "seed": seed + rejections}


def worst_tokens(job: Job) -> tuple[int, int]:
    """(prompt, completion) tokens of the dearest answer ``job`` can get: the prompt estimate with
    a margin, and every completion token it may use (max tokens × n). With no max tokens set, the
    whole estimate is counted as completion tokens (the dearer kind)."""
    body = job.body
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    if cap is None:
        return 0, math.ceil(job.est_tokens * PROMPT_MARGIN) + PROMPT_SLACK
    out = int(cap) * int(body.get("n") or 1)
    return math.ceil(max(0, job.est_tokens - out) * PROMPT_MARGIN) + PROMPT_SLACK, out


def worst_cost(cost: CostFn, job: Job) -> float:
    """Cost if the answer used every token it may (see :func:`worst_tokens`)."""
    prompt, completion = worst_tokens(job)
    return cost(str(job.body.get("model", "")), prompt, completion)


@dataclass
class Charge:
    """What an answer is billed: its usage, or the worst case when none came back."""

    prompt_tokens: int
    completion_tokens: int
    cost: float
    estimated: bool


def charge(cost: CostFn, job: Job, result: ChatResult) -> Charge:
    """Bill an answer to the model that was asked: by its usage, or, with no usable usage, by
    what was reserved for it, never $0 (the summary says how much is estimated)."""
    model = str(job.body.get("model") or result.model)
    if result.usage_known:
        prompt, completion = result.prompt_tokens, result.completion_tokens
        return Charge(prompt, completion, cost(model, prompt, completion), False)
    prompt, completion = worst_tokens(job)
    return Charge(prompt, completion, cost(model, prompt, completion), True)


def result_row(outcome: Outcome) -> ResultRow:
    """The row the store keeps for a finished job: every attempt, paid or not, and the answer."""
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
