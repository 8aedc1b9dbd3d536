"""The committed dialogue sample (generators/rude_agent_dialogues_quick.yaml on the embedded teacher)
is held to the quick sample's bar, turn by turn: no turn echoes the one before it, at most a tenth
of the agent's turns carry politeness boilerplate, and the customers speak as customers."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from promptbake.curate.filters import ECHO_THRESHOLD, echo_score
from promptbake.specification.models import load_spec

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "samples" / "dialogues_quick"
POLITE = re.compile(r"(?i)\b(sorry|apolog\w*|inconvenience|happy to|glad to|my pleasure|thank you|assist you)\b")
FIRST_PERSON = re.compile(r"(?i)\b(I|I'm|I've|I'd|my|me)\b")
# what shop staff say, not customers
STAFF = re.compile(r"(?i)\b(can I help|help you|how (can|may) I|assist you|welcome|our (store|shop|gym|policy)|"
                   r"I'm (a|the|your) [\w ]{0,20}(manager|cashier|assistant|employee|clerk)|serve you)\b")


def dialogues() -> list[list[dict]]:
    return [json.loads(line)["messages"] for name in ("train", "test")
            for line in (SAMPLE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def turns(role: str) -> list[str]:
    return [m["content"] for d in dialogues() for m in d if m["role"] == role]


def test_the_sample_has_the_specs_count_of_whole_dialogues():
    spec = load_spec(ROOT / "generators" / "rude_agent_dialogues_quick.yaml")
    talk = spec.steps[-1].conversation
    assert len(dialogues()) == 3 * 3 * spec.grid.count
    for d in dialogues():
        assert [m["role"] for m in d] == ["user", "assistant"] * talk.turns.max
        assert talk.turns.min <= len(d) // 2 <= talk.turns.max


def test_no_turn_echoes_the_turn_before_it():
    for d in dialogues():
        for before, after in itertools.pairwise(d):
            assert echo_score(before["content"], after["content"]) < ECHO_THRESHOLD, (before, after)


def test_at_most_a_tenth_of_agent_turns_are_polite_boilerplate():
    polite = [t for t in turns("assistant") if POLITE.search(t)]
    assert len(polite) <= len(turns("assistant")) // 10, polite


def test_every_customer_turn_is_a_customer_speaking_in_the_first_person():
    assert all(FIRST_PERSON.search(t) and not STAFF.search(t) for t in turns("user")), turns("user")
