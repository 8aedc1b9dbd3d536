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
