"""Conversations: a customer simulator and an agent, turn by turn, each turn a planned step.

A ``conversation`` step is planned as internal steps, one per turn: the customer's turn of exchange
1, the agent's, (the stop judge's,) the customer's of exchange 2, ... up to ``turns.max``. Every turn
is an ordinary request in the store whose body holds the dialogue so far, so its cache key is the
conversation so far: a killed run resumes at the next turn, no turn is paid twice, and a dialogue
that has ended simply has no next turn. Each side sees its own messages (persona, few-shot turns)
and then the dialogue; the simulator sees it with roles flipped (the agent's turns are its user
messages, its own turns its assistant messages), so each side speaks in its own voice.

A row's variables hold the dialogue so far under the conversation's name, as the agent sees it: a
list of ``{role, content}`` (plus ``data``, a structured turn's whole answer). Without a stop rule,
``<name>_turns`` holds the dialogue's length, drawn evenly from the turn bounds when it starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, model_validator

from promptbake.errors import TemplateError
from promptbake.ids import stable_hash
from promptbake.plan.judge import example_text, judge_steps
from promptbake.specification.models import (
    ConversationSlot,
    MessageTemplate,
    SamplingParams,
    Side,
    Spec,
    Step,
    StopJudge,
)
from promptbake.specification.templates import Templates

STOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "done": {"type": "boolean"}},
    "required": ["reasoning", "done"],
    "additionalProperties": False,
}
STOP_SYSTEM = "You read a conversation between a customer and a service agent and say whether it is over."
STOP_PROMPT = """Criteria for the conversation being over: {{ criteria }}

The conversation so far:
{{ transcript }}

