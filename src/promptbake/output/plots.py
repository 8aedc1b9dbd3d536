"""The report's plots: matplotlib figures rendered to inline SVG.

matplotlib draws on its object API (``Figure``), never ``pyplot``: no global figure registry, no
backend to select, nothing shared between reports built in one process. Text is drawn as paths
(``svg.fonttype: path``), so the SVG needs no font from the viewer's machine, and element ids are
salted per plot with no date in the metadata, so the same data gives the same bytes.

Labels come from the data (categories, axis values, setting names) and are drawn as written:
math text is off, so ``$5 and $10`` is two prices and not a formula (which matplotlib would fail to
parse, losing the whole report), and invisible characters are shown as ``⟨U+200B⟩`` (``visible``).
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec

from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.figure import Figure

from promptbake.output.visible import visible

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
_WIDTH = 7.5  # inches: the report's column
P = ParamSpec("P")


def _literal(draw: Callable[P, Markup]) -> Callable[P, Markup]:
    """Draw with math text off: matplotlib reads the setting when it makes a text (tick labels are
    made while saving), so it holds for the whole plot, figure and SVG alike."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Markup:
        with rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def _short(label: str, width: int = 28) -> str:
    """A label wrapped onto lines of ``width`` characters, never cut: categories often differ only
    at the end ("wants a refund" / "wants a refund in cash"), so a cut label would merge them."""
    label = visible(label)
    return "\n".join(textwrap.wrap(label, width, break_long_words=True, break_on_hyphens=False)) or label


def _lines(labels: Sequence[str], width: int = 28) -> int:
    """How many lines the tallest wrapped label takes: rows of the plot grow with it."""
    return max([_short(label, width).count("\n") + 1 for label in labels] or [1])


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


def _shown(xlabel: str, n: int, what: str = "") -> tuple[str, int]:
    """How many of ``n`` bars or boxes a chart draws (its first ``HEATMAP_MAX``), and its axis
    label, which says so when that is not all: a grid whose every cell is its own category would
    otherwise draw thousands of unreadable rows, for minutes."""
    if n <= HEATMAP_MAX:
        return xlabel, n
    return f"{xlabel}; the first {HEATMAP_MAX} of {n:,}{what}", HEATMAP_MAX


def _figure(rows: int = 1, height: float = 3.0) -> Figure:
    fig = Figure(figsize=(_WIDTH, height * rows), layout="constrained")
    fig.patch.set_alpha(0)
    return fig


@_literal
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
    fig = _figure(height=max(2.2, 0.45 * len(rows) * (1 + 0.5 * (_lines(rows) - 1)) + 0.15 * _lines(cols, 18) + 1.2))
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
    ax.set_xlabel(visible(col_axis))
    ax.set_ylabel(visible(row_axis))
    fig.colorbar(image, ax=ax, label=scale, shrink=0.8)
    return _svg(fig, name)


