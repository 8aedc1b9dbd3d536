"""The report's conversation panel: how long the kept dialogues are, why they ended, and a few of
them whole (a dialogue read turn by turn says more than its last answer in the examples table)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from promptbake.records import Example

SHOWN = 12  # whole dialogues in the panel


class Conversations:
    """The panel's counts, gathered one kept example at a time (a pass over a million examples keeps
    two small counters and the first :data:`SHOWN` dialogues)."""

    def __init__(self) -> None:
        self.n = 0
        self.turns: Counter[int] = Counter()
        self.ended: Counter[str] = Counter()
        self.shown: list[dict[str, Any]] = []

    def add(self, split: str, example: Example) -> None:
        if "turns" not in example.provenance:
            return
        self.n += 1
        self.turns[int(example.provenance["turns"])] += 1
        self.ended[example.provenance.get("ended", "?")] += 1
        if len(self.shown) < SHOWN:
            category = example.category
            cell = " · ".join(str(v) for v in example.cell.values() if str(v) != category)
            messages = [(str(m.get("role")), str(m.get("content")), m.get("weight")) for m in example.messages]
            self.shown.append({"category": category, "cell": cell, "split": split,
                               "turns": example.provenance["turns"], "messages": messages})

    def view(self) -> dict[str, Any] | None:
        """The panel's context, or None when the dataset holds no dialogues (no example's
        provenance records turns)."""
        from promptbake.output import plots

        if not self.n:
            return None
        lengths = range(min(self.turns), max(self.turns) + 1)  # every length between, the missing ones at 0
        plot = plots.grouped_bars("turns", [f"{n} exchange{'s' if n != 1 else ''}" for n in lengths],
                                  {"dialogues": [self.turns[n] for n in lengths]}, "kept dialogues")
        return {"n": self.n, "plot": plot, "turns": sorted(self.turns.items()), "ended": self.ended.most_common(),
                "shown": self.shown}

