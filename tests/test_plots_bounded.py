"""A heat map over a big grid (a table of thousands of inputs) draws its first rows and columns
only: drawing every one took a minute and 1.5 GiB for 2,000 inputs, and showed nothing legible."""

from __future__ import annotations

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


def test_charts_of_thousands_of_categories_show_their_first_ones():
    """A grid whose every cell is its own category: per-category charts stay the size of 40 bars."""
    def charts(n: int) -> list[int]:
        names = [f"category {i}" for i in range(n)]
        return [len(plots.boxes("b", {c: [1.0, 2.0, 3.0] for c in names}, "length")),
                len(plots.stacked_bars("s", names, {"kept": [1.0] * n, "dropped": [2.0] * n}, "examples")),
                len(plots.grouped_bars("g", names, {"distinct-1": [0.5] * n}, "share"))]

    for big, small in zip(charts(400), charts(plots.HEATMAP_MAX), strict=True):
        assert big < 1.3 * small
