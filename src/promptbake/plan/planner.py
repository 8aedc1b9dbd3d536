"""Planning: cells and stored answers → the next step's requests.

Ids and cache keys are pure functions of what defines a request, so planning the same spec twice
(a resumed run) produces the same rows, and ``INSERT OR IGNORE`` makes it idempotent. The cache key
is the request's *content* (model, messages, sampling params, parse mode) plus a replicate tag
that tells deliberate repeats apart: changing one step's template re-pays only that step.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from promptbake.curate.filters import Filters, last_user
from promptbake.curate.gates import cheap_failures
from promptbake.curate.normalise import normalise
from promptbake.errors import TemplateError
from promptbake.ids import stable_hash
from promptbake.plan.conversation import Dialogues, TurnsRenderer, planned_steps
from promptbake.plan.expand import Cell
from promptbake.plan.judge import example_text
from promptbake.plan.routing import check_routes, pick
from promptbake.specification.models import ConversationSlot, MessageTemplate, Spec, Step, TeacherConfig
from promptbake.specification.templates import Templates
from promptbake.store.db import FanoutDrop, PlannedRequest, StoredRequest
from promptbake.teacher.tokens import count_messages

DEFAULT_RESERVE = 512  # completion tokens reserved for TPM when a step sets no max_tokens


class MessageRenderer:
    """Compiles a list of message templates once and renders them for many rows (an example's
    ``- conversation: NAME`` renders as the dialogue's turns)."""

    def __init__(self, templates: Templates, messages: Sequence[MessageTemplate | ConversationSlot],
                 where: str) -> None:
        self.templates = templates
        self.parts: list[tuple[MessageTemplate, str] | TurnsRenderer] = []
        for j, message in enumerate(messages):
            if isinstance(message, ConversationSlot):
                self.parts.append(TurnsRenderer(templates, message, f"{where}.messages[{j}]"))
                continue
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
        for part in self.parts:
            if isinstance(part, TurnsRenderer):
                out += part.render(variables)
                continue
            message, name = part
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
    """True when each request of the step yields exactly one row for the next step (a best-of-n
    step's n choices make one example)."""
    return step.parse != "list" and ((step.n or 1) == 1 or step.pick == "best") and (step.repeat or 1) == 1


class Planner:
    """Plans ``spec``'s requests for ``teacher`` (the merged teacher config: which model answers
    each step is decided here, see :mod:`promptbake.plan.routing`). ``topup_round`` (a dataset's
    top-up round, 0 for its first run) varies the seed of steps that set none, as a later round
    of a run does: a top-up must not send the bytes its dataset was already made of."""

    def __init__(self, spec: Spec, templates: Templates, teacher: TeacherConfig, *, topup_round: int = 0,
                 identify: bool = True) -> None:
        """``identify=False``: requests get no id or cache key (both empty). A dry run prices
        requests and never stores them, and their two content hashes were a tenth of its time."""
        self.spec = spec
        self.identify = identify
        self.teacher_kind = teacher.kind
        self.topup_round = topup_round
        # a conversation step is planned as its turns (see plan/conversation.py)
        talk = spec.conversation
        self.flow = Dialogues(talk, len(spec.steps) - 1) if talk is not None else None
        # the spec's steps, then one step per judge: a verdict is planned and paid like an answer
        self.steps = planned_steps(spec, self.flow)
        self.real = len(self.steps) - len(spec.judge)
        self.models = check_routes(self.steps, teacher)  # per step: the model(s) its requests name
        self.renderers = [
            MessageRenderer(templates, step.messages, self._where(i)) for i, step in enumerate(self.steps)
        ]
        self.example = MessageRenderer(templates, spec.example.messages, f"{spec.where()}:example")
        self.filters = spec.filters.compile()
        # what every request of a step sends besides its model and messages, worked out once
        self.params = [{**step.body_params(), **self._response_format(step)} for step in self.steps]
        self.user_filters = Filters([c for c in self.filters.checks if c.role == "user"])

    def _where(self, k: int) -> str:
        """How errors name step ``k``'s templates: the spec field they come from."""
        spec = self.spec
        if self.flow is not None and self.flow.turn(k) is not None:
            return f"{spec.where()}:steps[{self.flow.first}].conversation.{self.flow.field(k)}"
        return f"{spec.where()}:steps[{k}]" if k < self.real else f"{spec.where()}:judge[{k - self.real}]"

    def parent_index(self, k: int) -> int:
        """The step whose answers step k is planned from: the one before it, except that every
        judge judges the last real step's answers (judges do not wait for one another)."""
        return min(k, self.real) - 1

    def parent_steps(self, k: int) -> list[int]:
        """Every step whose answers step k is planned from: a conversation's judges judge the
        dialogues that ended, at whichever turn each ended."""
        if k >= self.real and self.flow is not None:
            return list(range(self.flow.first, self.real))
        return [self.parent_index(k)]

    def gate(self, variables: dict[str, Any], category: str | None = None, *,
             ended: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
        """The example a row renders to, and why it fails ``example.checks`` and the filters (empty:
        it passes). Run before any judge, so only examples that can still be kept are judged; for
        a dialogue still going (not ``ended``), before its next turn, which would be paid in vain."""
        messages = self.example.render(variables)
        turns = self.flow.exchanges(variables) if self.flow is not None and ended else None
        return messages, cheap_failures(self.spec, self.filters, messages, turns, category)[1]

    def advance(self, parent: StoredRequest, j: int, output: Any) -> tuple[dict[str, Any], str | None]:
        """The row ``parent``'s output ``j`` makes, and, for a dialogue, why it ends there (None:
        it goes on, or the row is no dialogue's)."""
        k = parent.step_index
        if self.flow is not None and self.flow.turn(k) is not None:
            return self.flow.settle(k, parent.vars, output,
                                    lambda row: bool(self.gate(row, parent.category, ended=False)[1]))
        variables = {**parent.vars, self.steps[k].name: output}
        if self.flow is not None and k == self.flow.first - 1:  # the row a dialogue starts from
            variables = self.flow.start(variables, parent.id, j)
        return variables, None

    def user_gate(self, k: int, variables: dict[str, Any], category: str) -> list[str]:
        """Why a row's user line fails the filters that check it (``role: user``), known before
        step k is paid for when the example's user line does not depend on step k or later: then
        no answer could make the example pass. Empty when it passes or cannot be known yet."""
        if not self.user_filters.checks or k >= self.real:
            return []
        later = [s.name for s in self.steps[k:self.real]]
        lines = []
        for placeholder in ("", "\x00later"):  # the same line under both: it depends on no later answer
            try:
                lines.append(last_user(self.example.render({**variables, **dict.fromkeys(later, placeholder)})))
            except TemplateError:
                return []  # it needs a later answer's fields
        if lines[0] != lines[1]:
            return []
        return self.user_filters.failures([{"role": "user", "content": lines[0]}], category)

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
        turn = self.flow.turn(k) if self.flow is not None else None
        if self.flow is not None and turn is not None:  # a turn sees where it is, then the dialogue so far
            render_only = {**(render_only or {}), **self.flow.render_vars(k, variables)}
        messages = self.renderers[k].render({**variables, **(render_only or {})})
        if self.flow is not None and turn is not None:
            messages += self.flow.history(variables, turn.side)
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
        cache_key = stable_hash(body, step.parse, step.json_schema, step.min_items, replicate, length=32) \
            if self.identify else ""
        reserve = (step.max_tokens or DEFAULT_RESERVE) * (step.n or 1)
        return PlannedRequest(
            id=stable_hash(self.spec.name, step.name, cell_key, parent_id, item_index, replicate, cache_key)
            if self.identify else "",
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
        step = self.steps[0]
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
                variables = dict(cell.values)
                if self.flow is not None and self.flow.first == 0:  # each request starts a dialogue
                    variables = self.flow.start(variables, cell.values, round_, i)
                yield self.request(
                    0,
                    variables,
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
        it would be paid for and then dropped as a duplicate. Nor is a row whose user line fails
        the filters that check it (:meth:`user_gate`). Each goes to ``drops`` instead, and the
        cell, short of a row, is refilled by the next top-up round. A dialogue's next turn is
        planned only while it goes on; a conversation's judges only judge the dialogues that ended."""
        step = self.steps[k]
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
                variables, ended = self.advance(parent, j, output)
                if self.flow is not None and (ended is None) != (judge is None):
                    continue  # an ended dialogue has no next turn; one still going is not judged yet
                key = row_key(variables)
                if key in seen:
                    if drops is not None:
                        drops.append(FanoutDrop(parent.id, j, parent.category, seen[key]))
                    continue
                failed = self.user_gate(k, variables, parent.category)
                if failed:
                    if drops is not None:
                        drops.append(FanoutDrop(parent.id, j, parent.category, None, "; ".join(failed)))
                    continue  # its user line fails a filter: no answer of step k could keep it
                seen[key] = f"{parent.id}:{j}"
                render_only = None
                if judge is not None:
                    messages, failed = self.gate(variables, parent.category)
                    if failed:
                        continue  # dropped by a cheap gate: never pay a judge for it
                    render_only = {"example": example_text(messages, judge.fields, judge.turns),
                                   "criteria": judge.criteria}
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
