"""A heat map over a big grid (a table of thousands of inputs) draws its first rows and columns
only, and a chart of thousands of categories its first bars or boxes: drawing every one took a
minute and 1.5 GiB for 2,000 inputs, and showed nothing legible."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from markupsafe import Markup
from matplotlib.figure import Figure

from promptbake.output import plots


def grid(n_rows: int, n_cols: int) -> str:
    rows, cols = [f"input {i}" for i in range(n_rows)], [f"c{j}" for j in range(n_cols)]
    values = [[(i + j) % 5 / 4 for j in range(n_cols)] for i in range(n_rows)]
    labels = [[str((i + j) % 5) for j in range(n_cols)] for i in range(n_rows)]
    return str(plots.heatmap("h", rows, cols, values, labels, "input", "c", "share"))


def test_a_heat_map_of_many_rows_and_columns_is_no_bigger_than_its_first_ones():
    shown = len(grid(plots.HEATMAP_MAX, 3))
    assert len(grid(400, 3)) < 1.3 * shown  # drawn whole, 400 rows made a ten times bigger SVG
    assert len(grid(3, 400)) < 1.3 * len(grid(3, plots.HEATMAP_MAX))


def test_a_small_heat_map_is_drawn_whole():
    assert len(grid(10, 3)) < len(grid(20, 3))


CHARTS: dict[str, Callable[[list[str]], Markup]] = {
    "boxes": lambda names: plots.boxes("b", {c: [1.0, 2.0, 3.0] for c in names}, "length"),
    "stacked_bars": lambda names: plots.stacked_bars(
        "s", names, {"kept": [1.0] * len(names), "dropped": [2.0] * len(names)}, "examples"),
    "grouped_bars": lambda names: plots.grouped_bars("g", names, {"distinct-1": [0.5] * len(names)}, "share"),
}


def categories(n: int) -> list[str]:
    return [f"category {i}" for i in range(n)]


@pytest.mark.parametrize("chart", CHARTS)
def test_a_chart_of_thousands_of_categories_is_no_bigger_than_its_first_ones(chart):
    """A grid whose every cell is its own category: a per-category chart stays the size of 40
    bars (drawn whole, 400 made an SVG about nine times bigger, and 20,000 took minutes)."""
    draw = CHARTS[chart]
    assert len(draw(categories(400))) < 1.3 * len(draw(categories(plots.HEATMAP_MAX)))


@pytest.mark.parametrize("chart", CHARTS)
def test_a_cut_chart_draws_its_first_categories_and_its_axis_says_so(chart, monkeypatch):
    drawn: list[Figure] = []
    svg = plots._svg
    monkeypatch.setattr(plots, "_svg", lambda fig, name: (drawn.append(fig), svg(fig, name))[1])
    CHARTS[chart](categories(400))
    CHARTS[chart](categories(plots.HEATMAP_MAX))
    (cut, whole) = [fig.axes[0] for fig in drawn]
    assert cut.get_xlabel().endswith(f"the first {plots.HEATMAP_MAX} of 400" + ("" if chart == "stacked_bars"
                                                                             else " groups"))
    assert [t.get_text() for t in cut.get_yticklabels()] == [t.get_text() for t in whole.get_yticklabels()]
    assert "first" not in whole.get_xlabel()  # a chart that fits is drawn whole, its label as given
