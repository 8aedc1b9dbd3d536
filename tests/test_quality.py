"""What makes the embedded default's data worth training on: tone, politeness and customer-voice
gates, best-of-n, user lines gated before their answer is paid for, and the report's quality
panel, which flags every example whether the spec gated on it or not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer, Raw
from helpers import MINIMAL_SPEC, write_spec
from reportdata import build_flagged_dataset

from promptbake.cli.main import cli
from promptbake.curate.filters import FilterSet
from promptbake.curate.quality import flags
from promptbake.curate.sentiment import sentiment
from promptbake.curate.topic import shared_stems
from promptbake.errors import SpecError
from promptbake.specification.models import load_spec


def chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_politeness_gate_catches_what_a_reader_calls_polite():
    gate = FilterSet(["no_politeness"]).compile()
    for polite in ("You're welcome.", "You’re welcome, I'm sure.", "How can I help you?", "No worries at all.",
                   "Thanks for your patience.", "I'm sorry for the inconvenience.", "Of course, right away!"):
        assert gate.failures(chat("I want a refund", polite)), polite
    for rude in ("No. You wore them, you broke them, you keep them.", "Not for you. Come back when I care."):
        assert gate.failures(chat("I want a refund", rude)) == [], rude


def test_customer_voice_checks_the_users_line_and_names_the_staff_phrase():
    gate = FilterSet(["customer_voice"]).compile()  # the user's line, without saying role: user
    assert gate.failures(chat("How can I help you today?", "Ugh.")) == [
        "customer_voice: 'How can I help' is the staff's line (user)"]
    assert gate.failures(chat("I'm sorry for the inconvenience, I'll get it sorted.", "Ugh."))
    assert gate.failures(chat("I want my money back, these fell apart.", "How can I help you?")) == []


def test_sentiment_filter_bounds_the_answers_tone_and_checks_its_range_when_loaded():
    assert sentiment("What a stupid question. Figure it out yourself.") < -0.3 < 0.3 < sentiment(
        "Thank you so much, I'm delighted to help!")
    gate = FilterSet([{"sentiment": {"max": -0.3}}]).compile()
    assert gate.failures(chat("Hi", "What a stupid question. Figure it out yourself.")) == []
    assert gate.failures(chat("Hi", "Thank you so much, I'm delighted to help!"))[0].startswith("sentiment: +0.")
    for bad in ({"sentiment": -0.3}, {"sentiment": {"max": 2}}, {"sentiment": {"min": 0.5, "max": 0.1}},
                {"sentiment": {}}):
        with pytest.raises(ValueError, match="sentiment"):
            FilterSet([bad])


def test_on_topic_wants_a_shared_content_word():
    assert shared_stems("Are you closing already?", "We're closing, get out.") == {"closi"}
    gate = FilterSet(["on_topic"]).compile()
    assert gate.failures(chat("Are you closing already?", "We're closing, get out.")) == []
    assert gate.failures(chat("Are you closing already?", "Fix the printer.")) == [
        "on_topic: 0 content words shared with the user's line, < 1"]


def test_a_filter_for_one_category_checks_only_its_examples():
    gate = FilterSet([{"regex": "(?i)refund", "role": "user", "category": "refunds"}]).compile()
    assert gate.failures(chat("Are you open?", "No."), "refunds") == ["regex: no match for '(?i)refund' (user)"]
    assert gate.failures(chat("Are you open?", "No."), "closing time") == []


def test_flags_are_the_heuristics_a_reader_would_hold_against_an_example():
    assert flags(chat("I'm sorry for the inconvenience, how can I help?", "No worries at all!")) == [
        "polite", "staff_voice"]
    assert flags(chat("I want a refund", "I want a refund")) == ["echo"]
    assert flags(chat("I want a refund", "I'm sorry, but I can't help with that.")) == ["refusal", "polite"]
    assert flags(chat("Je veux parler au directeur tout de suite, s'il vous plaît.", "Non.")) == ["non_english"]
    assert flags(chat("I want a refund", "No. You broke it, you keep it.")) == []


BEST_OF = MINIMAL_SPEC.replace("    mood: [calm, angry]\n", "").replace("category: mood\n", "").replace(
    "  count: 2", "  count: 3").replace("a {{ mood }} customer", "a customer").replace(
    "  - name: answer\n", "  - name: answer\n    n: 4\n    pick: best\n    max_tokens: 20\n").replace(
    "split:\n  test: 0.25\n  seed: 1\n", "split: {test: 0}\n") + """filters:
  - no_politeness
  - customer_voice
  - {sentiment: {max: 0.3}}