@_literal
def histograms(name: str, series: Mapping[str, Sequence[float]], xlabel: str,
               bins: int | Sequence[float] = 20) -> Markup:
    """Overlaid histograms, one per series (prompt and answer tokens, say)."""
    fig = _figure()
    ax = fig.add_subplot()
    for k, (label, data) in enumerate(series.items()):
        ax.hist(data, bins=bins, alpha=0.6, label=f"{visible(label)} (n={len(data)})", color=PALETTE[k % len(PALETTE)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    return _svg(fig, name)


@_literal
def boxes(name: str, groups: dict[str, list[float]], xlabel: str) -> Markup:
    """One horizontal box per group (category), the group's size in its label."""
    xlabel, shown = _shown(xlabel, len(groups), " groups")
    groups = dict(list(groups.items())[:shown])
    fig = _figure(height=max(2.0, 0.4 * len(groups) * (1 + 0.5 * (_lines(list(groups)) - 1)) + 1.0))
    ax = fig.add_subplot()
    names = list(groups)
    ax.boxplot([groups[n] for n in names], orientation="horizontal", widths=0.6,
               tick_labels=[f"{_short(n)} ({len(groups[n])})" for n in names])
    ax.tick_params(axis="y", labelsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return _svg(fig, name)


@_literal
def stacked_bars(name: str, bars: Sequence[str], stacks: dict[str, list[float]], xlabel: str,
                 colors: dict[str, str] | None = None) -> Markup:
    """Horizontal bars (categories, subset sizes) split into stacks (kept, dropped by…)."""
    xlabel, shown = _shown(xlabel, len(bars))
    bars, stacks = bars[:shown], {k: v[:shown] for k, v in stacks.items()}
    fig = _figure(height=max(2.0, 0.4 * len(bars) * (1 + 0.5 * (_lines(bars) - 1)) + 1.2))
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


@_literal
def grouped_bars(name: str, groups: Sequence[str], series: Mapping[str, Sequence[Any]], xlabel: str,
                 xlim: tuple[float, float] | None = None) -> Markup:
    """Horizontal bars, one per series within each group (distinct-n per category, say)."""
    xlabel, shown = _shown(xlabel, len(groups), " groups")
    groups, series = groups[:shown], {k: v[:shown] for k, v in series.items()}
    fig = _figure(height=max(2.0, 0.22 * len(groups) * max(1, len(series), _lines(groups)) + 1.2))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ys = [i + k * height for i in range(len(groups))]
        ax.barh(ys, [v or 0 for v in values], height=height, label=_short(label, 40), color=PALETTE[k % len(PALETTE)])
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(groups))], [_short(g) for g in groups], fontsize=8)
    ax.invert_yaxis()
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    _legend_below(fig, len(series))
    return _svg(fig, name)


@_literal
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
        ax.set_xlabel(visible(xlabel))
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="best")
    return _svg(fig, name)


Curve = Sequence[tuple[float, float, float, float]]  # (size, mean, lowest, highest) per measured size


def learning_curves(name: str, panels: Mapping[str, Mapping[str, Curve]],
                    references: Mapping[str, Mapping[str, float]], targets: Mapping[str, float],
                    xlabel: str = "training examples") -> Markup:
    """One panel per metric (two to a row), one line per category (``all`` thick) through the
    measured sizes with the seeds' spread as a band, the reference models as horizontal lines and
    the targets as thin red ones; one legend for all panels. The x axis turns symmetric-log when the
    sizes span more than 20×, so the small sizes, where most changes, stay readable."""
    columns = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(_WIDTH, 2.6 * rows + 0.9), layout="constrained")
    fig.patch.set_alpha(0)
    styles = {"teacher": ("--", "#555"), "prompted": (":", "#b07aa1")}
    legend: dict[str, Any] = {}
    for p, (metric, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, p + 1)
        sizes = sorted({point[0] for points in series.values() for point in points})
        values = [v for points in series.values() for point in points for v in point[1:]]
        values += list((references.get(metric) or {}).values())
        for k, (label, points) in enumerate(series.items()):
            if not points:
                continue
            xs, means, lows, highs = zip(*points, strict=True)
            color = "#222" if label == "all" else PALETTE[k % len(PALETTE)]
            (line,) = ax.plot(xs, means, marker="o", markersize=3.5, color=color,
                              linewidth=2.4 if label == "all" else 1.1)
            legend.setdefault(_short(label), line)
            if any(lo != hi for lo, hi in zip(lows, highs, strict=True)):
                ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
        for kind, value in (references.get(metric) or {}).items():
            style, color = styles.get(kind, ("-.", "#999"))
            legend.setdefault(f"{kind} (all)", ax.axhline(value, linestyle=style, color=color, linewidth=1.2))
        if metric in targets:
            legend.setdefault("target", ax.axhline(targets[metric], color="#e15759", linewidth=0.8, alpha=0.7))
        positive = [s for s in sizes if s > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("symlog", linthresh=min(positive))
            ax.set_xlim(min(sizes) - 0.25 * min(positive), max(sizes) * 1.15)  # no empty negative decade
        if sizes:
            ax.set_xticks(sizes, [f"{s:g}" for s in sizes], fontsize=8)
        if values and all(0 <= v <= 1 for v in values):
            ax.set_ylim(-0.04, 1.04)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(len(legend), 5),
               fontsize=8, frameon=False)
    return _svg(fig, name)
