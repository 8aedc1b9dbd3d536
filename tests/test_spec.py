"""Spec loading: the models validate, and every bad input names its file and line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import MINIMAL_SPEC, write_spec

from promptbake.cli.main import cli
from promptbake.errors import SpecError
from promptbake.specification.models import load_spec


def test_minimal_spec_loads(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.name == "mini"
    assert [s.name for s in spec.steps] == ["ask", "answer"]
    assert spec.steps[0].parse == "list"
    assert spec.split.test == 0.25


def test_rude_agent_spec_loads():
    from pathlib import Path

    spec = load_spec(Path(__file__).parent.parent / "generators" / "rude_agent.yaml")
    assert spec.grid.count == 10
    assert len(spec.grid.axes["location"]) == 10
    assert len(spec.grid.axes["situation"]) == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL_SPEC.replace("category: mood", "category: mood\nbogus: 1"), ":11: bogus: unknown key"),
        (MINIMAL_SPEC.replace("  count: 2", "  count: two"), ":9: grid.count: Input should be a valid integer"),
        (MINIMAL_SPEC.replace("    parse: list", "    parse: xml"), ":13: steps[0].parse: Input should be"),
        (MINIMAL_SPEC.replace("name: mini", "name: [mini"), ": invalid YAML"),
        (
            MINIMAL_SPEC.replace("        content: Be rude.", "        content: Be rude.\n        template: x.j2"),
            ":19: steps[1].messages[0]: give exactly one of",
        ),
        (MINIMAL_SPEC.replace("  - name: answer", "  - name: ask"), "step names must be unique"),
        (
            MINIMAL_SPEC.replace("  count: 2", "  count: 2\n  exclude: [{colour: red}]"),
            "exclude rule names unknown axis 'colour'",
        ),
    ],
)
def test_bad_specs_name_file_and_line(tmp_path, text, expected):
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_spec_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(write_spec(tmp_path, "- a\n- b\n"))


def test_non_utf8_spec(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(path)


def test_cli_reports_one_line_and_exit_2(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC.replace("category: mood", "category: mood\nbogus: 1"))
    result = CliRunner().invoke(cli, ["expand", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"Error: {path}:11: bogus: unknown key"]
    assert "Traceback" not in result.output


def test_debug_shows_traceback(tmp_path):
    path = write_spec(tmp_path, MINIMAL_SPEC.replace("category: mood", "category: mood\nbogus: 1"))
    result = CliRunner().invoke(cli, ["--debug", "expand", str(path), "--dry-run"])
    assert isinstance(result.exception, SpecError)


def test_teacher_shorthand(tmp_path):
    spec = load_spec(write_spec(tmp_path, MINIMAL_SPEC.replace("teacher:\n  model: gpt-4o-mini", "teacher: local")))
    assert spec.teacher.kind == "local"


def test_spec_hash_changes_with_content(tmp_path):
    a = load_spec(write_spec(tmp_path, MINIMAL_SPEC, "a.yaml"))
    b = load_spec(write_spec(tmp_path, MINIMAL_SPEC.replace("Be rude.", "Be very rude."), "b.yaml"))
    assert a.spec_hash() != b.spec_hash()
    assert a.spec_hash() == load_spec(tmp_path / "a.yaml").spec_hash()


def test_spec_hash_covers_the_template_axis_and_table_files(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ask.j2").write_text("Give {{ count }} things a {{ mood }} customer says.")
    (tmp_path / "moods.txt").write_text("calm\nangry\n")
    (tmp_path / "places.csv").write_text("place\nshop\n")
    axes = "    place: [shop, gym]\n    mood: [calm, angry]\n"
    text = (MINIMAL_SPEC.replace(axes, "    mood: moods.txt\n  table: places.csv\n")
            .replace('        content: "Give {{ count }} things a {{ mood }} customer says at the {{ place }}."',
                     "        template: ask.j2"))
    path = write_spec(tmp_path, text)
    hashes = [load_spec(path).spec_hash()]
    for name, content in (("templates/ask.j2", "Give {{ count }} things an upset {{ mood }} customer says."),
                          ("moods.txt", "calm\nangry\nbored\n"), ("places.csv", "place\nshop\ngym\n")):
        (tmp_path / name).write_text(content)
        hashes.append(load_spec(path).spec_hash())
    assert len(set(hashes)) == 4, hashes
    assert load_spec(path).spec_hash() == hashes[-1]  # and it is still a pure function of the files


def test_an_unknown_key_is_named_at_its_own_line_with_the_key_meant(tmp_path):
    """``temprature`` and ``dedup`` get "did you mean"; a misspelt section is reported at its own
    line, not at the first line of its value."""
    text = ("name: x\ngrid:\n  axes:\n    a: [1, 2]\nsteps:\n  - name: s\n    temprature: 0.5\n    messages:\n"
            "      - {role: user, content: hi}\nexample:\n  messages:\n    - {role: user, content: hi}\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"s\.yaml:7: steps\[0\]\.temprature: unknown key \(did you mean temperature"):
        load_spec(path)
    path.write_text(text.replace("temprature", "temperature") + "dedup:\n  fields: [user]\n")
    with pytest.raises(SpecError, match=r"s\.yaml:13: dedup: unknown key \(did you mean dedupe\?\)"):
        load_spec(path)
    path.write_text(text.replace("temprature", "temperature") + "colour: blue\n")
    with pytest.raises(SpecError, match=r"s\.yaml:13: colour: unknown key$"):
        load_spec(path)
