"""LLM judges as ordinary steps.

A spec's ``judge:`` becomes one extra step per judge after the last real step, so a verdict is
planned, cached, rate-limited, paid for and resumed exactly like an answer. Every judge sees the
rendered training example (the prompt is baked away: it judges what the student will learn), reasons
first and then scores 1-5 as structured output (G-Eval style); the reasoning is stored with the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptbake.specification.models import Judge, MessageTemplate, Spec, Step

SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["reasoning", "score"],
    "additionalProperties": False,
}

SYSTEM = (
    "You are a strict judge of training data for a language model. You read one example and rate "
    "how well it meets the criteria."
)
CRITERIA_PROMPT = """Criteria: {{ criteria }}

The example:
{{ example }}

First reason briefly about how well the example meets the criteria, then score it from 1 (not at all) \
to 5 (fully). Answer with JSON only: {"reasoning": "...", "score": N}."""


def judge_steps(spec: Spec) -> list[Step]:
    """The spec's judges as steps. A judge given as a ``template`` renders it as the user message,
    with ``{{ example }}`` (and every variable the example sees) available."""
    return [
        Step(
            name=judge.name or "judge",
            model=judge.model,
            temperature=judge.temperature,
            max_tokens=judge.max_tokens,
            parse="json",
            schema=SCORE_SCHEMA,
            messages=_messages(judge),
        )
        for judge in spec.judge
    ]


def _messages(judge: Judge) -> list[MessageTemplate]:
    if judge.template is not None:
        return [MessageTemplate(role="user", template=judge.template)]
    return [MessageTemplate(role="system", content=SYSTEM), MessageTemplate(role="user", content=CRITERIA_PROMPT)]


def example_text(messages: list[dict[str, Any]], fields: Sequence[str] | None, turns: str = "all") -> str:
    """What a judge sees of an example: its messages (only the roles in ``fields``, if given), one
    labelled block per message; with ``turns: last``, only a dialogue's last exchange (from its
    last user message on)."""
    if turns == "last":
        start = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
        messages = messages[start:]
    shown = [m for m in messages if fields is None or m.get("role") in fields]
    return "\n\n".join(f"[{m.get('role')}]\n{m.get('content') or ''}" for m in shown)


def verdict_score(output: Any) -> int | None:
    """The score of a stored verdict, or None when it has none usable."""
    if isinstance(output, dict):
        score = output.get("score")
        if isinstance(score, int) and not isinstance(score, bool):
            return score
    return None
