"""Planning: cells and stored answers → the next step's requests.

Ids and cache keys are pure functions of what defines a request, so planning the same spec twice
(a resumed run) produces the same rows, and ``INSERT OR IGNORE`` makes it idempotent. The cache key
is the request's *content* (model, messages, sampling params, parse mode) plus a replicate tag
that tells deliberate repeats apart: changing one step's template re-pays only that step.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from promptbake.curate.checks import last_assistant
from promptbake.curate.normalise import normalise
from promptbake.errors import TemplateError
from promptbake.ids import stable_hash
from promptbake.plan.expand import Cell
from promptbake.plan.judge import example_text, judge_steps
from promptbake.plan.routing import check_routes, pick
from promptbake.specification.models import MessageTemplate, Spec, Step, TeacherConfig
from promptbake.specification.templates import Templates
from promptbake.store.db import FanoutDrop, PlannedRequest, StoredRequest
from promptbake.teacher.tokens import count_messages

DEFAULT_RESERVE = 512  # completion tokens reserved for TPM when a step sets no max_tokens


class MessageRenderer:
    """Compiles a list of message templates once and renders them for many rows."""

    def __init__(self, templates: Templates, messages: list[MessageTemplate], where: str) -> None:
        self.templates = templates
        self.parts: list[tuple[MessageTemplate, str]] = []
        for j, message in enumerate(messages):
            if message.template is not None:
                name = message.template
            else:
                name = templates.add_inline(f"{where}.messages[{j}].content", message.content or "")
            try:
                templates.get(name)  # compile now: a syntax error surfaces before anything is paid
            except TemplateError as exc:
                if message.template is None:
                    raise
                # a missing or broken file: say which spec field points at it
                raise TemplateError(f"{where}.messages[{j}].template: {exc}") from exc
            self.parts.append((message, name))

    def render(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for message, name in self.parts:
            rendered: dict[str, Any] = {"role": message.role, "content": self.templates.render(name, variables)}
            if message.weight is not None:
                rendered["weight"] = message.weight
            out.append(rendered)
        return out


def row_key(variables: dict[str, Any]) -> str:
    """What makes two rows of a cell the same row: every variable, strings normalised for case,
    whitespace and punctuation as exact dedupe normalises them."""
    return stable_hash(_normalised(variables))


def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def single_output(step: Step) -> bool:
    """True when each request of the step yields exactly one row for the next step."""
    return step.parse != "list" and (step.n or 1) == 1 and (step.repeat or 1) == 1


class Planner:
    """Plans ``spec``'s requests for ``teacher`` (the merged teacher config: which model answers
    each step is decided here, see :mod:`promptbake.plan.routing`). ``topup_round`` (a dataset's
    top-up round, 0 for its first run) varies the seed of steps that set none, as a later round
    of a run does: a top-up must not send the bytes its dataset was already made of."""

    def __init__(self, spec: Spec, templates: Templates, teacher: TeacherConfig, *, topup_round: int = 0) -> None:
        self.spec = spec
        self.teacher_kind = teacher.kind
        self.topup_round = topup_round
        # the spec's steps, then one step per judge: a verdict is planned and paid like an answer
        self.steps = [*spec.steps, *judge_steps(spec)]
        self.real = len(spec.steps)
        self.models = check_routes(self.steps, teacher)  # per step: the model(s) its requests name
        self.renderers = [
            MessageRenderer(templates, step.messages, _where(spec, i, self.real)) for i, step in enumerate(self.steps)
        ]
        self.example = MessageRenderer(templates, spec.example.messages, f"{spec.where()}:example")
        self.filters = spec.filters.compile()
        # what every request of a step sends besides its model and messages, worked out once
        self.params = [{**step.body_params(), **self._response_format(step)} for step in self.steps]

    def parent_index(self, k: int) -> int:
        """The step whose answers step k is planned from: the one before it, except that every
        judge judges the last real step's answers (judges do not wait for one another)."""
        return min(k, self.real) - 1

    def gate(self, variables: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The example a row renders to, and why it fails ``example.checks`` and the filters (empty:
        it passes). Run before any judge, so only examples that can still be kept are judged."""
        messages = self.example.render(variables)
        checks = self.spec.example.checks
        reasons = checks.failures(last_assistant(messages)) if checks is not None else []
        return messages, reasons + self.filters.failures(messages)

    def _response_format(self, step: Step) -> dict[str, Any]:
        """``{"response_format": ...}`` as the step's requests carry it, or nothing."""
        if step.response_format is not None or step.json_schema is None:
            return {} if step.response_format is None else {"response_format": step.response_format}
        mode = self.spec.teacher.structured_output
        if mode == "auto":
            mode = "json_object" if self.teacher_kind == "local" else "json_schema"
        if mode == "json_object":
            # llama.cpp's server constrains decoding by grammar with this form (FACTS.md)
            return {"response_format": {"type": "json_object", "schema": step.json_schema}}
        if mode == "json_schema":
            return {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": step.name, "schema": step.json_schema}}}
        return {}

    def request(
        self,
        k: int,
        variables: dict[str, Any],
        *,
        cell_key: str,
        category: str,
        round_: int,
        ord_: str,
        parent_id: str | None,
        item_index: int,
        replicate: list[Any],
        render_only: dict[str, Any] | None = None,
    ) -> PlannedRequest:
        step = self.steps[k]
        model = pick(self.models[k], self.spec.name, step.name, cell_key, parent_id, item_index, replicate)
        messages = self.renderers[k].render({**variables, **(render_only or {})})
        body: dict[str, Any] = {"model": model, "messages": messages, **self.params[k]}
        # a top-up of a built dataset is its own spec, planned from round 0: its top-up round
        # joins the seed so that no request repeats the bytes of the dataset's first run
        again = [self.topup_round] if self.topup_round else []
        if step.seed is not None:
            # a fresh seed per replicate (the cell's values, which hold a top-up's round), so repeats differ
            body["seed"] = step.seed + int(stable_hash(replicate, length=6), 16) % 1_000_000
        elif round_ > 0 or again:
            # a top-up round must not send round 0's bytes again: a deterministic teacher would
            # answer with the same duplicates (round 0 keeps no seed, so its cache keys stay)
            body["seed"] = int(stable_hash(replicate, round_, *again, length=6), 16) % 1_000_000
        cache_key = stable_hash(body, step.parse, step.json_schema, step.min_items, replicate, length=32)
        reserve = (step.max_tokens or DEFAULT_RESERVE) * (step.n or 1)
        return PlannedRequest(
            id=stable_hash(self.spec.name, step.name, cell_key, parent_id, item_index, replicate, cache_key),
            spec_name=self.spec.name,
            step=step.name,
            step_index=k,
            round=round_,
            ord=ord_,
            cell_key=cell_key,
            category=category,
            parent_id=parent_id,
            item_index=item_index,
            vars=variables,
            body=body,
            cache_key=cache_key,
            est_tokens=count_messages(messages, model) + reserve,
        )

    def first_step(
        self, cells: Iterable[Cell], round_: int, wants: dict[str, int] | None = None
    ) -> Iterator[PlannedRequest]:
        """Requests of step 0: ``repeat`` per cell in round 0 (default: enough single answers for
        ``count``, or one list request); later rounds ask again for cells that still lack examples.
        Step 0's templates see ``count``: the cell's count, and for a list step at least its
        ``min_items`` (a prompt must not ask for fewer items than the parse accepts). A top-up list
        asks for a full list, for more choice against duplicates; the next step takes only what
        the cell lacks."""
        step = self.spec.steps[0]
        # a list request never asks for fewer items than the step accepts (min_items)
        floor = step.min_items if step.parse == "list" else 1
        for cell in cells:
            want = cell.count if wants is None else wants.get(cell.key, 0)
            if want <= 0:
                continue
            ask = max(cell.count, floor)
            if step.parse == "list":
                times = (step.repeat or 1) if round_ == 0 else 1
            else:
                times = step.repeat if round_ == 0 and step.repeat else math.ceil(want / (step.n or 1))
            for i in range(times):
                yield self.request(
                    0,
                    dict(cell.values),
                    cell_key=cell.key,
                    category=cell.category,
                    round_=round_,
                    ord_=f"{cell.index:09d}.{round_:03d}.{i:05d}",
                    parent_id=None,
                    item_index=i,
                    replicate=[cell.values, round_, i],
                    render_only={"count": ask},
                )

    def next_step(
        self,
        k: int,
        parents: Iterable[StoredRequest],
        wants: dict[str, int],
        *,
        earlier: dict[str, dict[str, str]] | None = None,
        drops: list[FanoutDrop] | None = None,
    ) -> Iterator[PlannedRequest]:
        """Requests of step k (k ≥ 1): one per output of each step k-1 answer (``repeat`` each).

        When every remaining step gives one row per request, a cell gets no more rows than it
        wants, so a list answer with surplus items does not buy surplus answers. A row that
        exactly repeats (text normalised as exact dedupe does) an earlier row of its cell, in this
        round or in ``earlier`` ones (cell key → row key → the kept item), is not planned at all:
        it would be paid for and then dropped as a duplicate. It goes to ``drops`` instead, and
        the cell, short of a row, is refilled by the next top-up round."""
        step, previous = self.steps[k], self.steps[self.parent_index(k)]
        capped = all(single_output(s) for s in self.steps[k:])
        judge = self.spec.judge[k - self.real] if k >= self.real else None
        planned: Counter[str] = Counter()
        cell, seen = "", {}
        for parent in parents:
            if parent.cell_key != cell:  # parents come in lineage order: a cell's rows are adjacent
                cell, seen = parent.cell_key, dict((earlier or {}).get(parent.cell_key, {}))
            for j, output in enumerate(parent.outputs or []):
                if capped and planned[parent.cell_key] >= wants.get(parent.cell_key, 0):
                    break
                variables = {**parent.vars, previous.name: output}
                key = row_key(variables)
                if key in seen:
                    if drops is not None:
                        drops.append(FanoutDrop(parent.id, j, parent.category, seen[key]))
                    continue
                seen[key] = f"{parent.id}:{j}"
                render_only = None
                if judge is not None:
                    messages, failed = self.gate(variables)
                    if failed:
                        continue  # dropped by a cheap gate: never pay a judge for it
                    render_only = {"example": example_text(messages, judge.fields), "criteria": judge.criteria}
                for rep in range(step.repeat or 1):
                    if capped and planned[parent.cell_key] >= wants.get(parent.cell_key, 0):
                        break
                    planned[parent.cell_key] += 1
                    yield self.request(
                        k,
                        variables,
                        cell_key=parent.cell_key,
                        category=parent.category,
                        round_=parent.round,
                        ord_=f"{parent.ord}.{j:05d}.{rep:03d}",
                        parent_id=parent.id,
                        item_index=j,
                        replicate=[rep],
                        render_only=render_only,
                    )


def _where(spec: Spec, k: int, real: int) -> str:
    return f"{spec.where()}:steps[{k}]" if k < real else f"{spec.where()}:judge[{k - real}]"
