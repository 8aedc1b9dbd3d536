"""Bounded state for one pass over a dataset too large to hold: a report of a million examples.

The report reads every kept and dropped example once and keeps only what does not grow with their
number: exact counters per category, a uniform sample (``Reservoir``), the first rows of each
category (``Buckets``), counts over the grid's narrow axes (``AxisGrid``), and the ids it must look
up later in a temporary SQLite file (``IdIndex``) instead of a set of a million strings.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Reservoir(Generic[T]):
    """A uniform sample of at most ``size`` items per key (Vitter's algorithm R), with how many were
    seen. Seeded, so the same inputs draw the same page."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.items: dict[str, list[T]] = {}
        self.seen: Counter[str] = Counter()

    def add(self, key: str, item: T) -> None:
        n = self.seen[key]
        self.seen[key] += 1
        items = self.items.setdefault(key, [])
        if n < self.size:
            items.append(item)
        elif (j := self.rng.randrange(n + 1)) < self.size:
            items[j] = item

    @property
    def sampled(self) -> bool:
        """Whether some key saw more items than it kept."""
        return any(self.seen[key] > len(items) for key, items in self.items.items())

    def read(self) -> int:
        return sum(len(items) for items in self.items.values())


def fair_shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """How many of each key's ``sizes`` items to take so that at most ``budget`` are taken in all,
    as evenly as the sizes allow: a small key gives what it does not use to the larger ones."""
    take = dict.fromkeys(sizes, 0)
    open_ = [k for k, n in sizes.items() if n > 0]
    while budget > 0 and open_:
        each = max(1, budget // len(open_))
        for key in list(open_):
            step = min(each, sizes[key] - take[key], budget)
            take[key] += step
            budget -= step
            if take[key] == sizes[key]:
                open_.remove(key)
            if not budget:
                break
    return take


class Buckets(Generic[T]):
    """The first ``caps[key]`` (else ``default``) items of each key, with the exact count of each."""

    def __init__(self, caps: dict[str, int], default: int) -> None:
        self.caps, self.default = caps, default
        self.items: dict[str, list[T]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, key: str, item: T) -> None:
        self.counts[key] += 1
        bucket = self.items.setdefault(key, [])
        if len(bucket) < self.caps.get(key, self.default):
            bucket.append(item)

    def pick(self, budget: int) -> tuple[list[T], int]:
        """At most ``budget`` items, shared fairly between the keys, and the most any key gave."""
        shares = fair_shares({k: len(v) for k, v in self.items.items()}, budget)
        return [item for key, items in self.items.items() for item in items[:shares[key]]], max(shares.values(),
                                                                                                default=0)


class AxisGrid:
    """Kept and wanted counts over each pair of a grid's variables, for a heat map over two of them.
    A variable that takes more than ``limit`` values is dropped as it crosses the bound (a heat map of
    a million inputs is neither drawable nor readable), so the state stays within ``limit``² per pair."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: dict[str, set[str]] = {}  # distinct values (as JSON) of each narrow variable
        self.wide: list[str] = []  # variables that took more than ``limit`` values, in order of crossing
        self.pairs: dict[tuple[str, str], dict[tuple[str, str], list[int]]] = {}
        self.single: dict[str, dict[str, list[int]]] = {}

    def add(self, cell: dict[str, Any], kept: int = 0, wanted: int = 0) -> None:
        for key, value in cell.items():
            if key in self.wide:
                continue
            seen = self.values.setdefault(key, set())
            seen.add(json.dumps(value, sort_keys=True, default=str))
            if len(seen) > self.limit:
                self.wide.append(key)
                del self.values[key]
                self.single.pop(key, None)
                self.pairs = {pair: counts for pair, counts in self.pairs.items() if key not in pair}
        keys = list(self.values)
        for i, first in enumerate(keys):
            label = str(cell.get(first))
            counts = self.single.setdefault(first, {}).setdefault(label, [0, 0])
            counts[0] += kept
            counts[1] += wanted
            for second in keys[i + 1:]:
                at = self.pairs.setdefault((first, second), {}).setdefault((label, str(cell.get(second))), [0, 0])
                at[0] += kept
                at[1] += wanted

    def axes(self) -> list[str]:
        """The first two narrow variables that take more than one value."""
        return [k for k, seen in self.values.items() if len(seen) > 1][:2]

    def at(self, axes: list[str]) -> dict[tuple[str, str], list[int]]:
        """(row value, column value) → [kept, wanted], the column "all" over one axis."""
        if len(axes) > 1:
            return self.pairs.get((axes[0], axes[1]), {})
        return {(value, "all"): counts for value, counts in self.single.get(axes[0], {}).items()}


class IdIndex:
    """The kept examples' ids and the rows of ``dropped.jsonl`` by id, in a SQLite file under
    ``folder``, so a pass over the store's examples asks which were kept or dropped in batches."""

    def __init__(self, folder: Path) -> None:
        self.db = sqlite3.connect(folder / "ids.db")
        self.db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -32000;"
            "CREATE TABLE kept (id TEXT PRIMARY KEY) WITHOUT ROWID;"
            "CREATE TABLE dropped (id TEXT PRIMARY KEY, seq INTEGER, row TEXT, rendered INTEGER DEFAULT 0);")
        self.order = 0

    def keep(self, ids: Iterable[str]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO kept VALUES (?)", ((i,) for i in ids))

    def drop(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of ``dropped.jsonl``: of an id listed twice, the last row, in the first one's place."""
        for row in rows:
            self.order += 1
            self.db.execute("INSERT INTO dropped (id, seq, row) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                            "SET row = excluded.row", (str(row.get("id")), self.order, json.dumps(row)))

    def look_up(self, ids: list[str]) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """Of ``ids``: those kept, and the dropped rows of those listed (then marked as rendered)."""
        marks = ",".join("?" * len(ids))
        kept = {i for (i,) in self.db.execute(f"SELECT id FROM kept WHERE id IN ({marks})", ids)}
        listed = {i: json.loads(row) for i, row in self.db.execute(
            f"SELECT id, row FROM dropped WHERE id IN ({marks})", ids)}
        if listed:
            self.db.executemany("UPDATE dropped SET rendered = 1 WHERE id = ?", ((i,) for i in listed))
        return kept, listed

    def unrendered(self) -> Iterator[dict[str, Any]]:
        """The dropped rows no example of the store rendered to, in the file's order."""
        for (row,) in self.db.execute("SELECT row FROM dropped WHERE rendered = 0 ORDER BY seq"):
            yield json.loads(row)

    def close(self) -> None:
        self.db.close()
