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
    low, high = min(turns), max(turns)
    plot = plots.histograms("turns", {"dialogues": [int(m["provenance"]["turns"]) for m, _ in dialogues]},
                            "exchanges per dialogue (a customer turn and the agent's reply)",
                            bins=[n - 0.5 for n in range(low, high + 2)])
    shown = []
    for meta, row in dialogues[:SHOWN]:
        cell = " · ".join(str(v) for v in (meta.get("cell") or {}).values())
        messages = [(str(m.get("role")), str(m.get("content")), m.get("weight")) for m in row.get("messages", [])]
        shown.append({"category": meta.get("category", ""), "cell": cell, "split": meta.get("split", ""),
                      "turns": meta["provenance"]["turns"], "messages": messages})
    return {
        "n": len(dialogues),
        "plot": plot,
        "turns": sorted(turns.items()),
        "ended": ended.most_common(),
        "shown": shown,
    }
