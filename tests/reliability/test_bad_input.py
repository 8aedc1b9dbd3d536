"""The bad-input corpus (``tests/data/bad/``): every file gets one ``Error:`` line on stderr that
names the place (file and line, or file and field), exit code 2, and never a traceback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import one_line_error, peak_rss, promptbake

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
    # YAML aliases that expand to gigabytes (in extra_body, where nothing validates the shape)
    "alias_bomb.yaml": "alias_bomb.yaml:17: YAML aliases expand this value beyond",
    "alias_recursive.yaml": "alias_recursive.yaml:11: a YAML alias refers to the value containing it",
    # templates that would run for hours or fill memory: refused in bounded time and memory
    "jinja_range.yaml": "jinja_range.yaml:steps[0].messages[0].content:1: template refused: Range too big",
    "jinja_nested_loops.yaml": "jinja_nested_loops.yaml:steps[0].messages[0].content:1: template refused: "
                               "more than 1,000,000 loop iterations",
    "jinja_gigabyte.yaml": "jinja_gigabyte.yaml:steps[0].messages[0].content:1: template refused: "
                           "a repeated value would be 1,000,000,000 long",
    "jinja_doubling.yaml": "jinja_doubling.yaml:steps[0].messages[0].content:1: template refused: a ~ concatenation",
    "jinja_macro_recursion.yaml": "jinja_macro_recursion.yaml:steps[0].messages[0].content:1: template refused: "
                                  "calls itself too deeply",
    "jinja_self_include.yaml": "self_include.j2:2: template refused: calls itself too deeply",
}
JINJA_BOMBS = sorted(name for name in SPEC_CASES if name.startswith("jinja_"))


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


@pytest.mark.parametrize("name", JINJA_BOMBS)
def test_template_bombs_are_refused_in_bounded_memory(corpus, name):
    """The corpus's template bombs, one process each: its own peak RSS (``wait4``) stays small."""
    done, peak = peak_rss([sys.executable, "-m", "promptbake", "expand", name, "-o", "r.jsonl"], cwd=corpus)
    assert done.returncode == 2, done.stderr
    assert SPEC_CASES[name] in one_line_error(done.stderr)
    assert peak < 300 * 1024, peak  # KiB: a gigabyte string was never built


TEACHER_FLAGS = [
    ("--concurrency", "0", "--concurrency 0: Input should be greater than or equal to 1"),
    ("--rpm", "-5", "--rpm -5.0: Input should be greater than 0"),
    ("--tpm", "0", "--tpm 0.0: Input should be greater than 0"),
    ("--max-attempts", "0", "--max-attempts 0: Input should be greater than or equal to 1"),
    ("--timeout", "0", "--timeout 0.0: Input should be greater than 0"),
    ("--timeout", "nan", "--timeout nan: Input should be a finite number"),
    ("--rpm", "inf", "--rpm inf: Input should be a finite number"),
    ("--concurrency", "many", "Invalid value for '--concurrency': 'many' is not a valid integer"),
]


@pytest.mark.parametrize(("flag", "value", "message"), TEACHER_FLAGS)
@pytest.mark.parametrize("command", ["generate", "run"])
def test_teacher_flags_out_of_range_are_one_line(corpus, flag, value, message, command):
    (corpus / "ok.yaml").write_text((corpus / "undefined_variable.yaml").read_text().replace("plaace", "place"))
    where = ["--store", "s.db"] if command == "generate" else ["--out", "out"]
    done = promptbake(command, "ok.yaml", *where, "--base-url", DEAD_URL, flag, value, cwd=corpus, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in one_line_error(done.stderr)


def test_dry_run_of_a_100_million_cell_grid_answers_from_the_axis_sizes(tmp_path):
    """10^8 cells (four axes of 100, one excluded value pair, one weighted value): the dry run
    counts them from the axis sizes instead of expanding them, so it returns (here within the
    subprocess timeout; expanding would take hours)."""
    axes = "\n".join(f"    a{i}: [{', '.join(f'v{j}' for j in range(100))}]" for i in range(4))
    (tmp_path / "big.yaml").write_text(f"""name: big
teacher:
  model: gpt-4o-mini
grid:
  axes:
{axes}
  exclude:
    - {{a0: v0, a1: v0}}
  weights:
    a2: {{v0: 0, v1: 3}}
  count: 2
category: a0
steps:
  - name: answer
    max_tokens: 50
    messages:
      - role: user
        content: "{{{{ a0 }}}} {{{{ a1 }}}} {{{{ a2 }}}} {{{{ a3 }}}}"
example:
  messages:
    - role: user
      content: "{{{{ a0 }}}}"
    - role: assistant
      content: "{{{{ answer }}}}"
""", encoding="utf-8")
    done = promptbake("expand", "big.yaml", "--dry-run", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    # (100·100 − 1) · 99 weighted-in values of a2 · 100 values of a3 cells
    cells = (100 * 100 - 1) * 99 * 100
    # each counts 2, except a2 = v1 which counts 6: 98 values × 2 + 6
    wanted = (100 * 100 - 1) * 100 * (98 * 2 + 6)
    assert f"cells: {cells}" in done.stdout
    assert f"examples wanted: {wanted}" in done.stdout
    assert f"step answer: {wanted} requests" in done.stdout  # one text request per example wanted


def test_distill_refuses_an_empty_prompt_file(tmp_path):
    (tmp_path / "prompt.md").write_text("  \n\n", encoding="utf-8")
    (tmp_path / "inputs.txt").write_text("a question\n", encoding="utf-8")
    done = promptbake("distill", "--prompt", "prompt.md", "--inputs", "inputs.txt", "--out", "out",
                      "--base-url", DEAD_URL, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "prompt.md: the prompt file is empty" in one_line_error(done.stderr)
    assert not (tmp_path / "out").exists()


def test_csv_and_jsonl_inputs_with_a_bom_and_crlf_work(tmp_path):
    """Excel saves CSV as UTF-8 with a BOM and CRLF line ends; Notepad adds a BOM to JSONL."""
    (tmp_path / "prompt.md").write_text("Answer the ticket briefly.", encoding="utf-8")
    (tmp_path / "inputs.csv").write_bytes("\ufeffinput,tone\r\nmy disk is full,calm\r\n\"two,\r\nlines\",angry\r\n"
                                          .encode("utf-8"))
    (tmp_path / "inputs.jsonl").write_bytes('\ufeff{"input": "first"}\r\n{"input": "second"}\r\n'.encode())
    with FakeServer(responder=lambda body: "An answer.").running() as srv:
        cases = (("inputs.csv", ["my disk is full", "two,\nlines"]), ("inputs.jsonl", ["first", "second"]))
        for name, expected in cases:
            out = f"out_{name.split('.')[1]}"
            done = promptbake("distill", "--prompt", "prompt.md", "--inputs", name, "--out", out, "-q",
                              "--base-url", srv.base_url, "--model", "gpt-4o-mini", cwd=tmp_path, timeout=120)
            assert done.returncode == 0, done.stderr
            rows = [json.loads(line) for f in ("train.jsonl", "test.jsonl")
                    for line in (tmp_path / out / f).read_text(encoding="utf-8").splitlines()]
            users = sorted(m["content"] for r in rows for m in r["messages"] if m["role"] == "user")
            assert users == expected, users
