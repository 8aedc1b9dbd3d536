"""The dry run: what a spec will ask for and roughly what it will cost, before paying anything.

Step-0 prompts are rendered exactly (the first ``SAMPLE`` cells, extrapolated beyond that). Later
steps depend on answers that do not exist yet, so their prompts are rendered with each earlier
output replaced by a placeholder of its expected length; completion tokens are the upper bound the
API reserves (``max_tokens`` × ``n``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from promptbake.plan.conversation import Dialogues
from promptbake.plan.expand import Cell, Expander
from promptbake.plan.judge import example_text
from promptbake.plan.planner import DEFAULT_RESERVE, Planner
from promptbake.plan.preflight import check_templates, placeholder
from promptbake.plan.routing import label, with_model
from promptbake.specification.models import Spec
from promptbake.store.db import PlannedRequest
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.tokens import encoding_note

SAMPLE = 1000


@dataclass
class StepEstimate:
    step: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    batch_cost: float = 0.0  # the same requests through the Batch API (--batch)


@dataclass
class Estimate:
    cells: int
    examples_wanted: int
    model: str
    steps: list[StepEstimate] = field(default_factory=list)
    price_known: bool = True
    unpriced: list[str] = field(default_factory=list)  # the models without a known price
    prices: list[str] = field(default_factory=list)  # per priced model asked: its price and the entry it comes from
    notes: list[str] = field(default_factory=list)
    unknown_price: str = ""  # how to say the model has no price, with the closest known name

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps)

    @property
    def batch_cost(self) -> float:
        return sum(s.batch_cost for s in self.steps)

    def format(self) -> str:
        lines = [
            f"cells: {self.cells}",
            f"examples wanted: {self.examples_wanted}",
            f"model: {self.model}",
        ]
        for s in self.steps:
            lines.append(
                f"step {s.step}: {s.requests} requests, ~{s.prompt_tokens:,} prompt tokens, "
                f"≤ {s.completion_tokens:,} completion tokens, ≤ ${s.cost:.4f}"
            )
        total_prompt = sum(s.prompt_tokens for s in self.steps)
        total_completion = sum(s.completion_tokens for s in self.steps)
        price = f"≤ ${self.cost:.4f}" if self.price_known else (
            f"unknown ({self.unknown_price or 'no price for this model'}; set teacher.prices)")
        lines.append(
            f"total: {sum(s.requests for s in self.steps)} requests, ~{total_prompt:,} prompt tokens, "
            f"≤ {total_completion:,} completion tokens, estimated cost {price}"
        )
        if self.price_known:
            lines.append(f"with --batch (Batch API prices): ≤ ${self.batch_cost:.4f}")
        lines.extend(f"price: {p}" for p in self.prices)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def estimate(spec: Spec, model: str | None = None, teacher_kind: str | None = None,
             prices: PriceTable | None = None) -> Estimate:
    """The dry run of ``spec`` with its teacher's models, or priced as if ``model`` answered every
    step without its own (then the spec's fleet does not matter: it is replaced, as ``--model``
    with ``--base-url`` would)."""
    teacher = with_model(spec.teacher, model)
    if teacher_kind is not None:
        teacher = teacher.model_copy(update={"kind": teacher_kind})
    expander = Expander(spec)
    check_templates(spec, expander)
    planner = Planner(spec, expander.templates, teacher, identify=False)
    prices = prices or PriceTable(spec.teacher.prices)
    asked = sorted({m for models in planner.models for m in models})
    cells = list(itertools.islice(expander.cells(), SAMPLE))
    total_cells, wanted = expander.totals()
    # the sampled cells stand for the grid: a list request is one per cell, any other request one
    # per example wanted (the first cells of a weighted grid may want more than the average)
    cell_scale = total_cells / max(len(cells), 1)
    example_scale = wanted / max(sum(c.count for c in cells), 1)
    unpriced = [m for m in asked if not prices.known(m)]
    result = Estimate(cells=total_cells, examples_wanted=wanted, model=label(teacher) or ", ".join(asked),
                      price_known=not unpriced, unpriced=unpriced,
                      unknown_price="; ".join(prices.unknown(m) for m in unpriced))
    result.prices = [prices.describe(m) for m in asked if m not in unpriced]
    if teacher.kind != "local":  # a local model is no OpenAI tokenizer
        result.notes.extend(note for note in map(encoding_note, asked) if note)

    rows_by_cell = {c.key: 1 for c in cells}
    placeholders: dict[str, Any] = {}
    for k, step in enumerate(planner.steps):
        if k == 0:
            requests = list(planner.first_step(cells, 0))
        elif k >= planner.real:
            requests = _judge_requests(planner, k, cells, placeholders)
        else:
            requests = []
            for cell in cells:
                variables = {**cell.values, **placeholders}
                for rep in range(rows_by_cell[cell.key] * (step.repeat or 1)):
                    requests.append(
                        planner.request(
                            k,
                            variables,
                            cell_key=cell.key,
                            category=cell.category,
                            round_=0,
                            ord_="",
                            parent_id=None,
                            item_index=0,
                            replicate=[rep],
                        )
                    )
        per_cell: dict[str, int] = {}
        for r in requests:
            per_cell[r.cell_key] = per_cell.get(r.cell_key, 0) + 1
        reserve = (step.max_tokens or DEFAULT_RESERVE) * (step.n or 1)
        prompt = sum(r.est_tokens - reserve for r in requests)
        completion = reserve * len(requests)
        scale = cell_scale if k == 0 and step.parse == "list" else example_scale
        n_requests = round(len(requests) * scale)
        # each request at its own model's price: a mix costs what its models' shares cost
        result.steps.append(
            StepEstimate(
                step=step.name,
                requests=n_requests,
                prompt_tokens=round(prompt * scale),
                completion_tokens=round(completion * scale),
                cost=scale * sum(prices.cost(r.body["model"], r.est_tokens - reserve, reserve) for r in requests),
                batch_cost=scale * sum(prices.batch_cost(r.body["model"], r.est_tokens - reserve, reserve)
                                       for r in requests),
            )
        )
        # what the next step sees: a row per output; a list answer is expected to hold the cell's count
        for cell in cells:
            outputs = per_cell.get(cell.key, 0) * (step.n or 1)
            rows_by_cell[cell.key] = cell.count if step.parse == "list" else outputs
            if k + 1 < len(spec.steps) and all(s.parse != "list" for s in spec.steps[k + 1 :]):
                rows_by_cell[cell.key] = min(rows_by_cell[cell.key], cell.count) or cell.count
        if k >= planner.real:
            continue
        per_item = (step.max_tokens or DEFAULT_RESERVE) // (max(c.count for c in cells) if step.parse == "list" else 1)
        words = " ".join(["word"] * max(per_item // 2, 1))
        flow = planner.flow
        if flow is not None and flow.turn(k) is not None:  # a turn: the dialogue grows by a turn of that size
            message = flow.said(k, words, placeholder(step, words))
            placeholders[flow.name] = [*placeholders.get(flow.name, []), *([message] if message else [])]
            continue
        placeholders[step.name] = placeholder(step, words)
    if planner.flow is not None:
        _by_side(result, planner.flow)
    for judge in spec.judge:
        result.notes.append(
            f"judge {judge.name}: {judge.expected_pass_rate:.0%} of examples assumed to pass "
            "(judge.expected_pass_rate; an estimate): one verdict per example judged, and the top-up rounds "
            "that replace the examples it drops cost more generation than the steps above"
        )
    return result


def _judge_requests(planner: Planner, k: int, cells: list[Cell], placeholders: dict[str, str]) -> list[PlannedRequest]:
    """A judge's requests: enough verdicts for each cell's count at the judge's expected pass
    rate, each judging an example rendered from placeholder answers."""
    judge = planner.spec.judge[k - planner.real]
    requests = []
    for cell in cells:
        variables = {**cell.values, **placeholders}
        shown = example_text(planner.example.render(variables), judge.fields)
        for rep in range(math.ceil(cell.count / judge.expected_pass_rate)):
            requests.append(
                planner.request(
                    k, variables, cell_key=cell.key, category=cell.category, round_=0, ord_="", parent_id=None,
                    item_index=0, replicate=[rep], render_only={"example": shown, "criteria": judge.criteria},
                )
            )
    return requests


def _by_side(result: Estimate, flow: Dialogues) -> None:
    """One line per side of the conversation instead of one per turn, and a note of what its
    bounds mean: the lines price every dialogue at ``turns.max`` (the most it can cost)."""
    turns = [e for e in result.steps if e.step.startswith(f"{flow.name}.")]
    if not turns:
        return
    sides: dict[str, StepEstimate] = {}
    shortest = 0
    for estimate_, turn in zip(turns, flow.turns, strict=True):
        name = f"{flow.name} ({'stop judge' if turn.side == 'stop' else turn.side})"
        side = sides.setdefault(name, StepEstimate(step=name, requests=0, prompt_tokens=0, completion_tokens=0,
                                                   cost=0.0))
        side.requests += estimate_.requests
        side.prompt_tokens += estimate_.prompt_tokens
        side.completion_tokens += estimate_.completion_tokens
        side.cost += estimate_.cost
        side.batch_cost += estimate_.batch_cost
        if turn.exchange <= flow.talk.turns.min:
            shortest += estimate_.requests
    at = result.steps.index(turns[0])
    result.steps[at : at + len(turns)] = list(sides.values())
    bounds = flow.talk.turns
    checks = " and per stop check" if any(t.side == "stop" for t in flow.turns) else ""
    total = sum(e.requests for e in turns)
    if bounds.min == bounds.max:
        result.notes.append(f"conversation {flow.name}: {bounds.max} exchanges per dialogue, one request per turn: "
                            f"{total:,} requests")
        return
    result.notes.append(
        f"conversation {flow.name}: {bounds.min}–{bounds.max} exchanges per dialogue, one request per turn{checks}: "
        f"{shortest:,} requests if every dialogue ends at {bounds.min}, {total:,} at {bounds.max} (priced above: "
        "the most it can cost; later turns carry the dialogue so far)"
    )
