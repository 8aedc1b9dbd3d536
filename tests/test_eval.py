"""eval against a real loopback OpenAI-compatible server: checks, judge, sweep, store resume."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer, Fault

from promptbake.cli.main import cli
from promptbake.errors import InputError
from promptbake.specification.models import parse_spec
from promptbake.workflows.evaluate import Scoring, load_test, parse_sweeps, summarise

EXAMPLES = [  # (id, category, user text, reference answer)
    ("j1", "json", "give json please", '{"a": 1}'),
    ("j2", "json", "more json", '{"a": 2}'),
    ("c1", "chat", "say hi", "hello there"),
    ("c2", "chat", "say bye", "goodbye"),
]


def write_dataset(directory: Path, examples=EXAMPLES, *, metadata: bool = True) -> Path:
    """A built dataset's test split and its metadata sidecar (train rows first, as build writes)."""
    directory.mkdir(exist_ok=True)
    lines, metas = [], [{"id": "t0", "category": "json", "split": "train"}]
    for id_, category, user, reference in examples:
        lines.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user},
                                   {"role": "assistant", "content": reference, "weight": 1}]})
        metas.append({"id": id_, "category": category, "split": "test"})
    (directory / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if metadata:
        (directory / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    return directory / "test.jsonl"


def is_judge(body: dict) -> bool:
    return "evaluator" in body["messages"][0]["content"]


def student(body: dict) -> str:
    """Answers JSON when asked for JSON (and only at temperature 0), prose otherwise."""
    user = body["messages"][-1]["content"]
    if "json" in user and body.get("temperature", 0) == 0:
        return json.dumps({"a": 1})
    return "hello there" if "hi" in user else "whatever"


def responder(body: dict) -> str:
    if is_judge(body):
        graded = body["messages"][1]["content"].split("Answer to grade:\n", 1)[1]
        score = 5 if graded.startswith("{") else 2
        return json.dumps({"reasoning": f"graded {graded[:10]}", "score": score})
    return student(body)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["eval", *args, "-q"])


def rows(path: str = "eval.jsonl") -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_checks_and_judge_end_to_end(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=responder).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "student",
                        "--check-json", "--criteria", "The answer is JSON.", "--judge-model", "judge",
                        "--judge-base-url", srv.base_url)
        assert result.exit_code == 0, result.output
        answers = [b for b in srv.bodies if not is_judge(b)]
        judged = [b for b in srv.bodies if is_judge(b)]
    assert len(answers) == 4 and len(judged) == 4
    # the prompt is everything before the last assistant turn, without training-only keys
    assert answers[0]["messages"] == [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "give json please"}]
    assert {b["model"] for b in answers} == {"student"} and {b["model"] for b in judged} == {"judge"}
    assert judged[0]["response_format"]["type"] == "json_schema"
    assert "Reference answer" in judged[0]["messages"][1]["content"]
    by_id = {r["id"]: r for r in rows()}
    assert by_id["j1"]["category"] == "json" and by_id["j1"]["pass"] is True
    assert by_id["j1"]["scores"] == {"checks": 1.0, "judge": 5} and by_id["j1"]["score"] == 1.0
    assert by_id["j1"]["judge_reasoning"] == 'graded {"a": 1}'
    assert by_id["c1"]["pass"] is False and by_id["c1"]["failures"][0].startswith("json:")
    assert by_id["c1"]["scores"] == {"checks": 0.0, "judge": 2} and by_id["c1"]["score"] == 0.125
    table = {line.split()[0]: line.split() for line in result.output.splitlines() if line.split()}
    assert table["json"][3] == "100%" and table["chat"][3] == "0%"
    assert table["all"][3] == "50%"


def test_judge_score_below_pass_score_fails_and_bad_verdicts_are_retried(tmp_path):
    data = write_dataset(tmp_path / "data", EXAMPLES[:1])
    verdicts = iter(["I think it is fine", json.dumps({"reasoning": "meh", "score": 3})])

    def respond(body: dict) -> str:
        return next(verdicts) if is_judge(body) else "plain"

    with FakeServer(responder=respond).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                        "--criteria", "Is it good?", "--judge-model", "j", "--judge-base-url", srv.base_url,
                        "--pass-score", "4")
        assert result.exit_code == 0, result.output
        assert sum(is_judge(b) for b in srv.bodies) == 2  # the non-JSON verdict was asked again
    (row,) = rows()
    assert row["pass"] is False and row["scores"] == {"judge": 3} and row["judge_reasoning"] == "meh"
    assert row["score"] == 0.5


