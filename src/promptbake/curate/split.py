"""Stable, group-aware, stratified train/test split.

Stable: each group of examples gets a seeded hash (sha256 of the seed and the group key), and a
category's test quota is filled with its groups in hash order. An example's side therefore depends
on its own hash and its category's quota, not on the input order: adding or removing examples
moves at most the few at a quota boundary. ``previous`` (the sides an earlier build of the same
output directory recorded) removes even that: an example keeps the side it had, an example that
was in test never goes to train, and only new groups are assigned, into what is left of the quota.

Group-aware: examples that share a prompt (``split.group: prompt``, the default: every message
before the last assistant turn, normalised as exact dedupe normalises), or a lineage (``lineage``:
the row the last step answered, so ``n > 1``, ``repeat`` and several replies per utterance stay
together), always land on the same side, so no test prompt was seen in training. ``none`` splits
example by example, each known by its slot (cell, prompt, and place among that prompt's examples),
not by its id, which changes with any sampling parameter of any step.

Stratified: quotas are apportioned with exact integer arithmetic (largest remainder, ties by
category name) so that every category with at least two examples is in both splits (a category
missing from test cannot be evaluated, one missing from train cannot be learned), unless all its
examples share one group; a lone example goes to train. Each split is written in a seeded order
of example ids (a shuffle that does not depend on the other examples).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

from promptbake.curate.normalise import normalise
from promptbake.records import Example, M
from promptbake.specification.models import SplitConfig

TEST, TRAIN = "test", "train"


def prompt_key(messages: list[dict[str, Any]]) -> str | None:
    """Every message before the last assistant turn, normalised as exact dedupe normalises, as a
    hash; None when there is nothing before it."""
    last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
    prompt = [[m.get("role"), normalise(m["content"]) if isinstance(m.get("content"), str) else m.get("content")]
              for m in messages[:last]]
    return hashlib.sha256(repr(prompt).encode()).hexdigest()[:32] if prompt else None


def group_key(example: Example, by: str) -> str:
    """The key whose examples must share a side (``by``: prompt, lineage or none). With ``none``
    it is the example's ``slot`` (its cell, prompt and place among the examples with that prompt):
    unlike the example id, it does not change when a step's sampling parameters (``max_tokens``,
    ``temperature``, ``n``...) do, so an earlier build's test examples stay in test."""
    if by == "lineage":
        return example.provenance.get("lineage") or example.id
    if by == "prompt":
        key = prompt_key(example.messages)
        if key is not None:
            return "prompt:" + key
    if by == "none" and example.provenance.get("slot"):
        return "slot:" + example.provenance["slot"]
    return example.id


def _rank(seed: int, *parts: str) -> bytes:
    """A seeded hash to order by (the digest orders as its hex would, in half the memory)."""
    return hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()


@dataclass
class SplitResult(Generic[M]):
    train: list[M]
    test: list[M]
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, list[M]] = field(default_factory=dict)  # group key -> its examples, first seen first
    sides: dict[str, str] = field(default_factory=dict)  # group key -> its side

    @property
    def assignment(self) -> Iterator[dict[str, str]]:
        """``{id, group, split}`` per example, group by group (made as read: a million of them are
        not held at once)."""
        for key, members in self.groups.items():
            for ex in members:
                yield {"id": ex.id, "group": key, "split": self.sides[key]}


def split(examples: list[Example], config: SplitConfig) -> tuple[list[Example], list[Example]]:
    """(train, test), each in its seeded order, with no earlier assignment to respect."""
    result = assign(examples, config)
    return result.train, result.test


