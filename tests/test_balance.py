"""Balance: cap / min / equal / none, seeded choices, warnings, and no category lost in silence."""

from __future__ import annotations

import pytest

from promptbake.curate.balance import balance
from promptbake.records import Example
from promptbake.specification.models import BalanceConfig


def make(sizes: dict[str, int]) -> list[Example]:
    """Categories interleaved, so 'input order' is not simply grouped by category."""
    out: list[Example] = []
    counters = dict.fromkeys(sizes, 0)
    while any(counters[c] < n for c, n in sizes.items()):
        for c, n in sizes.items():
            if counters[c] < n:
                out.append(Example(id=f"{c}-{counters[c]}", category=c, messages=[]))
                counters[c] += 1
    return out


SIZES = {"angry": 30, "calm": 12, "sad": 3}


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def is_subsequence(sub: list[str], full: list[str]) -> bool:
    it = iter(full)
    return all(x in it for x in sub)


def test_none_keeps_everything_in_order():
    data = make(SIZES)
    result = balance(data, BalanceConfig(), seed=1)
    assert ids(result.kept) == ids(data)
    assert result.before == result.after == SIZES
    assert result.warnings == []


def test_cap_limits_each_category_and_keeps_input_order():
    data = make(SIZES)
    result = balance(data, BalanceConfig(mode="cap", n=10), seed=1)
    assert result.after == {"angry": 10, "calm": 10, "sad": 3}
    assert result.before == SIZES
    assert is_subsequence(ids(result.kept), ids(data))
    # Which ones survive is a seeded choice, not simply the first ten.
    angry = [i for i in ids(result.kept) if i.startswith("angry")]
    assert angry != [f"angry-{k}" for k in range(10)]


def test_cap_is_deterministic_per_seed_and_varies_with_it():
    data = make(SIZES)
    config = BalanceConfig(mode="cap", n=5)
    first = ids(balance(data, config, seed=3).kept)
    assert ids(balance(list(data), config, seed=3).kept) == first
    assert ids(balance(data, config, seed=4).kept) != first


def test_cap_choice_in_one_category_ignores_the_others():
    data = make(SIZES)
    without_calm = [e for e in data if e.category != "calm"]
    config = BalanceConfig(mode="cap", n=5)
    pick = [i for i in ids(balance(data, config, seed=9).kept) if i.startswith("angry")]
    assert [i for i in ids(balance(without_calm, config, seed=9).kept) if i.startswith("angry")] == pick


def test_min_keeps_everything_and_says_how_many_are_missing():
    data = make(SIZES)
    result = balance(data, BalanceConfig(mode="min", n=10), seed=1)
    assert ids(result.kept) == ids(data)
    assert result.warnings == ["category 'sad' has 3 examples, 7 short of min 10"]


def test_equal_downsamples_to_the_smallest_and_names_it():
    data = make(SIZES)
    result = balance(data, BalanceConfig(mode="equal"), seed=1)
    assert result.after == {"angry": 3, "calm": 3, "sad": 3}
    assert is_subsequence(ids(result.kept), ids(data))
    assert len(result.warnings) == 1 and "'sad'" in result.warnings[0] and "3" in result.warnings[0]


def test_equal_with_n_caps_below_the_smallest():
    result = balance(make(SIZES), BalanceConfig(mode="equal", n=2), seed=1)
    assert result.after == {"angry": 2, "calm": 2, "sad": 2}


def test_equal_when_already_equal_says_nothing():
    result = balance(make({"a": 4, "b": 4}), BalanceConfig(mode="equal"), seed=1)
    assert result.after == {"a": 4, "b": 4} and result.warnings == []


@pytest.mark.parametrize(
    "config",
    [BalanceConfig(), BalanceConfig(mode="cap", n=1), BalanceConfig(mode="min", n=50), BalanceConfig(mode="equal")],
)
def test_no_category_ever_vanishes(config):
    data = make({"big": 40, "tiny": 1, "mid": 7})
    result = balance(data, config, seed=0)
    assert set(result.after) == {"big", "tiny", "mid"}
    assert all(n >= 1 for n in result.after.values())


def test_expected_category_without_examples_is_named_not_dropped_silently():
    data = make({"a": 5, "b": 5})
    result = balance(data, BalanceConfig(mode="min", n=3), seed=0, expected=["a", "b", "ghost"])
    assert result.before["ghost"] == 0 and result.after["ghost"] == 0
    assert result.warnings == ["category 'ghost' has 0 examples, 3 short of min 3"]
    equal = balance(data, BalanceConfig(mode="equal"), seed=0, expected=["ghost"])
    assert equal.after == {"ghost": 0, "a": 5, "b": 5}  # the empty one does not zero the others
    assert equal.warnings == ["category 'ghost' has no examples"]


def test_empty_input():
    result = balance([], BalanceConfig(mode="equal"), seed=0)
    assert result.kept == [] and result.warnings == []
