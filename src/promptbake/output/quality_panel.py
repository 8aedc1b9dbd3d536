"""The report's quality panel: what the built-in heuristics say about every example, judge or not.

A run can print ok, fill every cell and validate, and still hold replies that say "You're welcome".
The gates only drop what the spec asked them to drop; this panel flags every example with every
heuristic of ``curate/quality.py`` (echo, refusal or apology, politeness, a customer who sounds like
the staff, non-English) whether or not the spec gated on it, as a share per category, each share a
link to the flagged rows of the example table. Next to them: how many answers were cut off at
``max_tokens`` (those never become examples: they are re-asked, or left out of the choices), and
why answers were rejected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from promptbake.curate.quality import HEURISTICS


@dataclass
class Share:
    """One cell of the panel: how many of ``total`` examples carry the flag ``key``."""

    key: str
    count: int
    total: int

    @property
    def percent(self) -> str:
        return f"{100 * self.count / self.total:.0f}%" if self.total else "–"


@dataclass
class PanelRow:
    label: str  # a category, "all kept" or "dropped"
    category: str  # what the example table's category filter takes ("" for every category)
    status: str  # what its status filter takes: kept (train and test) or dropped
    total: int
    shares: list[Share]
    cut_off: tuple[int, int] | None = None  # answers cut off at max_tokens, of all answers received


@dataclass
class Panel:
    heuristics: list[tuple[str, str, str]]
    rows: list[PanelRow] = field(default_factory=list)
    rejections: list[tuple[str, int]] = field(default_factory=list)
    store: bool = False  # the cut-off counts and rejection reasons need the store


def quality_panel(examples: list[tuple[str, str, list[str]]], cut_off: dict[str, tuple[int, int]] | None,
                  rejections: list[tuple[str, int]] | None) -> Panel:
    """``examples``: (status, category, flags) of every example with text (train, test, dropped);
    ``cut_off``: per category, answers cut off at max tokens and answers received (None: no store);
    ``rejections``: why answers were rejected, commonest first."""
    panel = Panel(list(HEURISTICS), rejections=rejections or [], store=cut_off is not None)
    kept = [(category, flags) for status, category, flags in examples if status != "dropped"]
    dropped = [flags for status, _, flags in examples if status == "dropped"]
    categories = sorted({category for category, _ in kept} | set(cut_off or {}))

    def row(label: str, category: str, status: str, flagged: list[list[str]],
            cut: tuple[int, int] | None) -> PanelRow:
        counts = Counter(key for flags in flagged for key in set(flags))
        return PanelRow(label, category, status, len(flagged),
                        [Share(key, counts[key], len(flagged)) for key, _, _ in HEURISTICS], cut)

    for category in categories:
        panel.rows.append(row(category, category, "kept", [f for c, f in kept if c == category],
                              (cut_off or {}).get(category, (0, 0)) if cut_off is not None else None))
    if len(categories) > 1 or not categories:
        total_cut = (sum(c for c, _ in cut_off.values()), sum(t for _, t in cut_off.values())) if cut_off else None
        panel.rows.append(row("all kept", "", "kept", [f for _, f in kept], total_cut))
    if dropped:
        panel.rows.append(row("dropped (with text)", "", "dropped", dropped, None))
    return panel
