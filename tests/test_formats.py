"""Fine-tuning line formats: shapes each trainer documents, and refusals that name the example."""

from __future__ import annotations

import json

import pytest
from helpers import TOOLS, tool_call_example

from promptbake.errors import InputError
from promptbake.output.export import formats_table
from promptbake.output.formats import FORMATS, FormatRefused, get_format, write_split
from promptbake.output.targets import TARGETS
from promptbake.records import Example
from promptbake.specification.models import OutputConfig


def single(i: int = 1, *, system: bool = True, rejected: bool = False) -> Example:
    messages = [{"role": "user", "content": f"Where is my order {i}?"}, {"role": "assistant", "content": "Ask nicely."}]
    if system:
        messages.insert(0, {"role": "system", "content": "Be rude."})
    return Example(
        id=f"ex{i}",
        category="late",
        cell={"place": "shop"},
        messages=messages,
        rejected={"role": "assistant", "content": "Sorry about that!"} if rejected else None,
        provenance={"answer": f"req{i}"},
    )


def multi_turn() -> Example:
    return Example(
        id="multi",
        category="late",
        messages=[
            {"role": "developer", "content": "Be rude."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "What.", "weight": 0},
            {"role": "user", "content": "My order?"},
            {"role": "assistant", "content": "Wait.", "weight": 1},
        ],
        rejected={"content": "Of course!"},
    )


def tool_example() -> Example:
    return tool_call_example()


def test_openai_chat_keeps_weight_and_tools_and_maps_developer():
    row = FORMATS["openai-chat"].convert(multi_turn())
    assert row == {
        "messages": [
            {"role": "system", "content": "Be rude."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "What.", "weight": 0},
            {"role": "user", "content": "My order?"},
            {"role": "assistant", "content": "Wait.", "weight": 1},
        ]
    }
    tool_row = FORMATS["openai-chat"].convert(tool_example())
    assert tool_row["tools"] == TOOLS
    assert tool_row["messages"][1]["tool_calls"][0]["function"]["name"] == "refund"
    assert tool_row["messages"][2] == {"role": "tool", "content": "done", "tool_call_id": "c1"}


def test_messages_format_drops_weight_but_keeps_tool_turns():
    row = FORMATS["messages"].convert(multi_turn())
    assert all("weight" not in m for m in row["messages"])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    tool_row = FORMATS["messages"].convert(tool_example())
    assert tool_row["tools"] == TOOLS
    assert [m["role"] for m in tool_row["messages"]] == ["user", "assistant", "tool", "assistant"]


def test_completion_single_turn_uses_separator_space_and_stop():
    row = FORMATS["openai-completion"].convert(single(system=False))
    assert row == {"prompt": "Where is my order 1?\n\n###\n\n", "completion": " Ask nicely.\n\n===\n\n"}


def test_completion_multi_turn_renders_roles_and_honours_config():
    config = OutputConfig(completion_separator="\n->", completion_stop=" END")
    row = get_format("openai-completion").convert(multi_turn(), config)
    assert row["prompt"] == "System: Be rude.\n\nUser: Hi\n\nAssistant: What.\n\nUser: My order?\n->"
    assert row["completion"] == " Wait. END"


def test_completion_refuses_tools_and_stop_sequence_in_answer():
    with pytest.raises(FormatRefused, match=r"'tool'.*tool calls"):
        FORMATS["openai-completion"].convert(tool_example())
    ex = single()
    ex.messages[-1]["content"] = "Stop.\n\n===\n\nMore"
    with pytest.raises(FormatRefused, match="stop sequence"):
        FORMATS["openai-completion"].convert(ex)


def test_sharegpt_roles():
    row = FORMATS["sharegpt"].convert(multi_turn())
    assert row["conversations"][:3] == [
        {"from": "system", "value": "Be rude."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "What."},
    ]
    with pytest.raises(FormatRefused, match="'tool'"):
        FORMATS["sharegpt"].convert(tool_example())


def test_alpaca_single_turn_with_and_without_system():
    assert FORMATS["alpaca"].convert(single(system=False)) == {
        "instruction": "Where is my order 1?",
        "input": "",
        "output": "Ask nicely.",
    }
    assert FORMATS["alpaca"].convert(single()) == {
        "instruction": "Be rude.",
        "input": "Where is my order 1?",
        "output": "Ask nicely.",
    }


def test_alpaca_refuses_multi_turn_naming_the_example():
    with pytest.raises(FormatRefused) as info:
        FORMATS["alpaca"].convert(multi_turn())
    assert "'multi'" in str(info.value) and "single-turn" in str(info.value)
    assert info.value.example_id == "multi"
    assert info.value.exit_code == 2 and isinstance(info.value, InputError)


def test_preference_openai_shape():
    row = FORMATS["preference-openai"].convert(multi_turn())
    assert [m["role"] for m in row["input"]["messages"]] == ["system", "user", "assistant", "user"]
    assert row["preferred_output"] == [{"role": "assistant", "content": "Wait."}]
    assert row["non_preferred_output"] == [{"role": "assistant", "content": "Of course!"}]
    assert "weight" not in json.dumps(row)


def test_preference_trl_matches_trl_conversational_preference_schema():
    row = FORMATS["preference-trl"].convert(single(rejected=True))
    # TRL dataset_formats: conversational preference = prompt / chosen / rejected lists of
    # {"role", "content"} dicts; chosen and rejected hold the assistant turn(s).
    assert set(row) == {"prompt", "chosen", "rejected"}
    for key in ("prompt", "chosen", "rejected"):
        assert all(set(m) == {"role", "content"} for m in row[key])
    assert row["prompt"][-1]["role"] == "user"
    assert row["chosen"] == [{"role": "assistant", "content": "Ask nicely."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Sorry about that!"}]


@pytest.mark.parametrize("name", ["preference-openai", "preference-trl"])
def test_preference_formats_refuse_examples_without_rejected(name):
    with pytest.raises(FormatRefused, match="no rejected answer"):
        FORMATS[name].convert(single())


def test_unknown_format_is_input_error():
    with pytest.raises(InputError, match=r"unknown format 'jsonx'.*openai-chat"):
        get_format("jsonx")


def test_every_target_format_is_registered():
    for target in TARGETS.values():
        assert set(target.formats) <= set(FORMATS), target.name


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_round_trips_through_write_split(tmp_path, name):
    examples = [single(i, rejected=True) for i in range(3)]
    path = tmp_path / "out" / f"{name}.jsonl"
    report = write_split(examples, name, path)
    assert (report.written, report.refused) == (3, 0)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [FORMATS[name].convert(e) for e in examples]


def test_write_split_collects_refusals_instead_of_stopping(tmp_path):
    examples = [single(1), multi_turn(), single(2), tool_example()]
    report = write_split(examples, "alpaca", tmp_path / "train.jsonl")
    assert (report.written, report.refused) == (2, 2)
    assert report.refused_ids == ["multi", "tool"]
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 2
    assert "2 refused" in report.summary() and "multi" in report.summary()


def test_formats_table_lists_every_format_with_its_targets():
    table = formats_table()
    for name in [*FORMATS, "hf", "hf-preference"]:
        assert f"| `{name}` |" in table
    assert "| `alpaca` | sft | axolotl |" in table
    assert "| `preference-openai` | preference | openai, azure-openai, together, fireworks |" in table
