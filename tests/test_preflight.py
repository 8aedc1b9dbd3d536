"""Mistakes are caught before anything is paid: every template is rendered once, with placeholders
for the answers, by ``expand`` (and ``--dry-run``), ``generate`` and ``run`` before any request."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli

TYPO_IN_EXAMPLE = MINIMAL_SPEC.replace('      content: "{{ answer }}"', '      content: "{{ answerr }}"')
TYPO_IN_STEP_1 = MINIMAL_SPEC.replace("        content: Be rude.", "        content: Be rude to {{ plcae }}.")
COUNT_IN_STEP_1 = MINIMAL_SPEC.replace("        content: Be rude.", "        content: Be rude {{ count }} times.")
CASES = {
    "example": (TYPO_IN_EXAMPLE, "spec.yaml:example.messages[1].content:1: 'answerr' is undefined"),
    "step": (TYPO_IN_STEP_1, "spec.yaml:steps[1].messages[0].content:1: 'plcae' is undefined"),
    "count": (COUNT_IN_STEP_1, "spec.yaml:steps[1].messages[0].content:1: 'count' is undefined"),  # step 0 only
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["dry-run", "expand", "generate", "run"])
def test_a_template_typo_is_exit_2_naming_field_and_line_with_nothing_sent(case, command, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    text, message = CASES[case]
    spec = str(write_spec(Path.cwd(), text))
    with FakeServer(responder=list_then_reply_responder()).running() as server:
        args = {
            "dry-run": ["expand", spec, "--dry-run"],
            "expand": ["expand", spec, "-o", "requests.jsonl"],
            "generate": ["generate", spec, "--store", "s.db", "--base-url", server.base_url, "-q"],
            "run": ["run", spec, "--out", "out", "--base-url", server.base_url, "-q"],
        }[command]
        result = CliRunner().invoke(cli, args)
        assert server.stats()["requests"] == 0
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: {spec.rsplit('/', 1)[0]}/{message}"
    assert not Path("s.db").exists() and not Path("out/promptbake.db").exists() and not Path("requests.jsonl").exists()


JSON_STEP = """
name: js
teacher: {model: gpt-4o-mini}
grid: {axes: {topic: [tea]}, count: 1}
steps:
  - name: facts
    parse: json
    messages: [{role: user, content: "Facts about {{ topic }} as JSON."}]
  - name: line
    parse: list
    messages: [{role: user, content: "{{ facts.title }}: {% for f in facts.items_ %}{{ f.text }}{% endfor %}"}]
  - name: reply
    messages: [{role: user, content: "{{ line.word }} {{ facts | tojson }} {{ facts[0] }} {{ line | length }}"}]
example:
  messages:
    - {role: user, content: "{{ facts.title | upper }} {{ line }}"}
    - {role: assistant, content: "{{ reply }}"}
"""


def test_fields_of_structured_answers_are_not_mistakes():
    spec = str(write_spec(Path.cwd(), JSON_STEP))
    result = CliRunner().invoke(cli, ["expand", spec, "--dry-run"])
    assert result.exit_code == 0, result.output
    text_field = JSON_STEP.replace("{{ reply }}", "{{ reply.text }}")  # a text answer has no fields
    result = CliRunner().invoke(cli, ["expand", str(write_spec(Path.cwd(), text_field)), "--dry-run"])
    assert result.exit_code == 2 and "example.messages[1].content:1:" in result.stderr


def test_a_judge_template_typo_is_caught_before_anything_is_sent(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    Path("templates").mkdir()
    Path("templates/judge.j2").write_text("Rate this:\n{{ exampel }}\n", encoding="utf-8")
    spec = str(write_spec(Path.cwd(), MINIMAL_SPEC + "judge:\n  template: judge.j2\n"))
    with FakeServer(responder=list_then_reply_responder()).running() as server:
        result = CliRunner().invoke(cli, ["run", spec, "--out", "out", "--base-url", server.base_url, "-q"])
        assert server.stats()["requests"] == 0
    assert result.exit_code == 2 and "judge.j2:2: 'exampel' is undefined" in result.stderr, result.output
    Path("templates/judge.j2").write_text("Rate this:\n{{ example }} against {{ place }}\n", encoding="utf-8")
    assert CliRunner().invoke(cli, ["expand", spec, "--dry-run"]).exit_code == 0