max_rounds: 2
"""


def best_of_teacher():
    """Lists of customer lines, one of each three in the staff's voice; and replies with four
    choices: polite, cut off, mildly rude, very rude (in varying order)."""
    sent: list[dict] = []

    def respond(body: dict):
        sent.append(body)
        user = body["messages"][-1]["content"]
        if user.startswith("Give"):
            place = re.search(r"at the (\w+)", user).group(1)
            return json.dumps([f"I want a refund for my {place} pass.", "How can I help you today?",
                               f"Where is the {place} manager?", f"My {place} locker is broken."])
        choices = [Raw.choice("You're welcome, happy to help!"),
                   {**Raw.choice("No no no no no no no no no no no no no no no no no no no no no"),
                    "finish_reason": "length"},
                   Raw.choice("No. Go away."),
                   Raw.choice("What a stupid question, you idiot. Figure it out yourself.")]
        k = len(user) % 4
        choices = choices[k:] + choices[:k]
        return Raw.completion([{**c, "index": i} for i, c in enumerate(choices)],
                              usage={"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50})

    respond.sent = sent  # type: ignore[attr-defined]
    return respond


def test_best_of_n_keeps_the_choice_the_gates_rate_best_and_never_answers_a_staff_line(tmp_path):
    spec = write_spec(tmp_path, BEST_OF)
    teacher = best_of_teacher()
    with FakeServer(responder=teacher).running() as srv:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # one example per request, not one per choice
    # the most hostile complete choice wins: polite fails a gate, the cut-off one is left out
    assert {r["messages"][-1]["content"] for r in rows} == {
        "What a stupid question, you idiot. Figure it out yourself."}
    replies = [b for b in teacher.sent if not b["messages"][-1]["content"].startswith("Give")]
    assert all(b["n"] == 4 for b in replies) and len(replies) == 6  # one request (one payment) per example
    # the staff's line was dropped before a reply was paid for: never sent, counted, and said why
    assert not any(b["messages"][-1]["content"] == "How can I help you today?" for b in replies)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(c["filtered"] for c in manifest["categories"].values()) == 2
    assert sum(c["surplus"] for c in manifest["categories"].values()) == 0
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [d["detail"] for d in dropped if d["reason"] == "filters"] == [
        "customer_voice: 'How can I help' is the staff's line (user)"] * 2


def test_pick_best_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(SpecError, match=r"pick: best needs n >= 2"):
        load_spec(write_spec(tmp_path, BEST_OF.replace("    n: 4\n", "")))
    early = BEST_OF.replace("    parse: list\n", "    parse: list\n    pick: best\n    n: 2\n")
    with pytest.raises(SpecError, match=r"pick: best"):
        load_spec(write_spec(tmp_path, early))


def test_the_report_flags_every_example_and_says_why_answers_were_rejected(tmp_path):
    build_flagged_dataset(tmp_path)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    panel = page[page.index('<section id="quality">'):page.index("</section>", page.index('<section id="quality">'))]
    # the spec gated on no politeness, yet the panel counts the shop's polite replies: 2 of 4 per mood
    for mood in ("angry", "calm"):
        row = re.search(rf"<tr><td>{mood}</td><td class=\"n\">4</td>(.*?)</tr>", panel, re.S).group(1)
        cells = re.findall(r'<td class="n">(.*?)</td>', row, re.S)
        polite = cells[2]
        assert 'data-flag="polite"' in polite and f'data-category="{mood}"' in polite and ">2</a> (50%)" in polite
    # cut off at max_tokens: the calm customers' first answers (rejected, then asked again)
    # (4 rejected attempts, plus the 6 answers kept for the calm cells' 2 lists and 4 replies)
    assert re.search(r"<tr><td>calm</td>.*?4 of 10 answers</td></tr>", panel, re.S)
    assert "answer was cut off (finish_reason: length)" in panel
    # the failures table says why the rejected attempts were rejected
    assert re.search(r"rejected: answer was cut off \(finish_reason: length\)</td><td class=\"n\">4<", page)
    # every kept row carries its flags for the table's filter
    assert page.count('data-flags="polite"') == 4


def test_the_cells_add_up_to_the_categories(tmp_path):
    """Fan-out repeats and staff lines are dropped before the reply is paid for; the per-cell table
    counts them in their cell, so its columns add up to the category table's."""
    build_flagged_dataset(tmp_path)
    from promptbake.output.report import dataset_context, load_dataset

    context = dataset_context(load_dataset(tmp_path / "out"))
    columns, rows = context["cells"].columns, context["cells"].rows
    generated = sum(r[columns.index("generated")] for r in rows)
    categories = dict(zip(context["category_columns"], context["category_rows"][-1], strict=True))
    assert generated == categories["rows"]
    assert sum(r[columns.index("exact")] for r in rows) == categories["exact_dupes"] > 0
    assert sum(r[columns.index("filters")] for r in rows) == categories["filtered"] > 0
    for row in rows:
        drops = sum(row[columns.index(c)] for c in columns[3:columns.index("kept")])
        assert row[columns.index("generated")] == drops + row[columns.index("kept")], row


