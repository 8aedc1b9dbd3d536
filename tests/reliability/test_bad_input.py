"""The bad-input corpus (``tests/data/bad/``): every file gets one ``Error:`` line on stderr that
names the place (file and line, or file and field), exit code 2, and never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from relkit import one_line_error, promptbake

BAD = Path(__file__).resolve().parent.parent / "data" / "bad"
DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens: a bad spec must fail before any request

# corpus file → what the error line must say (the place first)
SPEC_CASES = {
    "malformed_yaml.yaml": "malformed_yaml.yaml:7: invalid YAML",
    "unknown_key.yaml": "unknown_key.yaml:4: teacher.temprature: unknown key",
    "wrong_type.yaml": "wrong_type.yaml:7: grid.count: Input should be a valid integer",
    "empty_grid.yaml": "empty_grid.yaml: grid.axes.place is empty",
    "missing_template.yaml": "missing_template.yaml:steps[0].messages[0].template: prompts/missing.j2: "
                             "template file not found",
    "undefined_variable.yaml": "undefined_variable.yaml:steps[0].messages[0].content:1: 'plaace' is undefined",
    "non_utf8.yaml": "non_utf8.yaml:13: not UTF-8 text",
    "broken_table.yaml": "broken_table.jsonl:3: not valid JSON",
    "non_utf8_table.yaml": "non_utf8_table.jsonl:2: not UTF-8 text",
    "huge_line_table.yaml": "huge_line.jsonl:2: not valid JSON",
}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """The corpus, plus the one file too big to keep in git: a JSONL input whose 2nd line is a
    10 MB unterminated string."""
    shutil.copytree(BAD, tmp_path / "bad")
    spec = (BAD / "broken_table.yaml").read_text(encoding="utf-8")
    (tmp_path / "bad" / "huge_line_table.yaml").write_text(spec.replace("broken_table.jsonl", "huge_line.jsonl"))
    with (tmp_path / "bad" / "huge_line.jsonl").open("w", encoding="utf-8") as fh:
        fh.write('{"input": "short"}\n{"input": "' + "x" * 10_000_000 + "\n")
    return tmp_path / "bad"


@pytest.mark.parametrize("command", ["expand", "generate"])
@pytest.mark.parametrize("name", sorted(SPEC_CASES))
def test_bad_spec_or_input_gives_one_line_naming_the_place(corpus, name, command):
    args = ["-o", "requests.jsonl"] if command == "expand" else ["--store", "s.db", "--base-url", DEAD_URL, "-q"]
    done = promptbake(command, name, *args, cwd=corpus, timeout=60)
    line = one_line_error(done.stderr)
    assert done.returncode == 2, done.stderr
    assert SPEC_CASES[name] in line, line
    assert len(line) < 400, line  # a 10 MB line is named, not quoted
    assert not (corpus / "requests.jsonl").exists()


def test_validate_broken_jsonl_and_10mb_line(corpus):
    """``validate`` reports content problems in its report and exits 2 like any bad input, always
    naming the line; a 10 MB line is counted, not choked on."""
    done = promptbake("validate", "broken_validate.jsonl", cwd=corpus, timeout=60)
    assert done.returncode == 2
    assert one_line_error(done.stderr).startswith("Error: broken_validate.jsonl: 2 format errors (invalid_json")
    assert "invalid_json: 1 (line 2)" in done.stdout

    ok_row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    big_row = {"messages": [{"role": "user", "content": "word " * 2_000_000}, {"role": "assistant", "content": "ok"}]}
    rows = [ok_row] * 5 + [big_row] + [ok_row] * 5
    (corpus / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    done = promptbake("validate", "big.jsonl", cwd=corpus, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "example_over_token_limit: 1 (line 6)" in done.stdout


def test_validate_names_every_provider_rejected_shape_with_its_line(corpus):
    done = promptbake("validate", "rejected_shapes.jsonl", "--json", cwd=corpus, timeout=60)
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert line.startswith("Error: rejected_shapes.jsonl: "), line
    errors = json.loads(done.stdout)["errors"]
    expected = {
        "data_type": 2,
        "missing_messages_list": 3,
        "message_missing_key": 4,
        "message_unrecognized_key": 5,
        "unrecognized_role": 6,
        "missing_content": 7,
        "example_missing_assistant_message": 8,
        "invalid_json": 9,
    }
    for key, lineno in expected.items():
        assert key in line, line
        assert lineno in errors[key], (key, errors)
