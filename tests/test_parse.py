"""Parsing teacher answers: list tolerance for small models, JSON with schemas, rejections."""

from __future__ import annotations

import pytest

from promptbake.errors import ResponseRejected
from promptbake.teacher.parse import parse_choices, parse_list, parse_output


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ('["a", "b", "c"]', ["a", "b", "c"]),
        ('```json\n["a", "b"]\n```', ["a", "b"]),
        ('{"utterances": ["a", "b"]}', ["a", "b"]),
        ("['a', 'b']", ["a", "b"]),
        ('1. "Where is it?"\n2) Why?\n3: Now!', ["Where is it?", "Why?", "Now!"]),
        ("Here you go:\n- one\n* two\n• three\nHope it helps", ["one", "two", "three"]),
        ("first line\nsecond line", ["first line", "second line"]),
        ('Sure! ["x", "y"] done', ["x", "y"]),
    ],
)
def test_list_formats(text, items):
    assert parse_list(text) == items


@pytest.mark.parametrize(
    "text",
    [
        '["a",\n "b",\n "c"',  # cut off
        '```json\n[\n  "a",\n  "b",\n',  # unclosed fence around broken JSON
        '```python\nitems = [\n    "a",\n]\n```',  # code, not a list
        '{\n  "utterances": [\n    "a"\n',
    ],
)
def test_list_never_keeps_fragments_of_broken_json_or_code(text):
    try:
        items = parse_list(text)
    except ResponseRejected:
        return
    fragments = {"{", "[", "]", "}", "```", "```json", "```python"}
    assert not fragments & set(items) and not any(i.startswith("```") or i.endswith(",") for i in items), items


def test_lines_around_a_fence_are_items_without_the_fence():
    assert parse_list("```\nfirst line\nsecond line\n") == ["first line", "second line"]
    assert parse_list("```text\n- one\n- two\n```") == ["one", "two"]


def test_list_rejects_single_sentence():
    with pytest.raises(ResponseRejected, match="no list"):
        parse_list("I cannot help with that.")


def test_min_items():
    with pytest.raises(ResponseRejected, match="needs at least 3"):
        parse_output('["a", "b"]', "list", min_items=3)


def test_json_schema_enforced():
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
    assert parse_output('{"label": "a"}', "json", schema) == [{"label": "a"}]
    with pytest.raises(ResponseRejected, match="schema"):
        parse_output('{"label": "c"}', "json", schema)
    with pytest.raises(ResponseRejected, match="not JSON"):
        parse_output("label: a", "json", schema)


def test_cut_off_answer_rejected_and_choices_concatenate():
    with pytest.raises(ResponseRejected, match="finish_reason: length"):
        parse_choices(["partial"], ["length"], "text")
    assert parse_choices(["a", "b"], ["stop", "stop"], "text") == ["a", "b"]
    with pytest.raises(ResponseRejected, match="empty"):
        parse_choices(["  "], ["stop"], "text")


def test_a_cut_off_choice_of_several_is_left_out_and_all_cut_off_is_rejected():
    # n choices are alternatives: one that ran into max_tokens does not make the others be paid again
    assert parse_choices(["a", "long and cut", "b"], ["stop", "length", "stop"], "text") == ["a", "b"]
    with pytest.raises(ResponseRejected, match="finish_reason: length"):
        parse_choices(["cut", "cut too"], ["length", "length"], "text")
