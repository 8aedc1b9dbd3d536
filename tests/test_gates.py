"""Quality gates inside the exact-count loop: cheap filters, LLM judges, counts per gate."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.curate.filters import FilterSet, echo_score

GATED = MINIMAL_SPEC.replace("  count: 2", "  count: 5") + """
filters: [no_echo, no_refusal, no_empty, {max_chars: 200}]
judge:
  criteria: "The reply is extremely rude to the customer and concise."
  min_score: 4
  fields: [user, assistant]
max_rounds: 8
"""


def gated_responder():
    """The grid teacher, whose replies are a deterministic mix (by a hash of the prompt): rude,
    polite (a judge scores it 2), an echo of the customer (dropped by no_echo) or a refusal; and a
    judge that reasons and scores rude replies 5, everything else 2. Records what it judged."""
    lists = list_then_reply_responder()
    judged: list[str] = []

    def respond(body: dict) -> str:
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        user = body["messages"][-1]["content"]
        if user.startswith("Second opinion"):
            verdict = 5 if "Ticket 3" in user or "Ticket 4" in user else 1
            return json.dumps({"reasoning": "second", "score": verdict})
        if "strict judge" in system:
            judged.append(user)
            rude = "Ugh" in user.split("[assistant]")[-1]
            return json.dumps({"reasoning": "rude and short" if rude else "polite", "score": 5 if rude else 2})
        if system:  # a reply
            kind = int(hashlib.sha256(user.encode()).hexdigest(), 16) % 6
            if kind == 0:
                return "Happy to help you with that today!"
            if kind == 1:
                return user
            if kind == 2:
                return "I'm sorry, but I can't help with that."
            return f"Ugh. Not my problem, pal. Ticket {kind}."
        return lists(body)

    respond.judged = judged  # type: ignore[attr-defined]
    return respond


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_cell_gets_its_count_of_examples_that_pass_every_gate(tmp_path):
    spec = write_spec(tmp_path, GATED)
    responder = gated_responder()
    with FakeServer(responder=responder).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    meta = read_jsonl(out / "metadata.jsonl")
    # exactly the requested count per cell (4 cells × 5), each kept example judged ≥ min_score
    assert manifest["train"] + manifest["test"] == 20
    per_cell: dict[str, int] = {}
    for m in meta:
        per_cell[m["provenance"]["cell_key"]] = per_cell.get(m["provenance"]["cell_key"], 0) + 1
        assert m["scores"]["judge"] >= 4
    assert sorted(per_cell.values()) == [5, 5, 5, 5]
    replies = [r["messages"][-1]["content"] for n in ("train", "test") for r in read_jsonl(out / f"{n}.jsonl")]
    assert all(r.startswith("Ugh") for r in replies)
    # drops are counted per gate, and dropped.jsonl says why with the judge's score and reasoning
    categories = manifest["categories"].values()
    assert sum(c["judged_out"] for c in categories) > 0
    assert sum(c["filtered"] for c in categories) > 0
    dropped = read_jsonl(out / "dropped.jsonl")
    judged_out = [d for d in dropped if d["reason"] == "judge"]
    assert judged_out and all(d["score"] < 4 and d["reasoning"] == "polite" for d in judged_out)
    filtered = [d for d in dropped if d["reason"] == "filters"]
    assert {d["detail"].split(":")[0] for d in filtered} == {"no_echo", "no_refusal"}
    assert sum(c["judged_out"] for c in categories) == len(judged_out)
    # cheap filters run first: no echo or refusal was ever sent to the judge
    assert responder.judged and not any("I'm sorry, but I can't" in text for text in responder.judged)
    for text in responder.judged:
        user, assistant = re.match(r"(?s).*\[user\]\n(.*)\n\n\[assistant\]\n(.*)\n\nFirst reason", text).groups()
        assert user != assistant
    # the report shows the judge's scores and why each example was dropped
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "No judge scores recorded" not in page
    assert "judge: score 2 &lt; 4 — polite" in page and "filters: no_echo: repeats" in page


def test_gated_rebuild_is_byte_identical_and_judges_nothing_again(tmp_path):
    spec = write_spec(tmp_path, GATED)
    with FakeServer(responder=gated_responder()).running() as srv:
        assert run("run", str(spec), "--out", "a", "--store", "s.db", "--base-url", srv.base_url, "-q").exit_code == 0
        sent = srv.count
        result = run("run", str(spec), "--out", "b", "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == sent
    for name in ("train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_several_judges_must_all_pass_and_a_judge_may_be_a_template(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "second.j2").write_text("Second opinion on {{ example }}. Score it.\n")
    spec = write_spec(tmp_path, GATED.replace("  fields: [user, assistant]\n", "  fields: [user, assistant]\n"
                                              "  - {template: templates/second.j2, min_score: 4}\n")
                      .replace("judge:\n  criteria", "judge:\n  - criteria").replace("\n  min_score: 4\n  fields",
                                                                                  "\n    min_score: 4\n    fields"))
    with FakeServer(responder=gated_responder()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    meta = read_jsonl(tmp_path / "out" / "metadata.jsonl")
    assert len(meta) == 20
    assert all(m["scores"] == {"judge": 5, "judge_2": 5} for m in meta)
    replies = [r["messages"][-1]["content"] for n in ("train", "test")
               for r in read_jsonl(tmp_path / "out" / f"{n}.jsonl")]
    assert {r[-9:] for r in replies} == {"Ticket 3.", "Ticket 4."}


def test_dry_run_prices_the_judge(tmp_path):
    spec = write_spec(tmp_path, GATED)
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("step judge:"))
    requests = int(line.split(":")[1].split()[0])
    assert requests == 28  # 4 cells × ceil(5 accepted / the default 80% expected pass rate)
    assert "$" in line
    assert "80% of examples assumed to pass (judge.expected_pass_rate; an estimate)" in result.output


@pytest.mark.parametrize(
    ("filters", "prompt", "answer", "gate", "good"),
    [
        (["no_echo"], "Where is the manager? I want a refund.", "where is the manager i want a refund", "no_echo",
         "He left. Deal with it."),
        (["no_refusal"], "Refund me", "As an AI, I cannot do that.", "no_refusal", "Ugh, figure it out yourself."),
        (["no_empty"], "Refund me", "   ", "no_empty", "No."),
        ([{"max_chars": 5}], "Refund me", "No refunds here.", "max_chars", "No."),
        ([{"min_chars": 30}], "Refund me", "No.", "min_chars", "Ugh, figure it out yourself, pal."),
        ([{"language": "en"}], "Refund me", "Nein, das geht nicht, gehen Sie bitte sofort.", "language",
         "Figure it out yourself, we close at nine."),
        ([{"regex": "^Ugh"}], "Refund me", "Fine.", "regex", "Ugh. Fine."),
        ([{"not_regex": "(?i)sorry"}], "Refund me", "Sorry, no.", "not_regex", "No."),
    ],
)
def test_each_builtin_filter_drops_with_its_name(filters, prompt, answer, gate, good):
    compiled = FilterSet.model_validate(filters).compile()
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    reasons = compiled.failures(messages)
    assert len(reasons) == 1 and reasons[0].startswith(f"{gate}:"), reasons
    assert compiled.failures([{"role": "user", "content": prompt}, {"role": "assistant", "content": good}]) == []


def test_a_filter_can_check_the_user_turn():
    compiled = FilterSet.model_validate([{"regex": r"(?i)\b(I|my|me)\b", "role": "user"}]).compile()
    narration = [{"role": "user", "content": "A man walks in."}, {"role": "assistant", "content": "Out."}]
    assert compiled.failures(narration) == ["regex: no match for '(?i)\\\\b(I|my|me)\\\\b' (user)"]
    spoken = [{"role": "user", "content": "I want my money back."}, {"role": "assistant", "content": "No."}]
    assert compiled.failures(spoken) == []


def test_echo_score_ignores_case_and_punctuation_but_not_new_words():
    assert echo_score("Where is the manager?", "WHERE is the manager") == 1.0
    assert echo_score("Where is the manager?", "He left. Deal with it.") == 0.0


def test_an_unknown_filter_is_a_spec_error_naming_the_line(tmp_path):
    spec = write_spec(tmp_path, MINIMAL_SPEC + "filters: [no_echo, no_rudeness]\n")
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 2
    assert re.search(r"spec\.yaml:\d+: filters.*unknown filter 'no_rudeness'", result.output), result.output


def test_a_judge_needs_criteria_or_a_template(tmp_path):
    spec = write_spec(tmp_path, MINIMAL_SPEC + "judge: {min_score: 4}\n")
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 2
    assert "exactly one of 'criteria' or 'template'" in result.output
