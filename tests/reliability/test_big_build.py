"""A build of a grid too big to expand (10^7 cells took minutes and gigabytes) looks up only the
cells its examples belong to: the same files as a build that walks the grid, the same shortfall,
and a cell the spec no longer has keeps no examples either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import pure_answer, text_spec

from promptbake.curate import builder
from promptbake.curate.builder import build
from promptbake.plan import expand
from promptbake.specification.models import load_spec
from promptbake.store.db import Store
from promptbake.teacher.config import Teacher
from promptbake.teacher.generate import GenerateOptions
from promptbake.workflows.pipeline import generate

FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


@pytest.fixture(scope="module")
def answered(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("answered")
    (folder / "spec.yaml").write_text(text_spec(6, 5, 2), encoding="utf-8")  # 30 cells × 2
    with FakeServer(responder=pure_answer).running() as srv:
        generate(load_spec(folder / "spec.yaml"), folder / "s.db", Teacher(base_url=srv.base_url, concurrency=8),
                 GenerateOptions(progress=False))
    return folder


def both_ways(folder: Path, text: str, monkeypatch) -> tuple[list[str], list[str]]:
    """Build ``text``'s spec from the store walking the grid, then looking its cells up; the
    warnings of each, after checking that the files are the same."""
    path = folder / "variant.yaml"
    path.write_text(text, encoding="utf-8")
    spec = load_spec(path)
    warnings = []
    for name, keep in (("whole", expand.KEEP_CELLS), ("looked-up", 1)):
        monkeypatch.setattr(expand, "KEEP_CELLS", keep)
        monkeypatch.setattr(builder, "KEEP_CELLS", keep)
        with Store(folder / "s.db") as store:
            warnings.append(build(spec, store, folder / name, validate=False).warnings)
    for file in FILES:
        assert (folder / "whole" / file).read_bytes() == (folder / "looked-up" / file).read_bytes(), file
    return warnings[0], warnings[1]


def test_a_grid_looked_up_builds_what_a_grid_walked_builds(answered, monkeypatch):
    whole, looked_up = both_ways(answered, text_spec(6, 5, 2), monkeypatch)
    assert whole == looked_up == []


def test_the_shortfall_is_the_same_either_way(answered, monkeypatch):
    """The spec now wants 3 per cell: every cell is one short, and says so the same way."""
    whole, looked_up = both_ways(answered, text_spec(6, 5, 3), monkeypatch)
    assert whole == looked_up
    assert any("30 cells are short of their count by 30 examples" in w for w in whole), whole


def test_cells_the_spec_dropped_keep_nothing_either_way(answered, monkeypatch):
    """An axis value removed from the spec after generating: its cells' examples are not kept."""
    text = text_spec(6, 5, 2).replace("x: [x0, x1, x2, x3, x4, x5]", "x: [x0, x1, x2, x3, x4]")
    assert text != text_spec(6, 5, 2)
    both_ways(answered, text, monkeypatch)
    kept = sum(1 for _ in (answered / "looked-up" / "metadata.jsonl").open())
    assert kept == 5 * 5 * 2


def test_a_grid_with_cells_not_yet_answered_counts_them(answered, monkeypatch):
    """Two more values of an axis: their 10 cells have no example at all; the build walking the
    grid names their categories, the one looking cells up counts them."""
    text = text_spec(6, 5, 2).replace("x: [x0, x1, x2, x3, x4, x5]", "x: [x0, x1, x2, x3, x4, x5, x6, x7]")
    whole, looked_up = both_ways(answered, text, monkeypatch)
    assert any("10 cells are short of their count by 20 examples (x6: 10, x7: 10)" in w for w in whole), whole
    assert any("10 cells are short of their count by 20 examples (10 cells with no example yet)" in w
               for w in looked_up), looked_up
