"""The report's conversation panel: how long the kept dialogues are, why they ended, and a few of
them whole (a dialogue read turn by turn says more than its last answer in the examples table)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

SHOWN = 12  # whole dialogues in the panel


def conversation_view(kept: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any] | None:
    """The panel's context from the built files' (metadata row, training row) pairs, or None when
    the dataset holds no dialogues (its metadata records no turns)."""
    from promptbake.output import plots

    dialogues = [(meta, row) for meta, row in kept if "turns" in (meta.get("provenance") or {})]
    if not dialogues:
        return None
    turns = Counter(int(meta["provenance"]["turns"]) for meta, _ in dialogues)
    ended = Counter(str(meta["provenance"].get("ended", "?")) for meta, _ in dialogues)
    lengths = range(min(turns), max(turns) + 1)  # every length between, the missing ones at 0
    plot = plots.grouped_bars("turns", [f"{n} exchange{'s' if n != 1 else ''}" for n in lengths],
                              {"dialogues": [turns[n] for n in lengths]}, "kept dialogues")
    shown = []
    for meta, row in dialogues[:SHOWN]:
        category = meta.get("category", "")
        cell = " · ".join(str(v) for v in (meta.get("cell") or {}).values() if str(v) != category)
        messages = [(str(m.get("role")), str(m.get("content")), m.get("weight")) for m in row.get("messages", [])]
        shown.append({"category": category, "cell": cell, "split": meta.get("split", ""),
                      "turns": meta["provenance"]["turns"], "messages": messages})
    return {
        "n": len(dialogues),
        "plot": plot,
        "turns": sorted(turns.items()),
        "ended": ended.most_common(),
        "shown": shown,
    }
