"""Evals: run a model on a test split through the teacher pool and score every answer.

The model under test is called exactly like a teacher (same client, limiter, pool and store), so
rate limits, retries, ``--max-cost`` and resuming behave the same. Every request is planned into a
store before anything is sent, under its own namespace (``@eval/<model>``, ``@judge/<model>``), and
answers are committed as they arrive: a re-run sends only what has no stored answer, and an error
or Ctrl-C loses at most what was in flight.

Scoring: deterministic checks (``checks.Checks``) and an optional rubric that a judge model scores
1-5 (G-Eval style: the criteria in, reasoning and then a score out, as JSON). With neither, every
output is still recorded and the table reports length and format statistics per category.
A ``--sweep`` crosses sampling settings, so the table answers "which temperature?" per category.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptbake.output.atomic import ensure_dir, write_jsonl_atomic
from promptbake.build.checks import Checks
from promptbake.teacher.client import ChatResult, Endpoint
from promptbake.errors import BudgetExceeded, DataFileError, InputError
from promptbake.ids import stable_hash
from promptbake.teacher.send import Progress, StepJob, send_to_store
from promptbake.output.jsonl import read_jsonl
from promptbake.output.sidecar import split_metadata
from promptbake.teacher.parse import parse_output
from promptbake.teacher.pool import PoolStats
from promptbake.spec.models import SamplingParams, Spec, TeacherConfig
from promptbake.store.db import PlannedRequest, Store
from promptbake.teacher.config import TeacherOverrides, merge, model_name, open_teacher
from promptbake.teacher.tokens import count_messages

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["reasoning", "score"],
}
JUDGE_SYSTEM = (
    "You are a strict evaluator of an AI assistant's answers. Grade the answer against the "
    "criteria on a scale from 1 (does not meet them at all) to 5 (meets them fully). First reason "
    "step by step about each part of the criteria, then give the score. Reply with JSON only: "
    '{"reasoning": "<your reasoning>", "score": <1-5>}'
)
SWEEPABLE = ("temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty")
DEFAULT_RESERVE = 512  # completion tokens TPM reserves per answer when max_tokens is not set
_SENT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")  # no training-only "weight"


# --- input ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestItem:
    """One test example: what is sent (everything before the last assistant turn) and the
    reference answer (that turn), which ``exact`` checks and the judge compare against."""

    id: str
    category: str
    prompt: list[dict[str, Any]]
    reference: str | None
    tools: list[dict[str, Any]] | None = None


def load_test(data: str | Path, metadata: str | Path | None = None) -> list[TestItem]:
    """Read an openai-chat test file; ids and categories come from the metadata sidecar (default:
    the one next to it), else ids are ``line<N>`` and every category is ``all``."""
    data = Path(data)
    lines = list(read_jsonl(data, "test"))
    if not lines:
        raise DataFileError(f"{data}: no examples")
    metas = split_metadata(data, len(lines), metadata) or [{}] * len(lines)
    items = []
    for (number, row), meta in zip(lines, metas, strict=True):
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataFileError(f"{data}:{number}: no 'messages' list (eval reads openai-chat files)")
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        prompt = messages if last is None else messages[:last]
        if not prompt:
            raise DataFileError(f"{data}:{number}: nothing before the assistant answer to send")
        reference = messages[last].get("content") if last is not None else None
        items.append(TestItem(
            id=str(meta.get("id") or f"line{number}"),
            category=str(meta.get("category") or "all"),
            prompt=[{k: m[k] for k in _SENT_KEYS if k in m} for m in prompt],
            reference=reference if isinstance(reference, str) else None,
            tools=row.get("tools") or None,
        ))
    return items


def _value(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None


def parse_sweeps(sweeps: Sequence[str]) -> list[dict[str, Any]]:
    """``["temperature=0,0.7", "top_p=1,0.9"]`` → the Cartesian grid of settings (``[{}]``: none)."""
    axes: dict[str, list[int | float]] = {}
    for text in sweeps:
        name, sep, values = (part.strip() for part in text.partition("="))
        if not sep or not values:
            raise InputError(f"--sweep {text!r}: write NAME=V1,V2,...")
        if name not in SWEEPABLE:
            raise InputError(f"--sweep {name}: not a sweepable sampling parameter (use {', '.join(SWEEPABLE)})")
        if name in axes:
            raise InputError(f"--sweep {name} is given twice")
        axes[name] = [_value(v.strip(), f"--sweep {name}") for v in values.split(",")]
    grid = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    for settings in grid:
        try:
            SamplingParams.model_validate(settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"--sweep {err['loc'][0]}={err['input']}: {err['msg']}") from None
    return grid


def setting_label(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "default"


# --- scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scoring:
    """What makes an answer pass: checks, and a rubric score of at least ``pass_score``."""

    checks: Checks | None = None
    criteria: str | None = None
    pass_score: int = 4

    @classmethod
    def build(cls, spec: Spec | None, flags: dict[str, Any] | None = None, criteria: str | None = None,
              pass_score: int | None = None) -> Scoring:
        """The spec's ``eval`` block (checks default to ``example.checks``) with the command-line
        flags (``Checks`` field aliases: json, schema, regex, max_length, exact) laid over it."""
        block = spec.eval if spec is not None else None
        base = block.checks if block is not None and block.checks is not None else None
        if base is None and spec is not None:
            base = spec.example.checks
        data = base.model_dump(by_alias=True, exclude_defaults=True) if base is not None else {}
        data.update({k: v for k, v in (flags or {}).items() if v is not None and v is not False})
        try:
            checks = Checks.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"check {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return cls(
            checks=checks if checks.active() else None,
            criteria=criteria or (block.criteria if block is not None else None),
            pass_score=pass_score or (block.pass_score if block is not None else 4),
        )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def score_row(item: TestItem, settings: dict[str, Any], answer: dict[str, str] | None, error: str | None,
              scoring: Scoring, verdict: dict[str, Any] | None = None,
              judge_error: str | None = None) -> dict[str, Any]:
    """One output line. ``score`` (0-1) is the mean of the check result (0/1) and the judge score
    rescaled ((n-1)/4); ``pass`` needs every check and ``judge ≥ pass_score``. Both are None when
    there was nothing to score (no checks or rubric, or the call or the judge failed)."""
    text = answer["text"] if answer is not None else None
    row: dict[str, Any] = {
        "id": item.id, "category": item.category, "settings": settings, "output": text,
        "finish_reason": answer.get("finish_reason") if answer is not None else None,
        "error": error, "length": len(text) if text is not None else None,
        "json": _is_json(text) if text is not None else None,
    }
    scores: dict[str, float | int] = {}
    passed: list[bool] = []
    if text is not None and scoring.checks is not None:
        row["failures"] = scoring.checks.failures(text, item.reference)
        scores["checks"] = 0.0 if row["failures"] else 1.0
        passed.append(not row["failures"])
    judged = text is not None and scoring.criteria is not None
    if judged and verdict is not None:
        scores["judge"] = verdict["score"]
        row["judge_reasoning"] = verdict["reasoning"]
        passed.append(verdict["score"] >= scoring.pass_score)
    elif judged:
        row["judge_error"] = judge_error or "not judged"
    row["scores"] = scores
    complete = bool(scores) and not (judged and verdict is None)
    parts = [scores["checks"]] if "checks" in scores else []
    parts += [(scores["judge"] - 1) / 4] if "judge" in scores else []
    row["score"] = round(sum(parts) / len(parts), 4) if complete else None
    row["pass"] = all(passed) if complete else None
    return row


def judge_messages(item: TestItem, output: str, criteria: str) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in item.prompt)
    parts = [f"Criteria:\n{criteria}", f"Conversation:\n{conversation}"]
    if item.reference is not None:
        parts.append(f"Reference answer (a good answer, for comparison):\n{item.reference}")
    parts.append(f"Answer to grade:\n{output}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _judge_format(config: TeacherConfig) -> dict[str, Any] | None:
    """Structured output for the verdict, in the form the judge's server accepts (FACTS.md:
    llama.cpp's server wants ``json_object`` with a schema, not ``json_schema``)."""
    mode = config.structured_output
    if mode == "auto":
        mode = "json_object" if config.kind == "local" else "json_schema"
    if mode == "json_object":
        return {"type": "json_object", "schema": JUDGE_SCHEMA}
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": JUDGE_SCHEMA}}
    return None


