"""Quality gates between rendering and dedupe: ``example.checks``, then the cheap ``filters``, then
the judges' stored verdicts.

The build and the top-up loop's shortfall both count examples through the same gates, so a cell an
example was dropped from is refilled: asking for 1,000 examples a judge rates ≥ 4 yields 1,000.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from promptbake.curate.checks import last_assistant
from promptbake.curate.filters import Filters
from promptbake.curate.sentiment import parse_range, sentiment
from promptbake.ids import stable_hash
from promptbake.plan.conversation import planned_steps
from promptbake.plan.judge import verdict_score
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.store.db import Store

GATES = ("checks", "filters", "judge")


@dataclass(frozen=True, slots=True)
class GateDrop:
    """Why one example failed a gate: the gate, its reasons, and the judge's score and reasoning."""

    id: str
    category: str
    gate: str
    reasons: tuple[str, ...]
    score: int | None = None
    reasoning: str | None = None

    def as_dict(self) -> dict[str, object]:
        line: dict[str, object] = {"id": self.id, "category": self.category, "reason": self.gate,
                                   "detail": "; ".join(self.reasons)}
        if self.score is not None:
            line["score"] = self.score
        if self.reasoning is not None:
            line["reasoning"] = self.reasoning
        return line


def cheap_failures(spec: Spec, filters: Filters, messages: list[dict[str, Any]],
                   exchanges: int | None = None, category: str | None = None) -> tuple[str, list[str]]:
    """The first cheap gate an example fails, and why (``("", [])``: it passes): ``example.checks``
    on its answer, then the filters (those for ``category`` too). A conversation is checked turn
    by turn (each agent turn, each customer turn against the agent turn before it), then, once
    ended (``exchanges`` given), for its length. The planner asks the same before paying a judge
    or a dialogue's next turn."""
    checks = spec.example.checks
    step = spec.conversation
    talk = step.conversation if step is not None else None
    if talk is None:
        failed = checks.failures(last_assistant(messages)) if checks is not None else []
        if failed:
            return "checks", failed
        failed = filters.failures(messages, category)
        return ("filters", failed) if failed else ("", [])
    failed = []
    if checks is not None:
        turn = 0
        for message in messages:
            turn += message.get("role") == "user"
            if message.get("role") == "assistant" and isinstance(message.get("content"), str):
                failed += [f"turn {turn}: {reason}" for reason in checks.failures(message["content"])]
    if failed:
        return "checks", failed
    failed = filters.turn_failures(messages, category)
    if failed:
        return "filters", failed
    # last: a dialogue a gate ended early is short too, and the gate is the reason to tell
    if exchanges is not None and exchanges < talk.turns.min:
        plural = "s" if exchanges != 1 else ""
        return "checks", [f"turns: {exchanges} exchange{plural}, fewer than turns.min {talk.turns.min}"]
    return "", []


class Gates:
    def __init__(self, spec: Spec, store: Store) -> None:
        self.spec = spec
        self.filters = spec.filters.compile()
        first = len(planned_steps(spec)) - len(spec.judge)  # the first judge's step (after a dialogue's turns)
        # per judge: example id -> its stored verdict (the judge step's row for that answer)
        self.verdicts: list[dict[str, Any]] = [
            {
                stable_hash(parent_id, item_index): (outputs or [None])[0]
                for parent_id, item_index, outputs in store.outputs_by_parent(spec.name, first + i)
            }
            for i in range(len(spec.judge))
        ]
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)  # category -> gate -> drops
        self.dropped: list[GateDrop] = []
        self.best_of = spec.steps[-1].pick == "best"
        self.tone = [(parse_range(f.value), f.category) for f in spec.filters.entries()
                     if f.name == "sentiment" and f.role == "assistant"]

    def picked(self, examples: Iterable[Example]) -> Iterator[Example]:
        """With ``pick: best`` on the last step, one example per request: the choice with the fewest
        failed checks and filters, then the one deepest inside the sentiment filters' bounds, then
        the first. The others are candidates, not examples: nothing counts them as drops.
        Without it, every example."""
        if not self.best_of:
            yield from examples
            return
        for _, group in itertools.groupby(examples, key=lambda e: e.provenance.get("request")):
            yield min(enumerate(group), key=lambda pair: (*self._rank(pair[1]), pair[0]))[1]

    def _rank(self, example: Example) -> tuple[int, float]:
        checks = self.spec.example.checks
        failed = len(checks.failures(last_assistant(example.messages))) if checks is not None else 0
        failed += len(self.filters.failures(example.messages, example.category))
        tone = [bounds for bounds, only in self.tone if only in (None, example.category)]
        score = sentiment(last_assistant(example.messages)) if tone else 0.0
        return failed, -sum(bounds.distance(score) for bounds in tone)

    def passing(self, examples: Iterable[Example]) -> Iterator[Example]:
        """The examples that pass every gate (of a best-of-n step, the picked choice of each
        request), with their judge scores attached; drops are counted per category and gate and
        kept for ``dropped.jsonl``."""
        for example in self.picked(examples):
            turns = example.provenance.get("turns")
            gate, failed = cheap_failures(self.spec, self.filters, example.messages,
                                          int(turns) if turns is not None else None, example.category)
            if failed:
                self._drop(example, gate, failed)
                continue
            if self._judged(example):
                yield example

    def _judged(self, example: Example) -> bool:
        for judge, verdicts in zip(self.spec.judge, self.verdicts, strict=True):
            name = judge.name or "judge"
            by = "" if name == "judge" else f" by {name}"
            verdict = verdicts.get(example.id)
            score = verdict_score(verdict)
            if score is None:
                self._drop(example, "judge", [f"no verdict{by}"])
                return False
            example.scores[name] = score
            if score < judge.min_score:
                reasoning = verdict.get("reasoning") if isinstance(verdict, dict) else None
                self._drop(example, "judge", [f"score {score} < {judge.min_score}{by}"], score,
                           reasoning if isinstance(reasoning, str) else None)
                return False
        return True

    def drop_early(self, items: Iterable[tuple[str, str, str]]) -> None:
        """Count items (id, category, reasons) a filter dropped before the next step was paid for
        them (their user line failed it): they are filtered like any example."""
        for id_, category, reasons in items:
            self.counts[category]["filters"] += 1
            self.dropped.append(GateDrop(id_, category, "filters", (reasons,)))

    def _drop(self, example: Example, gate: str, reasons: list[str], score: int | None = None,
              reasoning: str | None = None) -> None:
        self.counts[example.category][gate] += 1
        self.dropped.append(GateDrop(example.id, example.category, gate, tuple(reasons), score, reasoning))