def test_without_checks_every_output_is_recorded_with_length_and_format_stats(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=student).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m")
        assert result.exit_code == 0, result.output
    out = rows()
    assert [r["output"] for r in out] == ['{"a": 1}', '{"a": 1}', "hello there", "whatever"]
    assert all(r["pass"] is None and r["score"] is None for r in out)
    stats = {g.category: g.as_dict() for g in summarise(out)}
    assert stats["json"]["json_share"] == 1.0 and stats["chat"]["json_share"] == 0.0
    assert stats["chat"]["mean_length"] == (len("hello there") + len("whatever")) / 2
    assert stats["all"]["median_length"] == 8.0  # lengths 8, 8, 11, 8
    assert "json" in result.output and "100%" in result.output


def test_sweep_runs_the_grid_and_reports_each_setting(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=student).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                        "--check-json", "--sweep", "temperature=0,1", "--sweep", "top_p=1,0.9")
        assert result.exit_code == 0, result.output
        settings = sorted({(b["temperature"], b["top_p"]) for b in srv.bodies})
        assert len(srv.bodies) == 4 * 4
    assert settings == [(0, 0.9), (0, 1), (1, 0.9), (1, 1)]
    out = rows()
    assert len(out) == 16 and out[0]["settings"] == {"temperature": 0, "top_p": 1}
    json_rows = [line.split() for line in result.output.splitlines() if line.startswith("json ")]
    assert [(r[1], r[5]) for r in json_rows] == [
        ("temperature=0", "100%"), ("temperature=0", "100%"), ("temperature=1", "0%"), ("temperature=1", "0%")]
    assert "best for json: temperature=0 top_p=1 (1.00)" in result.output


def test_rerun_is_served_from_the_store(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=student).running() as srv:
        args = ("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m", "--exact")
        assert invoke(*args).exit_code == 0
        first = Path("eval.jsonl").read_bytes()
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert srv.count == 4  # nothing paid twice
        assert "4 from the store, 0 sent" in result.output
        assert Path("eval.jsonl").read_bytes() == first
        assert invoke(*args, "--no-cache").exit_code == 0
        assert srv.count == 8
    assert [r["pass"] for r in rows()] == [True, False, True, False]  # exact vs the reference


