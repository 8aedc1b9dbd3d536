"""The dataset report of a dataset too large to list: what it shows is bounded (rows per category,
cells, heat-map axes, the text its figures read), and it says so, while its counts stay exact.

bench/report_memory.py measures the memory and time; these tests check what the page says."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from promptbake.output import report
from promptbake.output.report import write_report

CATEGORIES = ("calm", "angry", "rushed")
PER_CATEGORY = 400  # 1,200 kept examples, each its own cell: more than the table lists (1,000)


def write_dataset(folder: Path) -> Path:
    """A built directory as build writes it (no store): train.jsonl in category order, each example
    its own cell (a unique ``input``, its category as ``topic``)."""
    folder.mkdir()
    train, meta = [], []
    for category in CATEGORIES:
        for i in range(PER_CATEGORY):
            line = f"customer {category} {i} says the order {i * 7} is late"
            train.append({"messages": [{"role": "user", "content": line},
                                       {"role": "assistant", "content": f"Reply {i} to a {category} one: wait."}]})
            meta.append({"id": f"{category}{i}", "category": category, "cell": {"input": line, "topic": category},
                         "provenance": {"cell_key": f"{category}{i}"}, "split": "train"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    (folder / "test.jsonl").write_text("", encoding="utf-8")
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta), encoding="utf-8")
    counts = {"rows": PER_CATEGORY, "kept": PER_CATEGORY, "train": PER_CATEGORY, "test": 0}
    (folder / "manifest.json").write_text(json.dumps({
        "spec": "large", "train": len(train), "test": 0, "categories": dict.fromkeys(CATEGORIES, counts)}))
    return folder


def test_the_table_shows_the_sample_shared_between_the_categories_and_says_how_many_there_are(tmp_path):
    page = write_report(write_dataset(tmp_path / "out"), sample=30).read_text(encoding="utf-8")
    shown = Counter(re.findall(r'<tr data-status="train" data-category="(\w+)"', page))
    assert shown == dict.fromkeys(CATEGORIES, 10)  # train.jsonl lists every calm one first
    assert "showing 30 of 1,200 kept examples (at most 10 of a category)" in page
    # the counts are of every example, not of the rows shown
    assert re.search(r'<td>calm</td><td class="n">400</td>', page)


def test_a_grid_wider_than_the_cell_table_lists_its_first_cells_and_says_so(tmp_path):
    page = write_report(write_dataset(tmp_path / "out")).read_text(encoding="utf-8")
    cells = page.split('<section id="cells">')[1].split("</section>")[0]
    assert cells.count("<tr>") - 1 == 1000 < len(CATEGORIES) * PER_CATEGORY  # report.CELL_ROWS, less its header
    assert "the table lists the first 1,000 cells (there are more)" in cells


def test_an_axis_with_too_many_values_gets_no_heat_map_and_the_next_axis_does(tmp_path):
    page = write_report(write_dataset(tmp_path / "out")).read_text(encoding="utf-8")
    assert "no heat map over input: more than 200 values" in page  # report.HEAT_VALUES
    caption = page.split('data-plot="heatmap">')[1].split("</figcaption>")[0]
    assert "main axes (topic)" in caption  # the next axis is drawn, alone


def test_past_the_sample_the_figures_say_they_read_a_sample_and_the_counts_stay_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DIST_SAMPLE", 150, raising=False)  # 100 examples of each category read (the floor)
    page = write_report(write_dataset(tmp_path / "out")).read_text(encoding="utf-8")
    assert "from a uniform sample of 300 of the 1,200 kept examples (at most 100 of a category)" in page
    assert "flags read on a uniform sample" in page
    for category in CATEGORIES:  # the diversity and quality tables count every example
        assert re.search(rf'<td>{category}</td><td class="n">400</td><td class="n">', page), category
    # the same pass without the bound: no note
    monkeypatch.setattr(report, "DIST_SAMPLE", 20_000, raising=False)
    page = write_report(tmp_path / "out", tmp_path / "all.html").read_text(encoding="utf-8")
    assert "uniform sample" not in page


GRID_SPEC = """
name: large
teacher: {model: gpt-4o-mini}
grid:
  axes:
    topic: [calm, angry, rushed]
    shop: [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9]
  count: 2
category: "{{ topic }}"
steps:
  - name: answer
    messages: [{role: user, content: "A {{ topic }} customer in {{ shop }}."}]
example:
  messages:
    - {role: user, content: "{{ topic }}"}
    - {role: assistant, content: "{{ answer }}"}
"""


def test_a_grid_too_long_to_walk_gets_no_requested_counts_or_heat_map_and_says_so(tmp_path, monkeypatch):
    """A 10^7-cell grid took 84 s and 1.2 GB to walk for the requested counts (a category per cell
    when the spec names none); past ``GRID_WALK`` cells the page walks only the cells it lists."""
    out = write_dataset(tmp_path / "out")
    (tmp_path / "spec.yaml").write_text(GRID_SPEC, encoding="utf-8")

    def categories_header(page: str) -> str:
        return page.split('<section id="categories">')[1].split("</tr>")[0]

    page = write_report(out, spec=tmp_path / "spec.yaml").read_text(encoding="utf-8")  # 30 cells: walked
    assert ">requested<" in categories_header(page)
    assert re.search(r'<td>calm</td><td class="n">20</td>', page)  # 10 shops x count 2, exact
    monkeypatch.setattr(report, "GRID_WALK", 20)
    page = write_report(out, spec=tmp_path / "spec.yaml").read_text(encoding="utf-8")
    assert "the grid has 30 cells: requested counts are shown for grids of at most 20 (the heat map shows kept " \
        "counts)" in page
    assert ">requested<" not in categories_header(page)
    assert "kept ÷ requested" not in page
