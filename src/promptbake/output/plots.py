"""The report's plots: matplotlib figures rendered to inline SVG.

matplotlib draws on its object API (``Figure``), never ``pyplot``: no global figure registry, no
backend to select, nothing shared between reports built in one process. Text is drawn as paths
(``svg.fonttype: path``), so the SVG needs no font from the viewer's machine, and element ids are
salted per plot with no date in the metadata, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.figure import Figure

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
_WIDTH = 7.5  # inches: the report's column


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _svg(fig: Figure, name: str) -> Markup:
    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": name, "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})  # constrained layout: no second draw
    text = buffer.getvalue()
    return Markup(text[text.index("<svg"):])  # inline: no XML declaration or DOCTYPE inside HTML


HEATMAP_MAX = 40  # rows or columns a heat map shows, bars or boxes a chart shows: more is unreadable and slow


def _first(axis: str, rows: Sequence[str], values: list[list[float | None]],
           labels: list[list[str]]) -> tuple[str, Sequence[str], list[list[float | None]], list[list[str]]]:
    if len(rows) <= HEATMAP_MAX:
        return axis, rows, values, labels
    return (f"{axis} (the first {HEATMAP_MAX} of {len(rows):,})", rows[:HEATMAP_MAX], values[:HEATMAP_MAX],
            labels[:HEATMAP_MAX])


def _figure(rows: int = 1, height: float = 3.0) -> Figure:
    fig = Figure(figsize=(_WIDTH, height * rows), layout="constrained")
    fig.patch.set_alpha(0)
    return fig


def heatmap(name: str, rows: Sequence[str], cols: Sequence[str], values: list[list[float | None]],
            labels: list[list[str]], row_axis: str, col_axis: str, scale: str, vmax: float | None = None) -> Markup:
    """A grid of cells: colour by ``values`` (None: no such cell) from 0 to ``vmax``, text from ``labels``.
    At most ``HEATMAP_MAX`` rows and columns are drawn (the first ones), and the axis label says so:
    a table of 2,000 inputs would otherwise take a minute and 1.5 GiB to draw, all of it unreadable."""
    row_axis, rows, values, labels = _first(row_axis, rows, values, labels)
    if len(cols) > HEATMAP_MAX:
        col_axis = f"{col_axis} (the first {HEATMAP_MAX} of {len(cols):,})"
        cols, values, labels = cols[:HEATMAP_MAX], [r[:HEATMAP_MAX] for r in values], [r[:HEATMAP_MAX] for r in labels]
    import numpy as np

    data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float))
    fig = _figure(height=max(2.2, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap="YlGnBu", aspect="auto", vmin=0, vmax=vmax)
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            if text:
                value = values[i][j]
                dark = value is not None and value > 0.6 * (vmax or data.max())
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "#222")
    ax.set_xticks(range(len(cols)), [_short(c, 18) for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=8)
    ax.set_xlabel(col_axis)
    ax.set_ylabel(row_axis)
    fig.colorbar(image, ax=ax, label=scale, shrink=0.8)
    return _svg(fig, name)


def histograms(name: str, series: Mapping[str, Sequence[float]], xlabel: str,
               bins: int | Sequence[float] = 20) -> Markup:
    """Overlaid histograms, one per series (prompt and answer tokens, say)."""
    fig = _figure()
    ax = fig.add_subplot()
    for k, (label, data) in enumerate(series.items()):
        ax.hist(data, bins=bins, alpha=0.6, label=f"{label} (n={len(data)})", color=PALETTE[k % len(PALETTE)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    return _svg(fig, name)


def boxes(name: str, groups: dict[str, list[float]], xlabel: str) -> Markup:
    """One horizontal box per group (category), the group's size in its label."""
    if len(groups) > HEATMAP_MAX:
        xlabel = f"{xlabel}; the first {HEATMAP_MAX} of {len(groups):,} groups"
        groups = dict(list(groups.items())[:HEATMAP_MAX])
    fig = _figure(height=max(2.0, 0.4 * len(groups) + 1.0))
    ax = fig.add_subplot()
    names = list(groups)
    ax.boxplot([groups[n] for n in names], orientation="horizontal", widths=0.6,
               tick_labels=[f"{_short(n)} ({len(groups[n])})" for n in names])
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return _svg(fig, name)


def stacked_bars(name: str, bars: Sequence[str], stacks: dict[str, list[float]], xlabel: str,
                 colors: dict[str, str] | None = None) -> Markup:
    """Horizontal bars (categories, subset sizes) split into stacks (kept, dropped by…)."""
    if len(bars) > HEATMAP_MAX:
        xlabel = f"{xlabel}; the first {HEATMAP_MAX} of {len(bars):,}"
        bars, stacks = bars[:HEATMAP_MAX], {k: v[:HEATMAP_MAX] for k, v in stacks.items()}
    fig = _figure(height=max(2.0, 0.4 * len(bars) + 1.2))
    ax = fig.add_subplot()
    left = [0.0] * len(bars)
    labels = [_short(b) for b in bars]
    for k, (stack, widths) in enumerate(stacks.items()):
        color = (colors or {}).get(stack, PALETTE[k % len(PALETTE)])
        ax.barh(labels, widths, left=left, label=_short(stack, 26), color=color)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    _legend_below(fig, len(stacks))
    return _svg(fig, name)


def _legend_below(fig: Figure, entries: int) -> None:
    """Under the plot, where it cannot hide a bar."""
    fig.legend(loc="outside lower center", ncols=min(entries, 3), fontsize=8, frameon=False)


def grouped_bars(name: str, groups: Sequence[str], series: Mapping[str, Sequence[Any]], xlabel: str,
                 xlim: tuple[float, float] | None = None) -> Markup:
    """Horizontal bars, one per series within each group (distinct-n per category, say)."""
    if len(groups) > HEATMAP_MAX:
        xlabel = f"{xlabel}; the first {HEATMAP_MAX} of {len(groups):,} groups"
        groups, series = groups[:HEATMAP_MAX], {k: v[:HEATMAP_MAX] for k, v in series.items()}
    fig = _figure(height=max(2.0, 0.22 * len(groups) * max(1, len(series)) + 1.2))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ys = [i + k * height for i in range(len(groups))]
        ax.barh(ys, [v or 0 for v in values], height=height, label=label, color=PALETTE[k % len(PALETTE)])
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(groups))], [_short(g) for g in groups], fontsize=8)
    ax.invert_yaxis()
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    _legend_below(fig, len(series))
    return _svg(fig, name)


def lines(name: str, panels: Mapping[str, Mapping[str, Sequence[tuple[float, float | None]]]], ylabel: str) -> Markup:
    """One panel per x variable (temperature, top_p), one line per series (category)."""
    fig = _figure(rows=len(panels), height=2.8)
    for p, (xlabel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, p + 1)
        for k, (label, points) in enumerate(series.items()):
            if not points:  # nothing scored in this series
                continue
            xs, ys = zip(*sorted(points), strict=True)
            style = {"color": "#222", "linewidth": 2.5} if label == "all" else {"color": PALETTE[k % len(PALETTE)]}
            ax.plot(xs, ys, marker="o", label=_short(label), **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="best")
    return _svg(fig, name)
