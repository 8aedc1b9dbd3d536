"""Split: seeded shuffle, stratification by category, fraction vs count, determinism."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise

import pytest
from helpers import same_output_under_hash_seeds

from promptbake.curate.split import assign, holdout_sizes, split
from promptbake.records import Example
from promptbake.specification.models import SplitConfig


def make(sizes: dict[str, int]) -> list[Example]:
    return [
        Example(id=f"{c}-{i}", category=c, messages=[])
        for c, n in sizes.items()
        for i in range(n)
    ]


# Ten "situations" like the rude-agent generator, deliberately uneven, plus edge sizes.
SIZES = {f"s{i}": 100 + 7 * i for i in range(10)} | {"pair": 2, "lonely": 1, "trio": 3}


def ids(examples: list[Example]) -> list[str]:
    return [e.id for e in examples]


def test_every_category_with_two_or_more_is_in_both_splits():
    train, test = split(make(SIZES), SplitConfig(test=0.1, seed=0))
    in_train, in_test = Counter(e.category for e in train), Counter(e.category for e in test)
    for name, n in SIZES.items():
        if n >= 2:
            assert in_train[name] >= 1 and in_test[name] >= 1, name
    assert in_test["lonely"] == 0 and in_train["lonely"] == 1


def test_partition_no_example_in_both_none_lost():
    data = make(SIZES)
    train, test = split(data, SplitConfig(test=0.2, seed=5))
    assert not set(ids(train)) & set(ids(test))
    assert sorted(ids(train) + ids(test)) == sorted(ids(data))


def test_fraction_gives_total_and_proportions():
    data = make(SIZES)
    n = len(data)
    _, test = split(data, SplitConfig(test=0.1, seed=0))
    assert len(test) == round(0.1 * n)
    in_test = Counter(e.category for e in test)
    for name, size in SIZES.items():
        if size >= 10:
            assert abs(in_test[name] - 0.1 * size) <= 1, (name, in_test[name])


def test_int_is_a_total_count_distributed_by_largest_remainder():
    assert holdout_sizes({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    # 7 seats over 3 equal categories: 2 each, the remainder goes to the first by name.
    assert holdout_sizes({"b": 10, "a": 10, "c": 10}, 7) == {"a": 3, "b": 2, "c": 2}
    _, test = split(make({"a": 50, "b": 30, "c": 20}), SplitConfig(test=10, seed=1))
    assert Counter(e.category for e in test) == {"a": 5, "b": 3, "c": 2}


def test_int_and_float_differ_in_meaning():
    data = make({"a": 40, "b": 60})
    assert len(split(data, SplitConfig(test=1, seed=0))[1]) == 2  # at least one per category
    assert len(split(data, SplitConfig(test=0.5, seed=0))[1]) == 50
    assert len(split(data, SplitConfig(test=30, seed=0))[1]) == 30


def test_bounds_win_over_the_requested_size():
    # Small categories still get one test example each, out of the same total (5 of 504).
    assert holdout_sizes({"a": 2, "b": 2, "c": 500}, 0.01) == {"a": 1, "b": 1, "c": 3}
    # Too few in total: raised to one per category.
    assert holdout_sizes({"a": 2, "b": 2, "c": 50}, 1) == {"a": 1, "b": 1, "c": 1}
    # Too many: each keeps at least one in train.
    assert holdout_sizes({"a": 2, "b": 5}, 100) == {"a": 1, "b": 4}
    assert holdout_sizes({"a": 3, "b": 3}, 0.99) == {"a": 2, "b": 2}


def test_zero_test_means_no_test_set():
    data = make(SIZES)
    for zero in (0, 0.0):
        train, test = split(data, SplitConfig(test=zero, seed=0))
        assert test == [] and len(train) == len(data)


def test_same_seed_same_output_other_seed_other_order():
    data = make(SIZES)
    a = split(data, SplitConfig(test=0.1, seed=42))
    b = split(list(data), SplitConfig(test=0.1, seed=42))
    assert (ids(a[0]), ids(a[1])) == (ids(b[0]), ids(b[1]))
    c = split(data, SplitConfig(test=0.1, seed=43))
    assert ids(c[0]) != ids(a[0])


def test_output_is_in_shuffled_order_not_grouped():
    train, _ = split(make(SIZES), SplitConfig(test=0.1, seed=0))
    # Input is grouped by category; a shuffled train list changes category often.
    changes = sum(a.category != b.category for a, b in pairwise(train))
    assert changes > len(SIZES) * 5
    assert ids(train) != sorted(ids(train))


def test_identical_across_processes_and_hash_seeds():
    script = (
        "import json\nfrom promptbake.records import Example\nfrom promptbake.specification.models import SplitConfig\n"
        "from promptbake.curate.split import split\n"
        f"sizes = {SIZES!r}\n"
        "data = [Example(id=f'{c}-{i}', category=c, messages=[]) for c, n in sizes.items() for i in range(n)]\n"
        "train, test = split(data, SplitConfig(test=0.1, seed=7))\n"
        "print(json.dumps([[e.id for e in train], [e.id for e in test]]))\n"
    )
    output = same_output_under_hash_seeds(script)
    train, test = split(make(SIZES), SplitConfig(test=0.1, seed=7))
    assert json.loads(output) == [ids(train), ids(test)]


@pytest.mark.parametrize("test_size", [0.1, 0.3, 5, 17])
def test_holdout_sizes_always_within_bounds(test_size):
    sizes = {"a": 2, "b": 3, "c": 9, "d": 1, "e": 41}
    quota = holdout_sizes(sizes, test_size)
    assert "d" not in quota
    assert all(1 <= quota[k] <= sizes[k] - 1 for k in quota)


def sides(train: list[Example], test: list[Example]) -> dict[str, str]:
    return {**{e.id: "train" for e in train}, **{e.id: "test" for e in test}}


def test_adding_or_removing_examples_moves_almost_nobody():
    data = make(SIZES)
    config = SplitConfig(test=0.1, seed=3)
    before = sides(*split(data, config))
    for changed in (data + make({"s3": 1, "pair": 1}), data[5:]):  # two added / five removed
        after = sides(*split(changed, config))
        moved = [i for i in after if i in before and after[i] != before[i]]
        assert len(moved) <= 4, moved  # only quota boundaries of the touched categories may shift


def test_an_earlier_assignment_is_kept_and_test_never_goes_to_train():
    config = SplitConfig(test=0.1, seed=3)
    first = assign(make(SIZES), config)
    previous = {a["id"]: a["split"] for a in first.assignment}
    grown = make({name: n + 40 for name, n in SIZES.items()})
    second = assign(grown, config, previous)
    now = sides(second.train, second.test)
    assert all(now[i] == side for i, side in previous.items())  # nobody changed sides
    assert len(second.test) >= round(0.1 * len(grown)) - 1  # the new examples fill the grown quota
    assert not second.warnings
    third = assign(grown, SplitConfig(test=0, seed=3), previous)
    assert len(third.test) == len(first.test)  # no test set asked for, yet test stays test
    assert "132 examples were in test in an earlier build" in third.warnings[0]


def grouped(n_groups: int, size: int) -> list[Example]:
    return [
        Example(id=f"g{g}-{k}", category=f"c{g % 3}", messages=[
            {"role": "user", "content": f"Prompt number {g}"}, {"role": "assistant", "content": f"reply {k}"}])
        for g in range(n_groups) for k in range(size)
    ]


def test_examples_sharing_a_prompt_go_to_the_same_side():
    train, test = split(grouped(60, 3), SplitConfig(test=0.2, seed=1))
    side = sides(train, test)
    for g in range(60):
        assert len({side[f"g{g}-{k}"] for k in range(3)}) == 1, g
    assert 30 <= len(test) <= 42 and {e.category for e in test} == {"c0", "c1", "c2"}


def test_group_key_lineage_and_none():
    data = [e.model_copy(update={"provenance": {"lineage": e.id.split("-")[0][1:] + "x"},
                                 "messages": [{"role": "user", "content": e.id},
                                              {"role": "assistant", "content": "r"}]})
            for e in grouped(60, 3)]
    train, test = split(data, SplitConfig(test=0.2, seed=1, group="lineage"))
    side = sides(train, test)
    assert all(len({side[f"g{g}-{k}"] for k in range(3)}) == 1 for g in range(60))
    train, test = split(grouped(60, 3), SplitConfig(test=0.2, seed=1, group="none"))
    side = sides(train, test)
    assert any(len({side[f"g{g}-{k}"] for k in range(3)}) == 2 for g in range(60))
