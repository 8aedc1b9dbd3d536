"""validate: every error key with its line numbers, per-target rules, epochs and billing maths, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptbake.cli.main import cli
from promptbake.errors import DataFileError
from promptbake.output.export import HF_FORMATS
from promptbake.output.formats import FORMATS
from promptbake.output.targets import TARGETS
from promptbake.output.training_cost import billed_tokens, default_epochs
from promptbake.output.validate import TokenStats, suggest_hyperparameters, validate_file
from promptbake.records import Example
from promptbake.teacher import tokens

GOOD = {
    "messages": [
        {"role": "system", "content": "Be rude."},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Ask nicely.", "weight": 1},
    ]
}


def write_lines(lines: list[object], name: str = "data.jsonl") -> Path:
    path = Path(name)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def good(n: int) -> list[object]:
    return [GOOD] * n


# Each bad line lands at line 11 after ten good ones, so the line numbers are checked, not just counts.
BAD_LINES = {
    "invalid_json": '{"messages": [',
    "data_type": [1, 2],
    "missing_messages_list": {"messages": []},
    "message_missing_key": {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
    "message_unrecognized_key": {
        "messages": [{"role": "user", "content": "a", "mood": "x"}, {"role": "assistant", "content": "b"}]
    },
    "unrecognized_role": {"messages": [{"role": "customer", "content": "a"}, {"role": "assistant", "content": "b"}]},
    "missing_content": {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]},
    "example_missing_assistant_message": {"messages": [{"role": "user", "content": "a"}]},
    "invalid_weight": {
        "messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]
    },
}


@pytest.mark.parametrize("key", sorted(BAD_LINES))
def test_each_cookbook_error_key_is_reported_with_its_line(key):
    path = write_lines([*good(10), BAD_LINES[key], *good(2)])
    report = validate_file(path)
    assert not report.ok
    assert report.errors[key] == [11], report.errors
    assert key in report.format() and "line 11" in report.format()


def test_clean_file_passes_and_reports_stats():
    report = validate_file(write_lines(good(60)))
    assert report.ok, report.errors
    assert report.errors == {} and "below_recommended_examples" not in report.warnings
    assert report.n_examples == 60 and report.file_format == "openai-chat"
    assert "No format errors." in report.format()


def test_lines_are_counted_per_file_line_including_u2028_inside_strings():
    odd = {"messages": [{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c"}]}
    path = Path("data.jsonl")
    path.write_text(
        json.dumps(odd, ensure_ascii=False) + "\n" + "not json\n" + json.dumps(GOOD) + "\n", encoding="utf-8"
    )
    assert validate_file(path, target="trl").errors["invalid_json"] == [2]


def test_tool_calling_example_is_valid_for_openai():
    row = {
        "messages": [
            {"role": "user", "content": "Refund me"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "assistant", "content": "Done."},
        ],
        "tools": [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": False,
    }
    report = validate_file(write_lines([row] * 10))
    assert report.ok, report.errors


def test_minimum_and_recommended_example_counts():
    few = validate_file(write_lines(good(9)))
    assert "too_few_examples" in few.errors and "at least 10" in few.format()
    some = validate_file(write_lines(good(10)))
    assert some.ok and "below_recommended_examples" in some.warnings
    assert validate_file(write_lines(good(1)), target="together").ok  # Together's minimum is 1


def test_too_many_examples_uses_the_target_table(monkeypatch):
    monkeypatch.setitem(TARGETS, "fireworks", dataclasses.replace(TARGETS["fireworks"], max_examples=3))
    assert "too_many_examples" in validate_file(write_lines(good(4)), target="fireworks").errors


def test_token_limit_is_a_warning_with_line_and_billing_caps_at_the_limit():
    long_text = "word " * 5000
    long = {"messages": [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"}]}
    report = validate_file(write_lines([*good(10), long]), model="gpt-3.5-turbo-0613")
    assert report.token_limit == 4096
    assert report.ok and report.warnings["example_over_token_limit"] == [11]
    assert report.tokens.max > 4096
    short = tokens.count_messages(GOOD["messages"], "gpt-3.5-turbo-0613")
    assert report.tokens_per_epoch == 10 * short + 4096


def test_epochs_billing_and_cost_on_known_numbers():
    report = validate_file(write_lines(good(20)), model="gpt-4o-mini-2024-07-18")
    per_example = tokens.count_messages(GOOD["messages"], "gpt-4o-mini-2024-07-18")
    assert report.epochs == 5  # 20 x 3 < 100, so 100 // 20
    assert report.tokens_per_epoch == 20 * per_example
    assert report.billed_tokens == 100 * per_example
    assert report.cost_usd == pytest.approx(100 * per_example * 3.00 / 1_000_000)
    assert (report.batch_size, report.learning_rate_multiplier) == (1, 0.05)
    assert "Estimated training cost" in report.format() and "rule:" in report.format()


@pytest.mark.parametrize(
    ("n", "epochs"), [(1, 25), (3, 25), (5, 20), (33, 3), (34, 3), (40, 3), (8_333, 3), (8_334, 2), (30_000, 1)]
)
def test_default_epochs_cookbook_rule(n, epochs):
    assert default_epochs(n) == epochs
    assert 1 <= default_epochs(n) <= 25


def test_billed_tokens_caps_each_example_at_the_limit():
    assert billed_tokens([10, 100, 5000], 4096, 3) == (10 + 100 + 4096) * 3
    assert billed_tokens([10, 100, 5000], None, 2) == 5110 * 2


def test_token_distribution_percentiles():
    stats = TokenStats.of(list(range(1, 101)))
    assert (stats.min, stats.max, stats.mean, stats.median) == (1, 100, 50.5, 50.5)
    assert stats.p5 == pytest.approx(5.95) and stats.p95 == pytest.approx(95.05)
    assert TokenStats.of([7]).p95 == 7
    assert TokenStats.of([]) is None


def test_hyperparameter_suggestions():
    assert suggest_hyperparameters(100) == (1, 0.05)
    assert suggest_hyperparameters(10_000) == (20, 0.1)
    assert suggest_hyperparameters(1_000_000) == (256, 0.2)


def test_together_rules_alternation_and_extra_columns():
    twice = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                          {"role": "assistant", "content": "c"}]}
    extra = {**GOOD, "id": "x"}
    report = validate_file(write_lines([GOOD, twice, extra]), target="together")
    assert report.errors["roles_not_alternating"] == [2]
    assert report.errors["example_unrecognized_key"] == [3]
    # OpenAI is only warned about the same extra key
    openai = validate_file(write_lines([*good(10), extra]))
    assert openai.ok and openai.warnings["example_unrecognized_key"] == [11]


def test_fireworks_system_message_only_first():
    late = {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                         {"role": "assistant", "content": "c"}]}
    report = validate_file(write_lines([*good(3), late]), target="fireworks")
    assert report.errors == {"system_not_first": [4]}


def test_weight_is_not_a_trl_message_key():
    assert validate_file(write_lines(good(2)), target="trl").errors["message_unrecognized_key"] == [1, 2]


def _example(i: int) -> Example:
    return Example(
        id=f"e{i}",
        category="c",
        messages=[{"role": "system", "content": "Be rude."}, {"role": "user", "content": f"q{i}"},
                  {"role": "assistant", "content": "a"}],
        rejected={"role": "assistant", "content": "polite"},
    )


@pytest.mark.parametrize(
    ("fmt", "target"),
    [
        ("openai-chat", "openai"),
        ("messages", "together"),
        ("messages", "trl"),
        ("openai-completion", "together"),
        ("sharegpt", "axolotl"),
        ("alpaca", "axolotl"),
        ("preference-openai", "openai"),
        ("preference-openai", "fireworks"),
        ("preference-trl", "trl"),
    ],
)
def test_files_we_write_pass_their_targets(fmt, target):
    rows = [FORMATS[fmt].convert(_example(i)) for i in range(12)]
    report = validate_file(write_lines(rows), target=target)
    assert report.ok, (report.errors, report.details)
    assert report.tokens is not None and report.tokens.min > 0


@pytest.mark.parametrize(
    ("fmt", "row", "key"),
    [
        ("alpaca", {"instruction": "", "input": "", "output": "x"}, "field_type"),
        ("alpaca", {"instruction": "x", "output": "y"}, "missing_field"),
        ("preference-openai", {"input": {"messages": [{"role": "user", "content": "q"}]},
                               "preferred_output": [{"role": "user", "content": "a"}],
                               "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "invalid_output"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
         "unrecognized_role"),
    ],
)
def test_non_chat_format_errors(fmt, row, key):
    target = {"alpaca": "axolotl", "sharegpt": "axolotl", "preference-openai": "openai"}[fmt]
    good_rows = [FORMATS[fmt].convert(_example(i)) for i in range(12)]
    report = validate_file(write_lines([*good_rows, row]), target=target)
    assert report.errors[key] == [13], report.errors


def test_completion_without_leading_space_is_a_warning():
    rows = [{"prompt": "q\n\n###\n\n", "completion": "no space"}]
    report = validate_file(write_lines(rows), target="together")
    assert report.ok and report.warnings["completion_no_leading_space"] == [1]


def test_format_not_accepted_by_target():
    rows = [FORMATS["sharegpt"].convert(_example(i)) for i in range(12)]
    report = validate_file(write_lines(rows), target="openai")
    assert "format_not_accepted" in report.errors
    assert "sharegpt files are not read by openai" in report.format()


def test_missing_and_non_utf8_files_are_input_errors():
    with pytest.raises(DataFileError, match=r"nope\.jsonl: no such file"):
        validate_file("nope.jsonl")
    Path("latin.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"latin.jsonl:2: not UTF-8"):
        validate_file("latin.jsonl")


def test_unknown_model_is_noted_not_fatal():
    report = validate_file(write_lines(good(10)), model="my-local-model")
    assert report.ok and report.token_limit is None and report.cost_usd is None
    assert any("not in the openai table" in n for n in report.notes)


def test_family_names_resolve_to_their_snapshot():
    openai = TARGETS["openai"]
    assert openai.limits("gpt-4o-mini").context == 65_536
    assert openai.limits("gpt-4.1-nano").context == 32_768
    assert openai.limits("gpt-3.5-turbo").context == 16_385
    assert openai.limits("ft:gpt-4o-mini-2024-07-18:org::abc").train_usd_per_1m == 3.00
    assert openai.limits("gpt-4") is None


# --- CLI -------------------------------------------------------------------------------------


def test_cli_clean_file_exits_0():
    result = CliRunner().invoke(cli, ["validate", str(write_lines(good(12)))])
    assert result.exit_code == 0, result.output
    assert "No format errors." in result.stdout


def test_cli_format_errors_exit_2_with_lines():
    path = write_lines([*good(10), BAD_LINES["unrecognized_role"]])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert "unrecognized_role: 1 (line 11)" in result.stdout
    assert result.stderr.strip().startswith("Error: data.jsonl: 1 format errors (unrecognized_role)")


def test_cli_json_output():
    result = CliRunner().invoke(cli, ["validate", "--json", "--target", "together", str(write_lines(good(3)))])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["target"] == "together" and data["n_examples"] == 3


def test_cli_missing_file_exits_2_with_one_line():
    result = CliRunner().invoke(cli, ["validate", "missing.jsonl"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: missing.jsonl: no such file"]
    Path("latin.jsonl").write_bytes(b'{"messages": "caf\xe9"}\n')
    result = CliRunner().invoke(cli, ["validate", "latin.jsonl"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: latin.jsonl:1: not UTF-8 (byte 0xe9)"]


def test_cli_choices_match_the_registries():
    # The CLI lists targets and formats literally (to stay import-light); they must not drift.
    params = {p.name: p for p in cli.commands["validate"].params}
    assert set(params["target"].type.choices) == set(TARGETS)
    export_params = {p.name: p for p in cli.commands["export"].params}
    assert set(export_params["formats"].type.choices) == {*FORMATS, *HF_FORMATS}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_malformed_values_are_reported_not_crashed_on(target):
    odd = [
        {"messages": [{"role": ["user"], "content": 5}, {"role": "assistant", "content": {"x": 1}, "weight": "1"}]},
        {"messages": "hello"},
        {"messages": [None, {"role": "assistant", "content": "a", "tool_calls": "x"}]},
        {"conversations": [{"from": {}, "value": []}]},
        {"input": [], "preferred_output": {}, "non_preferred_output": None},
        {"prompt": 1, "chosen": "a", "rejected": [1]},
        {"instruction": None, "output": 3},
        "null",
        '"text"',
    ]
    report = validate_file(write_lines(odd), target=target)
    assert report.errors["unrecognized_role"] == [1]
    assert report.errors["data_type"] == [3, 8, 9]
    assert report.errors["missing_messages_list"] == [2, 4, 5, 6, 7]
    assert "line" in report.format()


def test_malformed_sharegpt_turns_are_reported():
    rows = [{"conversations": [{"from": {}, "value": []}, {"from": "gpt", "value": "a"}]}]
    report = validate_file(write_lines(rows), target="axolotl")
    assert report.errors["unrecognized_role"] == [1] and report.errors["missing_content"] == [1]