def test_an_error_midway_loses_no_finished_answer(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=student, script=[None, None, Fault("401")]).running() as srv:
        args = ("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                "--concurrency", "1")
        result = invoke(*args)
        assert result.exit_code != 0 and "refused the credentials" in result.output
        assert not Path("eval.jsonl").exists()
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert srv.count == 3 + 2  # only the two unanswered examples were sent again
    assert len(rows()) == 4 and all(r["error"] is None for r in rows())


def test_failed_calls_are_recorded_and_retried_on_the_next_run(tmp_path):
    data = write_dataset(tmp_path / "data", EXAMPLES[:2])
    with FakeServer(responder=student, script=[Fault("400")]).running() as srv:
        args = ("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                "--concurrency", "1", "--check-json")
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "1 answers failed" in result.output
        failed = rows()[0]
        assert failed["output"] is None and failed["pass"] is None and "HTTP 400" in failed["error"]
        assert invoke(*args).exit_code == 0
        assert srv.count == 3
    assert [r["pass"] for r in rows()] == [True, True]


def test_without_metadata_ids_are_lines_and_the_category_is_all(tmp_path):
    data = write_dataset(tmp_path / "data", metadata=False)
    items = load_test(data)
    assert [i.id for i in items] == ["line1", "line2", "line3", "line4"]
    assert {i.category for i in items} == {"all"}
    assert items[2].reference == "hello there"


def test_metadata_that_does_not_match_the_split_is_an_error(tmp_path):
    data = write_dataset(tmp_path / "data", EXAMPLES[:2])
    (tmp_path / "other.jsonl").write_text('{"id": "x", "category": "c"}\n')
    result = invoke("--data", str(data), "--out", "eval.jsonl", "--model", "m", "--metadata",
                    str(tmp_path / "other.jsonl"), "--base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2
    assert "1 metadata rows for split 'test' but" in result.output


def test_bad_test_line_names_file_and_line(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"messages": []}\n{"prompt": "x"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:1: nothing before"):
        load_test(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n{"prompt": "x"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:2: no 'messages' list"):
        load_test(tmp_path / "t.jsonl")


def test_parse_sweeps():
    assert parse_sweeps([]) == [{}]
    assert parse_sweeps(["temperature=0,0.5", "max_tokens=10"]) == [
        {"temperature": 0, "max_tokens": 10}, {"temperature": 0.5, "max_tokens": 10}]
    for bad, message in [("temperature", "NAME=V1"), ("model=a", "not a sweepable"), ("temperature=x", "not a number"),
                         ("temperature=3", "less than or equal to 2")]:
        with pytest.raises(InputError, match=message):
            parse_sweeps([bad])
    with pytest.raises(InputError, match="twice"):
        parse_sweeps(["top_p=1", "top_p=0.5"])


SPEC = """
name: s
grid: {axes: {a: [x]}}
steps: [{name: r, messages: [{role: user, content: hi}]}]
example:
  messages: [{role: assistant, content: "{{ r }}"}]
  checks: {json: true}
"""


def test_scoring_comes_from_the_eval_block_then_example_checks_with_flags_on_top():
    spec = parse_spec(SPEC, "s.yaml")
    assert Scoring.build(spec).checks.json_valid is True
    scoring = Scoring.build(spec, {"regex": "^a", "exact": None})
    assert scoring.checks.json_valid and scoring.checks.regex == "^a"
    block = parse_spec(SPEC + "eval: {checks: {max_length: 5}, criteria: 'Rude?', pass_score: 3}\n", "s.yaml")
    scoring = Scoring.build(block, {}, None, None)
    assert not scoring.checks.json_valid and scoring.checks.max_length == 5
    assert (scoring.criteria, scoring.pass_score) == ("Rude?", 3)
    assert Scoring.build(block, {}, "Polite?", 5).criteria == "Polite?"
    with pytest.raises(InputError, match="invalid regex"):
        Scoring.build(None, {"regex": "("})
    assert Scoring.build(None).checks is None


def test_a_rubric_without_a_judge_model_is_an_input_error(tmp_path):
    data = write_dataset(tmp_path / "data")
    result = invoke("--data", str(data), "--out", "eval.jsonl", "--model", "m", "--criteria", "x",
                    "--base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "--judge-model" in result.output


def test_check_schema_flag_reads_a_schema_file(tmp_path):
    data = write_dataset(tmp_path / "data", EXAMPLES[:1] + EXAMPLES[2:3])
    schema = {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    with FakeServer(responder=student).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                        "--check-schema", str(tmp_path / "schema.json"))
        assert result.exit_code == 0, result.output
    assert [(r["id"], r["pass"]) for r in rows()] == [("j1", True), ("c1", False)]
    (tmp_path / "bad.json").write_text("{")
    result = invoke("--data", str(data), "--out", "eval.jsonl", "--model", "m", "--check-schema",
                    str(tmp_path / "bad.json"))
    assert result.exit_code == 2 and "bad.json: the JSON schema is not valid JSON" in result.output


def numbered_student():
    """A student whose answers change with every call (a retrained or sampling model)."""
    calls = iter(range(10**9))

    def respond(body: dict) -> str:
        return f"answer {next(calls)}"

    return respond


def outputs(path: str = "eval.jsonl") -> list[str]:
    return [r["output"] for r in rows(path)]


def test_answers_are_keyed_by_endpoint_and_model_version(tmp_path):
    data = write_dataset(tmp_path / "data")
    base = ("--data", str(data), "--out", "eval.jsonl", "--model", "m", "--concurrency", "1")
    with FakeServer(responder=numbered_student()).running() as first:
        assert invoke(*base, "--base-url", first.base_url).exit_code == 0
        old = outputs()
        with FakeServer(responder=numbered_student()).running() as second:  # same model name, elsewhere
            result = invoke(*base, "--base-url", second.base_url)
            assert result.exit_code == 0, result.output
            assert second.count == 4 and "0 from the store, 4 sent" in result.output
        assert invoke(*base, "--base-url", first.base_url).exit_code == 0
        assert first.count == 4 and outputs() == old  # the first endpoint's answers are still served
        retrained = invoke(*base, "--base-url", first.base_url, "--model-version", "v2")
        assert retrained.exit_code == 0, retrained.output
        assert first.count == 8 and outputs() == [f"answer {i}" for i in range(4, 8)]
        again = invoke(*base, "--base-url", first.base_url, "--model-version", "v2", "--no-cache")
        assert again.exit_code == 0, again.output
        assert first.count == 12 and outputs() == [f"answer {i}" for i in range(8, 12)]
    with sqlite3.connect("eval.db") as db:
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 16  # every answer kept


def test_the_answers_and_the_judge_on_one_endpoint_share_one_client(tmp_path):
    data = write_dataset(tmp_path / "data")
    with FakeServer(responder=responder).running() as srv:
        result = invoke("--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url, "--model", "m",
                        "--criteria", "Answers in JSON.", "--judge-model", "judge", "--judge-base-url", srv.base_url,
                        "--concurrency", "1")
        assert result.exit_code == 0, result.output
        assert srv.count == 8
    assert len(srv.connections) == 1, srv.connections
