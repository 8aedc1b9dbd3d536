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
    sampled: str = ""  # how the flags were read on a sample of a large dataset (empty: every example)


@dataclass
class Flagged:
    """How many examples of a group there are, and how many of those read carry each flag. A large
    dataset's flags are read on a sample: ``seen`` is the group's size, ``read`` the sample's."""

    seen: int = 0
    read: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, flags: list[str]) -> None:
        self.read += 1
        self.counts.update(set(flags))

    def shares(self) -> list[Share]:
        """Per heuristic, the flagged count, scaled from the sample to the whole group."""
        scale = self.seen / self.read if self.read else 0.0
        return [Share(key, round(self.counts[key] * scale), self.seen) for key, _, _ in HEURISTICS]

    def __iadd__(self, other: Flagged) -> Flagged:
        self.seen, self.read = self.seen + other.seen, self.read + other.read
        self.counts.update(other.counts)
        return self


def quality_panel(kept: dict[str, Flagged], dropped: Flagged, cut_off: dict[str, tuple[int, int]] | None,
                  rejections: list[tuple[str, int]] | None) -> Panel:
    """``kept``: per category, the flags of its kept examples (train and test); ``dropped``: those
    of the dropped examples with text; ``cut_off``: per category, answers cut off at max tokens and
    answers received (None: no store); ``rejections``: why answers were rejected, commonest first."""
    panel = Panel(list(HEURISTICS), rejections=rejections or [], store=cut_off is not None)
    categories = sorted(set(kept) | set(cut_off or {}))

    def row(label: str, category: str, status: str, flagged: Flagged, cut: tuple[int, int] | None) -> PanelRow:
        return PanelRow(label, category, status, flagged.seen, flagged.shares(), cut)

    everything = Flagged()
    for category in categories:
        flagged = kept.get(category, Flagged())
        everything += Flagged(flagged.seen, flagged.seen, Counter(
            {share.key: share.count for share in flagged.shares()}))  # each category at its own scale
        panel.rows.append(row(category, category, "kept", flagged,
                              (cut_off or {}).get(category, (0, 0)) if cut_off is not None else None))
    if len(categories) > 1 or not categories:
        total_cut = (sum(c for c, _ in cut_off.values()), sum(t for _, t in cut_off.values())) if cut_off else None
        panel.rows.append(row("all kept", "", "kept", everything, total_cut))
    if dropped.read:
        panel.rows.append(row("dropped (with text)", "", "dropped", dropped, None))
    return panel
