"""The committed quick sample (the README's main job on the embedded teacher) is data worth training
on: rude, not polite by any phrase a reader calls polite; no echo of the customer; every customer
line something a customer says, never the staff's words; and the README states the share a person
reading it found usable, from the verdicts committed beside it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from promptbake.curate.filters import ECHO_THRESHOLD, echo_score
from promptbake.curate.phrases import polite, staff_voice
from promptbake.specification.models import load_spec

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "samples" / "quick"
FIRST_PERSON = re.compile(r"(?i)\b(I|I'm|I've|I'd|I'll|my|me)\b")
# what the reader of issue 27 called polite in the earlier sample, and its kin: the wide list the
# sample is held to must catch every one
READER_POLITE = ["You're welcome", "you\u2019re very welcome", "How can I help you?", "How may I assist you today?",
                 "No worries at all", "No problem", "Thank you for your patience", "Thanks!", "I'm sorry",
                 "We apologize", "Happy to help", "Of course", "Certainly not", "Please wait", "Have a nice day",
                 "Feel free to ask", "Let me know", "I hope you like it", "I understand", "Don't worry"]
# the staff's side of the counter (a customer who says it reads like the shop assistant) and lines a
# customer says, which the rule must let through
STAFF_LINES = ["How can I help you?", "You're welcome.", "Thank you for your patience.", "I'm here to help.",
               "Is there anything else I can do?", "I'll speak with my manager.", "Sorry for the inconvenience.",
               "We don't offer refunds.", "I'll give you a refund.", "Welcome to our store!", "Let me check.",
               "I'm just about to buy some of our produce.", "I'm going to refund it.",
               "I'm offering a refund.", "I know I'm closing, but I'll take your order.",
               "I'm going to bring the manager.", "I want to refund your money.", "I just got a shipment delivered.",
               "I'm just a few minutes away from closing."]
CUSTOMER_LINES = ["I want to speak to the manager, right now.", "I want a refund for these boots, they fell apart.",
                  "Are you closing already? I only need five minutes.", "Get me your manager, this room is filthy."]


def rows() -> list[dict]:
    return [json.loads(line) for name in ("train", "test") for line in (SAMPLE / f"{name}.jsonl").open()]


def examples() -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows()]


def test_the_sample_has_the_specs_count():
    spec = load_spec(ROOT / "generators" / "rude_agent_quick.yaml")
    assert len(examples()) == 3 * 3 * spec.grid.count


def test_no_reply_echoes_the_customer():
    assert all(echo_score(user, reply) < ECHO_THRESHOLD for user, reply in examples())


@pytest.mark.parametrize("phrase", READER_POLITE)
def test_the_polite_list_holds_what_a_reader_calls_polite(phrase):
    assert polite().search(phrase)


def test_the_customer_voice_rule_tells_the_staff_from_the_customer():
    assert [line for line in STAFF_LINES if not staff_voice().search(line)] == []
    assert [line for line in CUSTOMER_LINES if staff_voice().search(line)] == []


def test_no_reply_carries_a_phrase_a_reader_calls_polite():
    polite_replies = [reply for _, reply in examples() if polite().search(reply)]
    assert polite_replies == []


def test_every_customer_line_is_a_customer_not_the_staff():
    assert all(FIRST_PERSON.search(user) for user, _ in examples())
    staff = [user for user, _ in examples() if staff_voice().search(user) or re.search(r"(?i)\bsorry\b", user)]
    assert staff == []


def test_the_readme_states_the_share_a_reader_found_usable():
    """samples/quick/readers_verdicts.jsonl holds a person's verdict on every example of the sample
    (by example id: a regenerated sample without a new reading fails here), and the README's table
    states its counts."""
    meta = [json.loads(line) for line in (SAMPLE / "metadata.jsonl").open()]
    verdicts = [json.loads(line) for line in (SAMPLE / "readers_verdicts.jsonl").open()]
    assert [v["id"] for v in verdicts] == [m["id"] for m in meta]
    by_id = {m["id"]: r for m, r in zip(meta, rows(), strict=True)}
    for v in verdicts:  # the verdict is on the example as committed
        assert v["customer"] == by_id[v["id"]]["messages"][0]["content"]
        assert v["agent"] == by_id[v["id"]]["messages"][-1]["content"]
        assert v["verdict"] in ("usable", "weak", "unusable") and v["why"]
        assert isinstance(v["staff_voice"], bool)  # the reader's call: does the customer sound like staff?
        assert not (v["staff_voice"] and v["verdict"] == "usable")
    counts = Counter(v["verdict"] for v in verdicts)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"\*\*(\d+) of (\d+) usable\*\*, (\d+) weak, (\d+) unusable", readme)
    assert stated, "the README states the reader's counts"
    assert tuple(map(int, stated.groups())) == (counts["usable"], len(verdicts), counts["weak"], counts["unusable"])
    after = readme[stated.end():][:200]
    staff = re.search(r"(\d+|none)\s+with\s+the\s+customer\s+sounding\s+like\s+staff", after)
    assert staff, "the README states how many customer lines a reader found staff-like"
    assert (0 if staff.group(1) == "none" else int(staff.group(1))) == sum(v["staff_voice"] for v in verdicts)