def assign(examples: list[M], config: SplitConfig, previous: Mapping[str, str] | None = None,
           key: Callable[[M], str] | None = None) -> SplitResult[M]:
    """Split ``examples``; ``previous`` maps example ids (and group keys) to the side an earlier
    build gave them, which they keep. ``key``: each example's group key (default: ``group_key`` of
    the example by ``config.group``; a build passes the one it computed before spilling it)."""
    previous = previous or {}
    group_of = key or (lambda ex: group_key(ex, config.group))  # type: ignore[arg-type]
    groups: dict[str, list[M]] = {}
    for ex in examples:
        groups.setdefault(group_of(ex), []).append(ex)
    sizes: dict[str, int] = {}
    for ex in examples:
        sizes[ex.category] = sizes.get(ex.category, 0) + 1
    quota = holdout_sizes(sizes, config.test)
    side: dict[str, str] = {}
    taken: dict[str, int] = {}
    fresh: dict[str, list[tuple[bytes, str]]] = {}  # category -> (rank, group key) of unassigned groups
    mixed = 0
    for group, members in groups.items():
        before = {previous.get(e.id) for e in members} | {previous.get(group)}
        category = members[0].category
        if TEST in before:
            mixed += sum(1 for e in members if previous.get(e.id) == TRAIN)
            side[group] = TEST
            taken[category] = taken.get(category, 0) + len(members)
        elif TRAIN in before:
            side[group] = TRAIN
        else:
            fresh.setdefault(category, []).append((_rank(config.seed, group), group))
    for category, ranked in fresh.items():
        room = quota.get(category, 0) - taken.get(category, 0)
        for _, group in sorted(ranked):
            size = len(groups[group])
            if size <= room and size < sizes[category]:
                side[group], room = TEST, room - size
            else:
                side[group] = TRAIN
    del fresh
    result: SplitResult[M] = SplitResult([], [], groups=groups, sides=side)
    for group, members in groups.items():
        for ex in members:
            (result.test if side[group] == TEST else result.train).append(ex)
    for rows in (result.train, result.test):
        rows.sort(key=lambda e: _rank(config.seed, "order", e.id))
    kept = sum(taken.values())
    if kept > sum(quota.values()):
        result.warnings.append(f"{kept} examples were in test in an earlier build of this directory and stay "
                               f"there (a test example never moves to train), more than the {sum(quota.values())} "
                               "split.test asks for; build into a new directory for a fresh split")
    if mixed:
        result.warnings.append(f"{mixed} examples that were in train in an earlier build share a group with an "
                               f"earlier test example (split.group: {config.group}) and moved to test")
    return result


def holdout_sizes(sizes: dict[str, int], test: float | int) -> dict[str, int]:
    """How many of each category go to test, given a fraction or a total count.

    The total is ``round(fraction * N)`` or the count, clamped so that each category of two or
    more has at least one example in each split; it is then shared out in proportion to category
    size (largest remainder) within those bounds.
    """
    eligible = {name: n for name, n in sorted(sizes.items()) if n >= 2}
    if not eligible or test == 0:
        return {}
    n_all = sum(sizes.values())
    wanted = test if isinstance(test, int) else math.floor(test * n_all + 0.5)
    total = min(max(wanted, len(eligible)), sum(n - 1 for n in eligible.values()))
    return _apportion(total, eligible, lower=1, upper={name: n - 1 for name, n in eligible.items()})


def _apportion(total: int, sizes: dict[str, int], lower: int, upper: dict[str, int]) -> dict[str, int]:
    """Share ``total`` seats in proportion to ``sizes`` with per-name bounds (feasible ones).

    Start from the floor of each ideal share clamped to the bounds, then move single seats where
    the gap to the ideal share is largest. Gaps are compared as exact integers (ideal * N), so the
    result does not depend on floating point.
    """
    n = sum(sizes.values())
    names = list(sizes)
    alloc = {k: min(max(total * sizes[k] // n, lower), upper[k]) for k in names}
    diff = total - sum(alloc.values())
    step = 1 if diff > 0 else -1
    # Heap of (-gap, position): adding seats goes to the largest deficit, removing to the largest
    # surplus; the position (sorted name order) breaks ties.
    def gap(k: str) -> int:
        return step * (total * sizes[k] - alloc[k] * n)

    heap = [(-gap(k), i, k) for i, k in enumerate(names)]
    heapq.heapify(heap)
    while diff:
        _, i, k = heapq.heappop(heap)
        if lower <= alloc[k] + step <= upper[k]:
            alloc[k] += step
            diff -= step
            heapq.heappush(heap, (-gap(k), i, k))
    return alloc
