"""Grid expansion, stable ids, the expand command and its dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import MINIMAL_SPEC, write_spec

from promptbake.cli.main import cli
from promptbake.errors import DataFileError, TemplateError
from promptbake.plan.expand import Expander
from promptbake.specification.models import TeacherConfig, load_spec

ROOT = Path(__file__).parent.parent


def test_rude_agent_expands_to_100_cells():
    spec = load_spec(ROOT / "generators" / "rude_agent.yaml")
    cells = list(Expander(spec).cells())
    assert len(cells) == 100
    assert sum(c.count for c in cells) == 1000
    assert len({c.key for c in cells}) == 100
    assert {c.category for c in cells} == set(spec.grid.axes["situation"])


def test_exclude_and_weights(tmp_path):
    text = MINIMAL_SPEC.replace(
        "  count: 2", "  count: 2\n  exclude: [{place: gym, mood: calm}]\n  weights: {mood: {angry: 2.5}}"
    )
    cells = list(Expander(load_spec(write_spec(tmp_path, text))).cells())
    assert [(c.values["place"], c.values["mood"], c.count) for c in cells] == [
        ("shop", "calm", 2),
        ("shop", "angry", 5),
        ("gym", "angry", 5),
    ]


def test_axis_from_file_and_category_expression(tmp_path):
    (tmp_path / "places.txt").write_text("shop\n\nbank\n", encoding="utf-8")
    text = MINIMAL_SPEC.replace("place: [shop, gym]", "place: places.txt").replace(
        "category: mood", "category: \"place ~ '/' ~ mood\""
    )
    cells = list(Expander(load_spec(write_spec(tmp_path, text))).cells())
    assert [c.category for c in cells] == ["shop/calm", "shop/angry", "bank/calm", "bank/angry"]


def test_missing_axis_file(tmp_path):
    text = MINIMAL_SPEC.replace("place: [shop, gym]", "place: nowhere.txt")
    with pytest.raises(DataFileError, match=r"nowhere\.txt: cannot read values of axis 'place'"):
        Expander(load_spec(write_spec(tmp_path, text)))


def test_non_utf8_axis_file_names_line(tmp_path):
    (tmp_path / "places.txt").write_bytes(b"shop\nbank\ncaf\xe9\n")
    text = MINIMAL_SPEC.replace("place: [shop, gym]", "place: places.txt")
    with pytest.raises(DataFileError, match=r"places.txt:3: values of axis 'place' is not UTF-8"):
        Expander(load_spec(write_spec(tmp_path, text)))


def test_empty_axis(tmp_path):
    (tmp_path / "places.txt").write_text("\n\n", encoding="utf-8")
    text = MINIMAL_SPEC.replace("place: [shop, gym]", "place: places.txt")
    with pytest.raises(DataFileError, match="is empty"):
        Expander(load_spec(write_spec(tmp_path, text)))


def test_table_rows_cross_axes(tmp_path):
    (tmp_path / "inputs.jsonl").write_text('{"input": "a"}\n{"input": "b"}\n', encoding="utf-8")
    text = MINIMAL_SPEC.replace(
        "  axes:\n    place: [shop, gym]\n    mood: [calm, angry]",
        "  table: inputs.jsonl\n  axes:\n    mood: [calm, angry]",
    )
    cells = list(Expander(load_spec(write_spec(tmp_path, text))).cells())
    assert [(c.values["input"], c.values["mood"]) for c in cells] == [
        ("a", "calm"),
        ("a", "angry"),
        ("b", "calm"),
        ("b", "angry"),
    ]


def test_broken_table_line(tmp_path):
    (tmp_path / "inputs.jsonl").write_text('{"input": "a"}\n{"input": \n', encoding="utf-8")
    text = MINIMAL_SPEC.replace(
        "  axes:\n    place: [shop, gym]\n    mood: [calm, angry]",
        "  table: inputs.jsonl\n  axes:\n    mood: [calm, angry]",
    )
    with pytest.raises(DataFileError, match=r"inputs.jsonl:2: not valid JSON"):
        Expander(load_spec(write_spec(tmp_path, text)))


def test_expand_ids_are_stable(tmp_path):
    path = write_spec(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["expand", str(path), "-o", "a.jsonl"]).exit_code == 0
    result = runner.invoke(cli, ["expand", str(path), "-o", "b.jsonl"])
    assert result.exit_code == 0, result.output
    a = (tmp_path / "a.jsonl").read_text()
    assert a == (tmp_path / "b.jsonl").read_text()
    rows = [json.loads(line) for line in a.splitlines()]
    assert len(rows) == 4  # one list request per cell
    assert len({r["id"] for r in rows}) == 4
    assert rows[0]["cell"] == {"place": "shop", "mood": "calm"}
    assert rows[0]["category"] == "calm"
    assert rows[0]["body"]["messages"][0]["content"] == "Give 2 things a calm customer says at the shop."


def test_changing_a_template_changes_only_its_prompts(tmp_path):
    a = load_spec(write_spec(tmp_path, MINIMAL_SPEC, "a.yaml"))
    b = load_spec(write_spec(tmp_path, MINIMAL_SPEC.replace("Be rude.", "Be ruder."), "b.yaml"))
    from promptbake.plan.planner import Planner

    def first_keys(spec):
        expander = Expander(spec)
        planner = Planner(spec, expander.templates, TeacherConfig(model="m"))
        return [r.cache_key for r in planner.first_step(expander.cells(), 0)]

    assert first_keys(a) == first_keys(b)


def test_missing_variable_names_template_file_and_line(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ask.j2").write_text("Line one\nSay {{ nope }}\n", encoding="utf-8")
    text = MINIMAL_SPEC.replace(
        '        content: "Give {{ count }} things a {{ mood }} customer says at the {{ place }}."',
        "        template: ask.j2",
    )
    result = CliRunner().invoke(cli, ["expand", str(write_spec(tmp_path, text)), "-o", "x.jsonl"])
    assert result.exit_code == 2
    assert "ask.j2:2: 'nope' is undefined" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_missing_template_file(tmp_path):
    text = MINIMAL_SPEC.replace(
        '        content: "Give {{ count }} things a {{ mood }} customer says at the {{ place }}."',
        "        template: absent.j2",
    )
    with pytest.raises(TemplateError, match=r"absent\.j2: template file not found"):
        from promptbake.plan.planner import Planner

        spec = load_spec(write_spec(tmp_path, text))
        Planner(spec, Expander(spec).templates, TeacherConfig(model="m"))


def test_inline_template_error_names_spec_field(tmp_path):
    text = MINIMAL_SPEC.replace("Be rude.", "Be rude {{ missing }}.")
    spec = load_spec(write_spec(tmp_path, text))
    from promptbake.plan.planner import Planner

    expander = Expander(spec)
    planner = Planner(spec, expander.templates, TeacherConfig(model="m"))
    with pytest.raises(TemplateError, match=r"spec.yaml:steps\[1\].messages\[0\].content:1: 'missing' is undefined"):
        planner.request(
            1,
            {"place": "x", "mood": "y", "ask": "hi"},
            cell_key="k",
            category="c",
            round_=0,
            ord_="0",
            parent_id=None,
            item_index=0,
            replicate=[0],
        )


def test_dry_run_prints_counts_and_cost():
    result = CliRunner().invoke(cli, ["expand", str(ROOT / "generators" / "rude_agent.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "cells: 100" in result.output
    assert "examples wanted: 1000" in result.output
    assert "step utterance: 100 requests" in result.output
    assert "step reply: 1000 requests" in result.output
    assert "estimated cost ≤ $" in result.output


def test_request_body_holds_rendered_messages_and_only_sampling_params(tmp_path):
    text = MINIMAL_SPEC.replace(
        "    parse: list", "    parse: list\n    temperature: 0.5\n    max_tokens: 99\n    extra_body: {top_k: 5}"
    )
    spec = load_spec(write_spec(tmp_path, text))
    from promptbake.plan.planner import Planner

    expander = Expander(spec)
    request = next(Planner(spec, expander.templates, TeacherConfig(model="m")).first_step(expander.cells(), 0))
    assert request.body == {
        "model": "m",
        "messages": [{"role": "user", "content": "Give 2 things a calm customer says at the shop."}],
        "temperature": 0.5,
        "max_tokens": 99,
        "top_k": 5,
    }


def test_list_prompt_never_asks_for_fewer_than_min_items(tmp_path):
    text = MINIMAL_SPEC.replace("    parse: list", "    parse: list\n    min_items: 5")
    spec = load_spec(write_spec(tmp_path, text))
    from promptbake.plan.planner import Planner

    expander = Expander(spec)
    request = next(Planner(spec, expander.templates, TeacherConfig(model="m")).first_step(expander.cells(), 0))
    assert request.body["messages"][0]["content"] == "Give 5 things a calm customer says at the shop."
