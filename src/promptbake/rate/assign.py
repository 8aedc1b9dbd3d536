"""Who sees what: units (an item and a pair of sources) handed to raters as they come.

Raters are not known in advance (anyone with the URL and a name rates), so a unit is given out when
a rater asks for their next one: a unit they have not seen that fewer than ``raters_per_item``
raters hold, those already held first so that overlaps (which agreement needs) fill up before new
units are opened. The side each source is shown on is drawn per rater and unit from the study's
seed and stored with the showing. A share of each rater's units (``repeat_share``) comes back to
the same rater at least ``REPEAT_GAP`` ratings later, sides swapped, to measure self-consistency.
"""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import InputError
from promptbake.ids import stable_hash
from promptbake.rate.sources import Item, Source, load_source, match
from promptbake.rate.store import VERDICTS, RatingStore, Shown

REPEAT_GAP = 5  # ratings between a unit and its repeat, so the first answer is not simply remembered
DEFAULTS: dict[str, Any] = {"raters_per_item": 1, "repeat_share": 0.1}


@dataclass(frozen=True)
class Progress:
    done: int  # live ratings (skips included)
    left: int  # showings still to come, as far as known now (a repeat may add one)


def units_for(items: list[Item], sources: list[Source], seed: int) -> list[tuple[str, str, str]]:
    """Every pair of sources that both answered an item, as (item, a, b), shuffled by ``seed``."""
    units = [(item.id, a.name, b.name) for item in items for a, b in itertools.combinations(sources, 2)
             if item.id in a.answers and item.id in b.answers]
    random.Random(seed).shuffle(units)
    return units


def _fraction(*parts: Any) -> float:
    return int(stable_hash(*parts), 16) / 16**16


def open_study(path: str | Path, sources: list[str], *, raters_per_item: int | None = None,
               repeat_share: float | None = None, seed: int | None = None) -> RatingStore:
    """The ratings store at ``path``: started from ``sources`` when new, else resumed (the same
    sources, or none: the store has their answers). Settings given now are kept for later runs."""
    if raters_per_item is not None and raters_per_item < 1:
        raise InputError("--raters-per-item must be at least 1")
    if repeat_share is not None and not 0 <= repeat_share <= 1:
        raise InputError("--repeat-share must be between 0 and 1")
    loaded = [load_source(s) for s in sources]
    items = match(loaded) if loaded else []
    store = RatingStore(path, create=bool(loaded))
    try:
        existing = store.sources()
        if not existing and not loaded:
            raise InputError(f"{store.path}: holds no study yet; give the sources to rate")
        if existing and loaded:
            given = [(s.name, s.digest()) for s in loaded]
            if given != [(s["name"], s["digest"]) for s in existing]:
                raise InputError(f"{store.path} rates {', '.join(s['name'] for s in existing)}, with other answers or "
                                 "under other names; give the same sources (or none) to resume, or start a new --out")
        settings = {**DEFAULTS, **store.settings()}
        if not existing:
            settings["seed"] = seed if seed is not None else secrets.randbelow(2**31)
            store.start(loaded, items, units_for(items, loaded, settings["seed"]))
        elif seed is not None and seed != settings["seed"]:
            raise InputError(f"{store.path} was started with another --seed; the hand-out order is fixed")
        if raters_per_item is not None:
            settings["raters_per_item"] = raters_per_item
        if repeat_share is not None:
            settings["repeat_share"] = repeat_share
        store.save_settings(settings)
    except BaseException:
        store.close()
        raise
    return store


class Assigner:
    """The hand-out rules over one open store."""

    def __init__(self, store: RatingStore) -> None:
        self.store = store
        settings = store.settings()
        self.seed = int(settings["seed"])
        self.per_unit = int(settings["raters_per_item"])
        self.repeat_share = float(settings["repeat_share"])

    def current(self, rater: str) -> Shown | None:
        """What the rater should rate now: where they left off, a repeat that is due, a new unit,
        or (no new units left) a repeat not yet due; None when they are done."""
        store = self.store
        pending = store.unrated(rater)
        if pending is not None:
            return pending
        candidates = store.repeat_candidates(rater)
        for shown, rating in candidates:
            if store.rated_since(rater, rating) >= REPEAT_GAP:
                return self._repeat(shown)
        units = store.open_units(rater, self.per_unit)
        if units:
            unit = units[0]
            a, b = store.unit_sources(unit)
            left, right = (a, b) if _fraction(self.seed, rater, unit, "side") < 0.5 else (b, a)
            want = _fraction(self.seed, rater, unit, "repeat") < self.repeat_share
            return store.show(rater, unit, left, right, None, want)
        if candidates:
            return self._repeat(candidates[0][0])
        return None

    def _repeat(self, first: Shown) -> Shown:
        return self.store.show(first.rater, first.unit, first.right, first.left, first.id, False)

    def rate(self, rater: str, shown_id: int, verdict: str, comment: str = "") -> None:
        if verdict not in VERDICTS:
            raise InputError(f"verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
        shown = self.store.shown(shown_id)
        if shown is None or shown.rater != rater:
            raise InputError(f"item {shown_id} was not shown to {rater!r}")
        self.store.rate(shown, verdict, comment.strip()[:2000])

    def undo(self, rater: str) -> bool:
        return self.store.undo(rater)

    def progress(self, rater: str) -> Progress:
        store = self.store
        left = (store.unrated_count(rater) + len(store.open_units(rater, self.per_unit))
                + len(store.repeat_candidates(rater)))
        return Progress(store.rated_count(rater), left)