def _answers(result: ChatResult) -> list[dict[str, str]]:
    return [{"text": c, "finish_reason": f} for c, f in zip(result.contents, result.finish_reasons, strict=False)]


def _verdict(result: ChatResult) -> list[Any]:
    # a verdict that is not JSON or out of range is rejected, so the pool asks again
    return parse_output(result.contents[0] if result.contents else "", "json", JUDGE_SCHEMA)


# --- running ----------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    store_path: Path
    no_cache: bool = False
    max_cost: float | None = None
    progress: bool = True


@dataclass
class Usage:
    """Requests and spend of one eval run (both phases)."""

    planned: int = 0
    sent: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, stats: PoolStats) -> None:
        self.sent += stats.done + stats.failed
        self.prompt_tokens += stats.prompt_tokens
        self.completion_tokens += stats.completion_tokens
        self.cost += stats.cost


class _Calls:
    """One phase (answers, or verdicts): plan into the store, send what has no stored answer,
    read every answer back from the store."""

    def __init__(self, store: Store, config: TeacherConfig, namespace: str, options: EvalOptions,
                 usage: Usage) -> None:
        self.store = store
        self.config = config
        self.namespace = namespace
        self.options = options
        self.usage = usage

    def plan(self, key: str, ord_: str, category: str, body: dict[str, Any], tag: str,
             variables: dict[str, Any]) -> PlannedRequest:
        cache_key = stable_hash(tag, body, length=32)
        model = str(body["model"])
        reserve = int(body.get("max_tokens") or DEFAULT_RESERVE)
        return PlannedRequest(
            id=stable_hash(self.namespace, key, cache_key), spec_name=self.namespace, step=tag, step_index=0,
            round=0, ord=f"{ord_}.{cache_key[:8]}", cell_key=key, category=category, parent_id=None,
            item_index=0, vars=variables, body=body, cache_key=cache_key,
            est_tokens=count_messages(body["messages"], model) + reserve,
        )

    def run(self, planned: list[PlannedRequest], check: Callable[[ChatResult], Any],
            label: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(request id → stored outputs, request id → error) for ``planned``."""
        self.store.insert_requests(planned)
        if self.options.no_cache:
            self.store.forget_answers(self.namespace, 0)
        else:
            self.store.serve_from_cache(self.namespace, 0)
        wanted = {r.id for r in planned}
        self.usage.planned += len(wanted)
        jobs = [StepJob(id=r.id, body=r.body, est_tokens=r.est_tokens, check=check, cache_key=r.cache_key)
                for r in self.store.pending(self.namespace, 0) if r.id in wanted]
        if jobs:
            with open_teacher(self.config) as (endpoint, config):
                stats = asyncio.run(self._send(jobs, endpoint, config, label))
            self.usage.add(stats)
            if stats.stopped_for_budget:
                raise BudgetExceeded(
                    f"--max-cost ${self.options.max_cost:.2f} reached after spending ${self.usage.cost:.4f}; "
                    f"every answer so far is stored in {self.options.store_path}, re-run to continue"
                )
        answers = {r.id: r.outputs for r in self.store.succeeded(self.namespace, 0) if r.id in wanted}
        errors = {f["id"]: f["error"] for f in self.store.failures(self.namespace) if f["id"] in wanted}
        return answers, errors

    async def _send(self, jobs: list[StepJob], endpoint: Endpoint, config: TeacherConfig, label: str) -> PoolStats:
        def count(outcome: Any) -> None:
            self.usage.failed += 0 if outcome.ok else 1

        return await send_to_store(
            self.store, endpoint, config, jobs,
            progress=Progress(self.options.progress, len(jobs), label),
            max_cost=None if self.options.max_cost is None else self.options.max_cost - self.usage.cost,
            on_outcome=count,
        )


@dataclass
class Group:
    """The statistics of one category under one setting."""

    category: str
    setting: str
    n: int = 0
    errors: int = 0
    scored: int = 0
    passed: int = 0
    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    json_ok: int = 0
    cut: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.n += 1
        if row["output"] is None:
            self.errors += 1
            return
        self.lengths.append(row["length"])
        self.json_ok += bool(row["json"])
        self.cut += row["finish_reason"] == "length"
        if row["pass"] is not None:
            self.scored += 1
            self.passed += bool(row["pass"])
            self.scores.append(row["score"])

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.scored if self.scored else None

    @property
    def mean_score(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    def as_dict(self) -> dict[str, Any]:
        answered = len(self.lengths)
        return {
            "category": self.category, "setting": self.setting, "n": self.n, "errors": self.errors,
            "pass_rate": self.pass_rate, "mean_score": self.mean_score,
            "mean_length": statistics.fmean(self.lengths) if self.lengths else None,
            "median_length": statistics.median(self.lengths) if self.lengths else None,
            "json_share": self.json_ok / answered if answered else None,
            "cut_share": self.cut / answered if answered else None,
        }


def summarise(rows: list[dict[str, Any]]) -> list[Group]:
    """Groups per (category, setting), categories sorted, plus an ``all`` row per setting."""
    groups: dict[tuple[str, str], Group] = {}
    for row in rows:
        label = setting_label(row["settings"])
        keys = [(row["category"], label)]
        keys += [("all", label)] if row["category"] != "all" else []
        for key in keys:
            groups.setdefault(key, Group(*key)).add(row)
    categories = {cat for cat, _ in groups if cat != "all"}
    if len(categories) == 1:  # "all" would repeat the only category
        groups = {k: g for k, g in groups.items() if k[0] != "all"}
    settings = list(dict.fromkeys(setting_label(r["settings"]) for r in rows))
    order = [*sorted(categories), "all"]
    return [groups[(c, s)] for c in order for s in settings if (c, s) in groups]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(groups: list[Group]) -> str:
    wide = max([8, *(len(g.category) for g in groups)])
    sweep = len({g.setting for g in groups}) > 1
    head = f"{'category':<{wide}} " + (f"{'setting':<24} " if sweep else "")
    lines = [head + f"{'n':>5} {'failed':>6} {'pass':>5} {'score':>5} {'len':>7} {'median':>7} {'json':>5} {'cut':>5}"]
    for g in groups:
        d = g.as_dict()
        lines.append(
            f"{g.category:<{wide}} " + (f"{g.setting:<24} " if sweep else "")
            + f"{g.n:>5} {g.errors:>6} {_pct(d['pass_rate']):>5} {_num(d['mean_score']):>5} "
            f"{_num(d['mean_length'], 1):>7} {_num(d['median_length'], 1):>7} {_pct(d['json_share']):>5} "
            f"{_pct(d['cut_share']):>5}"
        )
    return "\n".join(lines)


def best_settings(groups: list[Group]) -> dict[str, tuple[str, float]]:
    """Per category, the setting with the highest pass rate (else mean score): the sweep's answer."""
    best: dict[str, tuple[str, float]] = {}
    for g in groups:
        value = g.pass_rate if g.pass_rate is not None else g.mean_score
        if value is not None and (g.category not in best or value > best[g.category][1]):
            best[g.category] = (g.setting, value)
    return best


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
        if errors:
            lines.append(f"warning: {errors} answers failed (see 'error' in {self.out}); re-run to retry them")
        return "\n".join(lines)


def judge_config(spec: Spec | None, model: str | None, base_url: str | None) -> TeacherConfig:
    """The judge: the spec's teacher (limits, key, prices) unless ``--judge-model``/``--judge-base-url``
    say otherwise."""
    config = merge(spec.teacher if spec is not None else TeacherConfig(),
                   TeacherOverrides(model=model, base_url=base_url))
    if config.kind == "remote" and config.model is None:
        raise InputError("a rubric needs a judge model: pass --judge-model (or --spec with teacher.model)")
    return config


def evaluate(items: list[TestItem], model: TeacherConfig, options: EvalOptions, *, scoring: Scoring | None = None,
             grid: list[dict[str, Any]] | None = None, judge: TeacherConfig | None = None,
             usage: Usage | None = None) -> list[dict[str, Any]]:
    """Answer every (item, setting) with ``model``, judge the answers if there is a rubric, and
    return one scored row each, in item then setting order; ``usage`` accumulates requests and spend."""
    scoring = scoring or Scoring()
    grid = grid or [{}]
    if scoring.criteria is not None and judge is None:
        raise InputError("a rubric needs a judge: pass judge=judge_config(...)")
    usage = usage if usage is not None else Usage()
    name = model_name(model)
    with Store(options.store_path) as store:
        calls = _Calls(store, model, f"@eval/{name}", options, usage)
        planned = []
        for i, item in enumerate(items):
            for j, settings in enumerate(grid):
                body: dict[str, Any] = {"model": name, "messages": item.prompt, **settings}
                if item.tools:
                    body["tools"] = item.tools
                planned.append(calls.plan(item.id, f"{i:09d}.{j:04d}", item.category, body, "eval",
                                          {"id": item.id, "settings": settings}))
        answers, errors = calls.run(planned, _answers, f"eval {name}")
        verdicts: dict[str, Any] = {}
        judge_errors: dict[str, str] = {}
        judged: dict[str, str] = {}  # answer request id → judge request id
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
                    response_format = _judge_format(judge)
                    if response_format is not None:
                        body["response_format"] = response_format
                    jr = judges.plan(request.id, request.ord, request.category, body, "judge", {"answer": request.id})
                    judged[request.id] = jr.id
                    judge_planned.append(jr)
            verdicts, judge_errors = judges.run(judge_planned, _verdict, f"judge {judge_name}")
    rows = []
    for k, request in enumerate(planned):
        item, settings = items[k // len(grid)], grid[k % len(grid)]
        outputs = answers.get(request.id)
        answer = outputs[0] if outputs else None
        error = None if answer is not None else errors.get(request.id, "no answer")
        jid = judged.get(request.id, "")
        verdict = verdicts[jid][0] if verdicts.get(jid) else None
        rows.append(score_row(item, settings, answer, error, scoring, verdict, judge_errors.get(jid)))
    return rows


def run_eval(data: str | Path, out: str | Path, model: TeacherConfig, *, metadata: str | Path | None = None,
             scoring: Scoring | None = None, sweeps: Sequence[str] = (), judge: TeacherConfig | None = None,
             store_path: str | Path | None = None, no_cache: bool = False, max_cost: float | None = None,
             progress: bool = True) -> EvalReport:
    """Load the test file, evaluate, write the per-example JSONL atomically; the library entry point
    behind ``promptbake eval``. The store defaults to OUT with a ``.db`` suffix, so re-running the
    same command resumes instead of paying again."""
    out = Path(out)
    store = Path(store_path) if store_path is not None else out.with_suffix(".db")
    if store.resolve() == out.resolve():
        raise InputError(f"{out}: the output file cannot also be the store")
    grid = parse_sweeps(sweeps)
    items = load_test(data, metadata)
    options = EvalOptions(store, no_cache=no_cache, max_cost=max_cost, progress=progress)
    usage = Usage()
    rows = evaluate(items, model, options, scoring=scoring, grid=grid, judge=judge, usage=usage)
    ensure_dir(out.parent)
    write_jsonl_atomic(out, rows)
    return EvalReport(out, rows, summarise(rows), grid, usage)
