"""Nested, stratified train subsets for a learning curve: ``train.50.jsonl`` ⊂ ``train.100.jsonl`` ⊂ ….

Training on 50, 100, 500 and 1,000 examples answers "how much data do I need?" only if the small
sets are part of the large ones (otherwise the curve mixes the effect of size with the effect of
*which* examples) and keep the category balance of the full split (otherwise it measures balance).

Both hold by construction: the train split is put into one priority order, and a subset of size N
is its first N examples. The order hands out places one at a time to the category furthest below
its share (largest deficit t·nᶜ/n − aᶜ, ties to the first name), which keeps every prefix within
one example of proportional for every category (the chairman-assignment bound; a divisor method
such as Sainte-Laguë measured up to 1.2 off with a dozen categories). Within a category, examples
keep their train order, which the split has already shuffled with the seed; subsets are written in
train order, so each subset's lines are a subsequence of the next one's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from promptbake.records import M


def priority_order(train: list[M], limit: int | None = None) -> list[int]:
    """Indices into ``train`` (the first ``limit`` of them): any prefix of this order is a
    stratified sample of its length."""
    names = sorted({ex.category for ex in train})
    members: dict[str, list[int]] = {name: [] for name in names}
    for i, ex in enumerate(train):
        members[ex.category].append(i)
    sizes = np.array([len(members[name]) for name in names], dtype=np.int64)
    taken = np.zeros(len(names), dtype=np.int64)
    total = int(sizes.sum())
    exhausted = np.iinfo(np.int64).min
    order = []
    for t in range(1, (total if limit is None else min(total, limit)) + 1):
        deficit = np.where(taken < sizes, t * sizes - taken * total, exhausted)
        c = int(deficit.argmax())  # the first maximum: ties go to the first name
        order.append(members[names[c]][taken[c]])
        taken[c] += 1
    return order


def nested_subsets(train: list[M], sizes: Iterable[int]) -> tuple[dict[int, list[M]], list[str]]:
    """``{N: the first N examples of the priority order, in train order}`` for each size smaller
    than or equal to the train split, and a warning for each size it cannot fill."""
    wanted = sorted(set(sizes))
    order = priority_order(train, max(wanted, default=0))
    subsets: dict[int, list[M]] = {}
    warnings = []
    for n in wanted:
        if n > len(train):
            warnings.append(f"--sizes {n}: the train split has only {len(train)} examples; train.{n}.jsonl not written")
            continue
        chosen = sorted(order[:n])
        subsets[n] = [train[i] for i in chosen]
    return subsets, warnings
