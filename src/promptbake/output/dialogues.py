"""The report's conversation panel: how long the kept dialogues are, why they ended, and a few of
them whole (a dialogue read turn by turn says more than its last answer in the examples table)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from promptbake.records import Example

SHOWN = 12  # whole dialogues in the panel


def conversation_view(kept: Sequence[tuple[str, Example]]) -> dict[str, Any] | None:
    """The panel's context from the kept (split, example) pairs, or None when the dataset holds no
    dialogues (no example's provenance records turns)."""
    from promptbake.output import plots

    dialogues = [(split, e) for split, e in kept if "turns" in e.provenance]
    if not dialogues:
        return None
    turns = Counter(int(e.provenance["turns"]) for _, e in dialogues)
    ended = Counter(e.provenance.get("ended", "?") for _, e in dialogues)
    lengths = range(min(turns), max(turns) + 1)  # every length between, the missing ones at 0
    plot = plots.grouped_bars("turns", [f"{n} exchange{'s' if n != 1 else ''}" for n in lengths],
                              {"dialogues": [turns[n] for n in lengths]}, "kept dialogues")
    shown = []
    for split, example in dialogues[:SHOWN]:
        category = example.category
        cell = " · ".join(str(v) for v in example.cell.values() if str(v) != category)
        messages = [(str(m.get("role")), str(m.get("content")), m.get("weight")) for m in example.messages]
        shown.append({"category": category, "cell": cell, "split": split, "turns": example.provenance["turns"],
                      "messages": messages})
    return {
        "n": len(dialogues),
        "plot": plot,
        "turns": sorted(turns.items()),
        "ended": ended.most_common(),
        "shown": shown,
    }
