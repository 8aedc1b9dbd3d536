"""The study's formatting task as a shipped generator: run it against the stand-in, then score a
student on the five metrics per subject with ``eval --spec``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import ROOT, json_format_responder

from promptbake.cli.main import cli
from promptbake.curate.checks import AnswerList

SPEC = str(ROOT / "generators" / "json_format.yaml")
MISTAKES = {"science": "wrong_first", "history": "broken", "math": "int_values"}
# per subject: list, keys, values (among valid lists with the right keys), correct, items
EXPECTED = {
    "geography": ["100%", "100%", "100%", "100%", "100%"],
    "science": ["100%", "100%", "100%", "0%", "75%"],
    "history": ["0%", "0%", "-", "0%", "0%"],
    "math": ["100%", "100%", "0%", "0%", "0%"],
}


def run_formatting_task(url: str) -> Path:
    result = CliRunner().invoke(cli, ["run", SPEC, "--out", "out/json", "--base-url", url, "-q"])
    assert result.exit_code == 0, result.output
    return Path("out/json")


def test_training_examples_keep_the_questions_and_a_json_answer(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeServer(responder=json_format_responder()).running() as server:
        out = run_formatting_task(server.base_url)
    lines = [line for split in ("train", "test") for line in (out / f"{split}.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 16  # one example per set of four questions in the bank
    for row in rows:
        _, user, assistant = row["messages"]
        assert user["content"].count("Question ") == 4 and "1. " in user["content"]
        answer = json.loads(assistant["content"])  # JSON, not a Python repr
        assert [set(item) for item in answer] == [{"question", "answer"}] * 4


def test_eval_prints_the_five_metrics_per_subject(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeServer(responder=json_format_responder()).running() as teacher:
        out = run_formatting_task(teacher.base_url)
    with FakeServer(responder=json_format_responder(MISTAKES)).running() as student:
        result = CliRunner().invoke(cli, [
            "eval", "--spec", SPEC, "--model", "student", "--base-url", student.base_url,
            "--data", str(out / "test.jsonl"), "--out", "eval.jsonl", "-q",
        ])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    header = lines[0].split()
    assert header[-5:] == list(AnswerList.METRICS)
    table = {line.split()[0]: line.split()[-5:] for line in lines[1:] if line.split()[0] in EXPECTED}
    assert table == EXPECTED
    rows = [json.loads(line) for line in Path("eval.jsonl").read_text().splitlines()]
    science = next(r for r in rows if r["category"] == "science")
    assert science["metrics"] == {"list": 1.0, "keys": 1.0, "values": 1.0, "correct": 0.0, "items": 0.75}
    assert science["pass"] is False


def test_answer_list_metrics_without_a_known_reference():
    answers = AnswerList(keys=["question", "answer"], values=["1", "2", "3", "4"])
    good = '[{"question": 1, "answer": "2"}]'
    assert answers.metrics(good) == {"list": 1.0, "keys": 1.0, "values": 1.0, "correct": None, "items": None}
    assert answers.metrics('{"answer": "2"}', ["2"]) == {
        "list": 0.0, "keys": 0.0, "values": None, "correct": 0.0, "items": 0.0
    }
    extra = '[{"question": 1, "answer": "2", "why": "x"}]'
    assert answers.metrics(extra, '[{"question": 1, "answer": "2"}]')["keys"] == 0.0
    assert answers.metrics(extra, '[{"question": 1, "answer": "2"}]')["items"] == 1.0


def test_build_spec_finds_the_store_run_kept_in_out(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeServer(responder=json_format_responder()).running() as server:
        out = run_formatting_task(server.base_url)
    assert not Path("promptbake.db").exists()
    result = CliRunner().invoke(cli, ["build", SPEC, "--out", str(out), "--format", "messages"])
    assert result.exit_code == 0, result.output
    assert len((out / "messages" / "train.jsonl").read_text().splitlines()) == 12
    result = CliRunner().invoke(cli, ["build", SPEC, "--out", "elsewhere"])
    assert result.exit_code != 0 and "elsewhere/promptbake.db" in result.stderr


def test_a_reference_that_cannot_render_stops_eval_before_any_request(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeServer(responder=json_format_responder()).running() as teacher:
        out = run_formatting_task(teacher.base_url)
    spec = tmp_path / "generators" / "json_format.yaml"
    spec.parent.mkdir()
    spec.write_text(Path(SPEC).read_text().replace("questions | map", "questionz | map"))
    with FakeServer(responder=json_format_responder()).running() as student:
        result = CliRunner().invoke(cli, [
            "eval", "--spec", str(spec), "--model", "student", "--base-url", student.base_url,
            "--data", str(out / "test.jsonl"), "--out", "eval.jsonl", "-q",
        ])
        assert student.stats()["requests"] == 0
    assert result.exit_code == 2 and "json_format.yaml:eval.reference:1: 'questionz' is undefined" in result.stderr