def test_report_plots_never_cut_a_category_label():
    from promptbake.output import plots

    long = ["wants to speak to the manager about the refund", "wants to speak to the manager about the receipt"]
    assert plots._short(long[0]).replace("\n", " ") == long[0]  # wrapped, every word kept
    assert plots._short(long[0]) != plots._short(long[1])  # so two categories never share a label
    assert str(plots.stacked_bars("funnel", long, {"kept": [3, 4]}, "examples")).startswith("<svg")


def test_quick_spec_loads_with_its_gates():
    spec = load_spec(Path(__file__).parent.parent / "generators" / "rude_agent_quick.yaml")
    assert spec.steps[-1].pick == "best" and (spec.steps[-1].n or 1) > 1


def test_a_round_whose_lines_a_filter_all_drops_does_not_end_the_rounds(tmp_path):
    """Early gate drops are the gates' chance, not a dead end: a top-up round that got only staff
    lines goes on to the next round, which fills the cell (it stopped, short, before)."""
    spec = write_spec(tmp_path, BEST_OF.replace("  count: 3", "  count: 2").replace("max_rounds: 2", "max_rounds: 4"))
    asked: dict[str, int] = {}
    teacher = best_of_teacher()

    def respond(body: dict):
        user = body["messages"][-1]["content"]
        if user.startswith("Give"):
            place = re.search(r"at the (\w+)", user).group(1)
            asked[place] = asked.get(place, 0) + 1
            staff = ["How can I help you today?", "You're welcome, come again!", "How may I help you?"]
            if asked[place] == 1:
                return json.dumps([f"My {place} locker is broken.", *staff])
            if asked[place] == 2:
                return json.dumps(staff)
            return json.dumps([f"Where is the {place} manager?", *staff])
        return teacher(body)

    with FakeServer(responder=respond).running() as srv:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q"])
    assert result.exit_code == 0, result.output
    assert asked == {"shop": 3, "gym": 3}
    assert len((tmp_path / "out" / "train.jsonl").read_text().splitlines()) == 4