First reason briefly, then say whether the conversation is over. Answer with JSON only: \
{"reasoning": "...", "done": true or false}."""

SAMPLING = set(SamplingParams.model_fields)


@dataclass(frozen=True)
class Turn:
    """One internal step: whose turn (``stop``: the stop judge's check) in which exchange (1-based;
    0 is the agent's greeting when it opens)."""

    side: Literal["user", "assistant", "stop"]
    exchange: int


class TurnStep(Step):
    """A turn as a step: planned, cached, sent and stored like any step. Its name (``talk.user.2``)
    is the conversation's and its place, never a template variable. Its validator is built by its
    first turn, not on import: a spec without a conversation never makes one."""

    model_config = ConfigDict(defer_build=True)

    @model_validator(mode="after")
    def _check(self) -> TurnStep:  # replaces Step's: the name is no identifier, on purpose
        return self


def planned_steps(spec: Spec, flow: Dialogues | None = None) -> list[Step]:
    """The steps ``spec`` is planned as: its steps (a conversation as its turns: ``flow``, or made
    here), then one per judge."""
    talk = spec.conversation
    if talk is not None and flow is None:
        flow = Dialogues(talk, len(spec.steps) - 1)
    real = spec.steps if flow is None else [*spec.steps[:-1], *flow.steps]
    return [*real, *judge_steps(spec)]


def length_key(name: str) -> str:
    """The row variable holding a dialogue's drawn length (no stop rule)."""
    return f"{name}_turns"


def layout(step: Step) -> list[Turn]:
    """The turns of ``step``'s dialogues in the order they happen, the longest dialogue's."""
    talk = step.conversation
    assert talk is not None
    turns = [Turn("assistant", 0)] if talk.opener == "assistant" else []
    judged = talk.stop is not None and talk.stop.judge is not None
    for t in range(1, talk.turns.max + 1):
        turns += [Turn("user", t), Turn("assistant", t)]
        if judged and talk.turns.min <= t < talk.turns.max:
            turns.append(Turn("stop", t))
    return turns


def _side_step(step: Step, side: Side, name: str) -> TurnStep:
    """A side as a step: the conversation step's sampling parameters, overridden by the side's (a
    side naming its own model or models sets the step's aside)."""
    own_model = side.model is not None or side.models is not None
    defaults = step.model_dump(include=SAMPLING - ({"model"} if own_model else set()), exclude_none=True)
    params = {**defaults, **side.model_dump(include=SAMPLING, exclude_none=True)}
    return TurnStep(name=name, messages=side.messages, parse=side.parse, schema=side.json_schema,
                    models=side.models if own_model else step.models, **params)


def _stop_step(judge: StopJudge, name: str) -> TurnStep:
    messages = [MessageTemplate(role="system", content=STOP_SYSTEM), MessageTemplate(role="user", content=STOP_PROMPT)]
    if judge.template is not None:
        messages = [MessageTemplate(role="user", template=judge.template)]
    return TurnStep(name=name, model=judge.model, models=judge.models, temperature=judge.temperature,
                    max_tokens=judge.max_tokens, parse="json", schema=STOP_SCHEMA, messages=messages)


class Dialogues:
    """A spec's conversation step as the internal steps ``first``, ``first + 1``, ... and the rules
    that move one dialogue from a turn to the next, or end it."""

    def __init__(self, step: Step, first: int) -> None:
        assert step.conversation is not None
        self.step = step
        self.talk = step.conversation
        self.name = step.name
        self.length_key = length_key(step.name)
        self.first = first
        self.turns = layout(step)
        self.steps: list[Step] = []
        for turn in self.turns:
            label = f"{step.name}.{turn.side}.{turn.exchange}"
            if turn.side == "stop":
                assert self.talk.stop is not None and self.talk.stop.judge is not None
                self.steps.append(_stop_step(self.talk.stop.judge, label))
            else:
                self.steps.append(_side_step(step, getattr(self.talk, turn.side), label))

    def turn(self, k: int) -> Turn | None:
        """The turn internal step ``k`` is (None: not a turn of this conversation)."""
        i = k - self.first
        return self.turns[i] if 0 <= i < len(self.turns) else None

    def first_of_side(self, k: int) -> bool:
        """Whether turn ``k`` is the first its side (or the stop judge) is asked."""
        side = self.turns[k - self.first].side
        return next(i for i, t in enumerate(self.turns) if t.side == side) == k - self.first

    def field(self, k: int) -> str:
        """The spec field turn ``k``'s templates come from (``user``, ``assistant``, ``stop.judge``)."""
        side = self.turns[k - self.first].side
        return "stop.judge" if side == "stop" else side

    def said(self, k: int, text: str, data: Any = None) -> dict[str, Any] | None:
        """The message turn ``k`` adds to a dialogue when it says ``text`` (``data``: a structured
        side's whole answer; None: a stop check adds none): what preflight and the dry run put in
        place of answers that do not exist yet."""
        side = self.turns[k - self.first].side
        if side == "stop":
            return None
        message: dict[str, Any] = {"role": side, "content": text}
        if getattr(self.talk, side).parse == "json":
            message["data"] = data
        return message

    # rows ------------------------------------------------------------------------------------
    def start(self, variables: dict[str, Any], *identity: object) -> dict[str, Any]:
        """A new dialogue's row: no turn yet, and without a stop rule its length, drawn evenly from
        the bounds by the dialogue's identity (so planning it again draws the same)."""
        row = {**variables, self.name: []}
        bounds = self.talk.turns
        if self.talk.stop is None and bounds.min < bounds.max:
            span = bounds.max - bounds.min + 1
            row[self.length_key] = bounds.min + int(stable_hash(self.name, *identity, length=8), 16) % span
        return row

    def length(self, variables: dict[str, Any]) -> int:
        """The exchanges this dialogue may have: its drawn length, else ``turns.max``."""
        drawn = variables.get(self.length_key)
        return drawn if isinstance(drawn, int) and self.talk.stop is None else self.talk.turns.max

    def render_vars(self, k: int, variables: dict[str, Any]) -> dict[str, Any]:
        """What a turn's templates see beyond the row: ``turn`` (this exchange), ``turns`` (the
        dialogue's length) and ``last_turn``; a stop check also ``transcript`` and ``criteria``."""
        turn = self.turns[k - self.first]
        length = self.length(variables)
        extra: dict[str, Any] = {"turn": turn.exchange, "turns": length, "last_turn": turn.exchange == length}
        if turn.side == "stop":
            assert self.talk.stop is not None and self.talk.stop.judge is not None
            extra["transcript"] = example_text(self.history(variables, "assistant"), None)
            extra["criteria"] = self.talk.stop.judge.criteria
        return extra

    def history(self, variables: dict[str, Any], side: str) -> list[dict[str, Any]]:
        """The dialogue so far as ``side`` sees it after its own messages: the simulator's with roles
        flipped; a side's own structured turns as the JSON it wrote."""
        dialogue: list[dict[str, Any]] = variables.get(self.name) or []
        if side == "stop":
            return []
        out = []
        for message in dialogue:
            own = message["role"] == side
            content = message["content"]
            if own and "data" in message:
                content = json.dumps(message["data"], ensure_ascii=False, default=str)
            role = message["role"] if side == "assistant" else ("assistant" if own else "user")
            out.append({"role": role, "content": content})
        return out

    def exchanges(self, variables: dict[str, Any]) -> int:
        """Completed exchanges of a row's dialogue: the agent's turns after a customer's."""
        return exchanges(variables.get(self.name) or [])

    def advance(self, k: int, variables: dict[str, Any], output: Any) -> tuple[dict[str, Any], str | None]:
        """The row after turn ``k`` answered ``output``, and why the dialogue ends there (None: it
        goes on to turn ``k + 1``): ``max`` or ``length`` (its bounds), ``stop`` (the stop rule's
        phrase or field) or ``judge`` (the stop judge). A customer turn that ends the dialogue is
        not kept; an agent turn that does is (without the stop phrase)."""
        turn = self.turns[k - self.first]
        rule = self.talk.stop
        if turn.side == "stop":
            done = isinstance(output, dict) and output.get("done") is True
            return variables, "judge" if done else None
        side: Side = getattr(self.talk, turn.side)
        text = _said(side, output)
        ends = rule is not None and rule.side == turn.side and _signals(rule.phrase, rule.done_field, text, output)
        if ends and turn.side == "user":
            return variables, "stop"
        if ends and rule is not None and rule.phrase is not None:
            text = _without(text, rule.phrase)
        message: dict[str, Any] = {"role": turn.side, "content": text}
        if side.parse == "json":
            message["data"] = output
        row = {**variables, self.name: [*(variables.get(self.name) or []), message]}
        if ends:
            return row, "stop"
        if turn.side == "assistant" and turn.exchange >= self.length(variables):
            return row, "max" if turn.exchange >= self.talk.turns.max else "length"
        return row, None

    def settle(self, k: int, variables: dict[str, Any], output: Any,
               failing: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any], str | None]:
        """:meth:`advance`, and a dialogue still going whose turns so far already fail a cheap gate
        (``failing``) ends here, as ``gate``: its next turns would be paid for a dialogue the build
        drops. The planner and the build both decide this way, so they agree on where each ended."""
        row, ended = self.advance(k, variables, output)
        if ended is None and failing(row):
            ended = "gate"
        return row, ended

    def lineage(self, k: int, ord_: str) -> str:
        """The ord of the row a dialogue started from (its first turn's, less the repeat): each
        later turn's ord extends its parent's by ``.IIIII.RRR``."""
        first = ord_[: len(ord_) - 10 * (k - self.first)]
        return first.rsplit(".", 1)[0] if self.first else first


