"""The committed quick sample (the README's main job on the embedded teacher) is data worth training
on: rude, not polite; no echo of the customer; every utterance something a customer says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from promptbake.curate.filters import ECHO_THRESHOLD, echo_score
from promptbake.specification.models import load_spec

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "samples" / "quick"
POLITE = re.compile(r"(?i)\b(sorry|apolog\w*|inconvenience|happy to|glad to|my pleasure|thank you|assist you)\b")
FIRST_PERSON = re.compile(r"(?i)\b(I|I'm|I've|I'd|my|me)\b")


def examples() -> list[tuple[str, str]]:
    rows = [json.loads(line) for name in ("train", "test") for line in (SAMPLE / f"{name}.jsonl").open()]
    return [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows]


def test_the_sample_has_the_specs_count():
    spec = load_spec(ROOT / "generators" / "rude_agent_quick.yaml")
    assert len(examples()) == 3 * 3 * spec.grid.count


def test_no_reply_echoes_the_customer():
    assert all(echo_score(user, reply) < ECHO_THRESHOLD for user, reply in examples())


def test_at_most_a_tenth_of_replies_are_polite_boilerplate():
    polite = [reply for _, reply in examples() if POLITE.search(reply)]
    assert len(polite) <= len(examples()) // 10, polite


def test_every_utterance_is_a_customer_speaking_in_the_first_person():
    assert all(FIRST_PERSON.search(user) for user, _ in examples())
