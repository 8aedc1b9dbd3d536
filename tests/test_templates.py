"""The Jinja sandbox and its error messages."""

from __future__ import annotations

import pytest

from promptbake.errors import TemplateError
from promptbake.specification.templates import Templates


def test_renders_and_reports_missing_variable_with_line():
    t = Templates()
    t.add_inline("inline.j2", "one\n{{ a }}\n{{ b }}")
    assert t.render("inline.j2", {"a": 1, "b": 2}) == "one\n1\n2"
    with pytest.raises(TemplateError, match=r"^inline.j2:3: 'b' is undefined$"):
        t.render("inline.j2", {"a": 1})


def test_sandbox_refuses_python_internals():
    t = Templates()
    t.add_inline("evil", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        t.render("evil", {})


def test_syntax_error_names_line():
    t = Templates()
    t.add_inline("broken", "ok\n{% if %}")
    with pytest.raises(TemplateError, match=r"^broken:2: template syntax error"):
        t.get("broken")


def test_category_expression_and_template_forms():
    t = Templates()
    assert t.expression("c1", "a ~ '-' ~ b", {"a": "x", "b": "y"}) == "x-y"
    assert t.expression("c2", "{{ a | upper }}", {"a": "x"}) == "X"


def test_json_values_render_as_json_not_python_repr():
    """A ``parse: json`` output in a training message must stay valid JSON (it used to print
    ``[{'question': 1, 'answer': True}]``); ``tojson`` gives the same text, fields stay reachable."""
    t = Templates()
    answer = [{"question": 1, "answer": "3", "sure": True, "note": None, "text": "café"}]
    t.add_inline("plain", "{{ answer }}")
    t.add_inline("filtered", "{{ answer | tojson }}")
    t.add_inline("field", "{{ answer[0].answer }} {{ answer | length }}")
    expected = '[{"question": 1, "answer": "3", "sure": true, "note": null, "text": "café"}]'
    assert t.render("plain", {"answer": answer}) == expected
    assert t.render("filtered", {"answer": answer}) == expected
    assert t.render("field", {"answer": answer}) == "3 1"
    assert t.render("plain", {"answer": "text stays text"}) == "text stays text"