def _said(side: Side, output: Any) -> str:
    """A turn's text: the answer, or a structured answer's ``say`` field."""
    if side.parse != "json":
        return str(output)
    value = output.get(side.say) if isinstance(output, dict) else None
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


def _signals(phrase: str | None, field: str | None, text: str, output: Any) -> bool:
    if phrase is not None:
        return phrase.casefold() in text.casefold()
    return isinstance(output, dict) and field is not None and bool(output.get(field))


def _without(text: str, phrase: str) -> str:
    at = text.casefold().find(phrase.casefold())
    return " ".join((text[:at] + text[at + len(phrase):]).split()) if at >= 0 else text


def exchanges(dialogue: Sequence[dict[str, Any]]) -> int:
    """Agent turns that answer a customer's (an opening greeting is none)."""
    seen_user = False
    count = 0
    for message in dialogue:
        if message.get("role") == "user":
            seen_user = True
        elif message.get("role") == "assistant" and seen_user:
            count += 1
    return count


def placeholder_dialogue(step: Step, exchanges_: int, user_text: str = "<user>",
                         agent_text: str = "<assistant>") -> list[dict[str, Any]]:
    """A dialogue of ``exchanges_`` exchanges before any answer exists (preflight, the dry run)."""
    talk = step.conversation
    assert talk is not None
    dialogue = [{"role": "assistant", "content": agent_text}] if talk.opener == "assistant" else []
    for _ in range(exchanges_):
        dialogue += [{"role": "user", "content": user_text}, {"role": "assistant", "content": agent_text}]
    return dialogue


class TurnsRenderer:
    """``- conversation: NAME`` of ``example.messages``: the dialogue's turns, each agent turn with
    its ``weight`` when the slot gives one."""

    def __init__(self, templates: Templates, slot: ConversationSlot, where: str) -> None:
        self.templates = templates
        self.name = slot.conversation
        self.fixed: int | None = None
        self.expression: str | None = None
        self.where = f"{where}.weight"
        if isinstance(slot.weight, str):
            source = slot.weight if "{{" in slot.weight or "{%" in slot.weight else "{{ " + slot.weight + " }}"
            self.expression = templates.add_inline(self.where, source)
            templates.get(self.expression)  # a syntax error surfaces before anything is paid
        elif slot.weight is not None:
            self.fixed = slot.weight

    def render(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        dialogue = variables.get(self.name)
        if not isinstance(dialogue, list):
            raise TemplateError(f"{self.where}: {self.name!r} holds no dialogue")
        total = exchanges(dialogue)
        out = []
        users = 0
        for message in dialogue:
            rendered: dict[str, Any] = {"role": message["role"], "content": str(message["content"])}
            users += message["role"] == "user"
            if message["role"] == "assistant":
                weight = self._weight(variables, message, users, total)
                if weight is not None:
                    rendered["weight"] = weight
            out.append(rendered)
        return out

    def _weight(self, variables: dict[str, Any], message: dict[str, Any], turn: int, total: int) -> int | None:
        if self.expression is None:
            return self.fixed
        seen = {**variables, "turn": turn, "turns": total, "content": message["content"],
                "data": message.get("data")}
        value = self.templates.render(self.expression, seen).strip().casefold()
        if value in ("1", "true"):
            return 1
        if value in ("0", "false", "", "none"):
            return 0
        raise TemplateError(f"{self.where}: gives {value!r} for turn {turn}, not 0/1 or true/false")
