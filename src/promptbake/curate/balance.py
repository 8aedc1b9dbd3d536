"""Per-category balancing: cap, minimum, or equal sizes, never losing a category silently.

Which examples survive a down-sample is a seeded choice made per category (``Random`` seeded with
the seed *and* the category name), so adding or removing one category does not reshuffle the
choices in the others, and the same seed picks the same examples on every platform. Survivors keep
their input order; shuffling is the split's job.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic

from promptbake.records import M
from promptbake.specification.models import BalanceConfig


@dataclass
class BalanceResult(Generic[M]):
    kept: list[M]
    before: dict[str, int]  # per category, in first-seen order (expected-but-empty ones first)
    after: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def balance(
    examples: list[M], config: BalanceConfig, seed: int, expected: Iterable[str] = ()
) -> BalanceResult[M]:
    """Apply ``config.mode`` per category.

    ``expected`` names categories the spec defines: one with no examples at all gets a warning
    instead of disappearing without a word.
    """
    before: dict[str, int] = dict.fromkeys(expected, 0)
    before.update(Counter(ex.category for ex in examples))
    present = {name: n for name, n in before.items() if n}
    target: int | None = None
    if config.mode == "min" and config.n is not None:  # BalanceConfig requires n for 'min'
        warnings = [
            f"category {name!r} has {n} examples, {config.n - n} short of min {config.n}"
            for name, n in before.items()
            if n < config.n
        ]
    else:
        warnings = [f"category {name!r} has no examples" for name, n in before.items() if not n]
    if config.mode == "cap":
        target = config.n
    elif config.mode == "equal" and present:
        smallest = min(present, key=present.__getitem__)
        target = present[smallest] if config.n is None else min(present[smallest], config.n)
        if any(n > target for n in present.values()):
            warnings.append(
                f"balance 'equal': every category down-sampled to {target} "
                f"(smallest: {smallest!r} with {present[smallest]})"
            )

    kept = examples if target is None else _downsample(examples, present, target, seed)
    after = dict.fromkeys(before, 0)
    after.update(Counter(ex.category for ex in kept))
    return BalanceResult(list(kept), before, after, warnings)


def _downsample(examples: list[M], sizes: dict[str, int], n: int, seed: int) -> list[M]:
    """At most ``n`` per category (n >= 1, so no category vanishes), survivors in input order."""
    positions: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        positions.setdefault(ex.category, []).append(i)
    keep: set[int] = set()
    for name, where in positions.items():
        if sizes[name] <= n:
            keep.update(where)
        else:
            keep.update(random.Random(f"{seed}:{name}").sample(where, n))
    return [ex for i, ex in enumerate(examples) if i in keep]
