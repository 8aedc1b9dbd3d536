"""Seeded shuffle and stratified train/test split.

Deterministic by construction: ``random.Random(seed).shuffle`` is the same on every platform, test
sizes are apportioned with exact integer arithmetic (largest remainder, ties by category name), and
nothing depends on hash order. Same input order + same seed => identical splits.

Stratified so that every category with at least two examples is in both splits (a category missing
from test cannot be evaluated, one missing from train cannot be learned); a lone example goes to
train. Those two rules can push the test size off the requested figure for tiny categories.
"""

from __future__ import annotations

import heapq
import math
import random

from promptbake.records import Example
from promptbake.spec.models import SplitConfig


def split(examples: list[Example], config: SplitConfig) -> tuple[list[Example], list[Example]]:
    """(train, test), both in the shuffled order."""
    shuffled = list(examples)
    random.Random(config.seed).shuffle(shuffled)
    sizes: dict[str, int] = {}
    for ex in shuffled:
        sizes[ex.category] = sizes.get(ex.category, 0) + 1
    quota = holdout_sizes(sizes, config.test)
    taken: dict[str, int] = {}
    train: list[Example] = []
    test: list[Example] = []
    for ex in shuffled:
        seen = taken.get(ex.category, 0)
        taken[ex.category] = seen + 1
        (test if seen < quota.get(ex.category, 0) else train).append(ex)
    return train, test


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
