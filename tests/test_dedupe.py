"""Dedupe: exact normalisation, near-duplicate recall/precision on planted copies, top-up mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash
from helpers import same_output_under_hash_seeds

from promptbake.curate.dedupe import Deduper, _Signer, dedupe
from promptbake.curate.normalise import normalise
from promptbake.errors import SpecError
from promptbake.records import Example
from promptbake.specification.models import DedupeConfig

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dedupe.py"


def _bench():
    """The benchmark's corpus generator (one generator for tests and bench, not two)."""
    if "bench_dedupe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_dedupe", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_dedupe"] = module  # dataclasses look their module up while building
        spec.loader.exec_module(module)
    return sys.modules["bench_dedupe"]


def ex(id: str, user: str, assistant: str = "", category: str = "c", system: str = "") -> Example:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Example(id=id, category=category, messages=messages)


@pytest.fixture(scope="module")
def planted():
    return _bench().make_corpus(500, n_near=100, n_exact=0, seed=7)


def test_planted_near_duplicates_are_found_with_high_recall_and_precision(planted):
    examples, truth = planted
    assert min(t.jaccard for t in truth.values() if t.kind == "near") >= 0.9  # unambiguous truth
    result = dedupe(examples, DedupeConfig())
    planted_near = {i for i, t in truth.items() if t.kind == "near"}
    found = {d.id for d in result.dropped if d.reason == "near"}
    hits = planted_near & found
    assert len(planted_near) == 100
    assert len(hits) / len(planted_near) >= 0.95, "recall"
    assert len(hits) / len(found) >= 0.95, "precision"
    # ... and each is attributed to the example it was copied from, with a plausible estimate.
    for d in result.dropped:
        if d.id in hits:
            assert d.duplicate_of == truth[d.id].source
            assert 0.85 <= d.similarity <= 1.0
    assert not [d for d in result.dropped if d.reason == "exact"]


def test_distinct_examples_sharing_category_boilerplate_are_all_kept(planted):
    examples, truth = planted
    result = dedupe(examples, DedupeConfig())
    kept = {e.id for e in result.kept}
    distinct = {i for i, t in truth.items() if t.kind == "distinct"}
    assert distinct <= kept


def test_kept_preserves_input_order_and_first_occurrence_wins():
    a = ex("a", "Tell me a joke about cats", "Why did the cat sit on the computer? To keep an eye on the mouse.")
    b = ex("b", "Something else entirely", "A different answer with other words in it.")
    a2 = ex("a2", "tell me a joke about cats!", "why did the cat sit on the computer to keep an eye on the mouse")
    result = dedupe([a, b, a2], DedupeConfig())
    assert [e.id for e in result.kept] == ["a", "b"]
    (d,) = result.dropped
    assert (d.id, d.reason, d.duplicate_of, d.similarity) == ("a2", "exact", "a", 1.0)


@pytest.mark.parametrize(
    "left, right",
    [
        ("Hello, World!", "hello world"),
        ("hello   world\n\tagain", "Hello world again"),
        ("“Don’t” stop — now…", "dont stop now"),
        ("ＨＥＬＬＯ ｗｏｒｌｄ", "hello world"),  # full-width forms (NFKC)
        ("Straße", "STRASSE"),  # casefold, not lower
        ("snake_case_word", "snakecaseword"),
    ],
)
def test_exact_duplicates_after_normalisation(left, right):
    assert normalise(left) == normalise(right)
    result = dedupe([ex("1", left), ex("2", right)], DedupeConfig(near=False))
    assert [d.reason for d in result.dropped] == ["exact"]


@pytest.mark.parametrize(
    "left, right",
    [
        ("order 1 shipped", "order 2 shipped"),
        ("dog bites man", "man bites dog"),
        ("hi", "hi there"),
        ("great 👍", "great 👎"),  # symbols carry meaning
        ("किताब", "कताब"),  # a vowel sign (combining mark) is part of the word
    ],
)
def test_different_words_are_not_exact_duplicates(left, right):
    assert normalise(left) != normalise(right)
    result = dedupe([ex("1", left), ex("2", right)], DedupeConfig())
    assert result.dropped == []


def test_fields_choose_which_roles_are_compared():
    a = ex("a", "Same question here", "First answer, quite different.")
    b = ex("b", "same question here!", "Second reply with nothing in common.")
    assert dedupe([a, b], DedupeConfig()).dropped == []
    assert [d.id for d in dedupe([a, b], DedupeConfig(fields=["user"])).dropped] == ["b"]
    s1 = ex("s1", "q", "a", system="You are rude.")
    s2 = ex("s2", "q", "a", system="You are polite.")
    assert [d.id for d in dedupe([s1, s2], DedupeConfig()).dropped] == ["s2"]
    assert dedupe([s1, s2], DedupeConfig(fields=["system", "user", "assistant"])).dropped == []


def test_field_boundaries_matter_for_exact_duplicates():
    a = ex("a", "one two", "three")
    b = ex("b", "one", "two three")
    assert dedupe([a, b], DedupeConfig(near=False)).dropped == []


def test_texts_shorter_than_the_shingle_are_still_compared():
    config = DedupeConfig(fields=["user"], shingle=5)
    short = [ex("1", "refund please"), ex("2", "Refund, please!"), ex("3", "refund now"), ex("4", "")]
    result = dedupe(short, config)
    assert [(d.id, d.duplicate_of) for d in result.dropped] == [("2", "1")]
    # Ten words, shingles of two: an appended word leaves 9 of 10 bigrams shared.
    text = "the customer wants a refund for the broken kettle today"
    near = [ex("a", text), ex("b", text + " please")]
    config = DedupeConfig(fields=["user"], threshold=0.8, shingle=2)
    assert [d.reason for d in dedupe(near, config).dropped] == ["near"]


def test_near_off_keeps_near_duplicates(planted):
    examples, _ = planted
    result = dedupe(examples, DedupeConfig(near=False))
    assert result.dropped == []


def test_disabled_keeps_everything_and_counts_it():
    items = [ex("1", "x"), ex("2", "x", category="d")]
    result = dedupe(items, DedupeConfig(enabled=False))
    assert result.kept == items and result.dropped == []
    assert {k: v.as_dict() for k, v in result.counts.items()} == {
        "c": {"before": 1, "exact": 0, "near": 0, "after": 1},
        "d": {"before": 1, "exact": 0, "near": 0, "after": 1},
    }


def test_counts_per_category(planted):
    examples, _ = planted
    extra = [e.model_copy(update={"id": e.id + "-copy"}) for e in examples[:20]]
    result = dedupe(examples + extra, DedupeConfig())
    for name, counts in result.counts.items():
        assert counts.before == sum(e.category == name for e in examples + extra)
        assert counts.exact == sum(d.category == name and d.reason == "exact" for d in result.dropped)
        assert counts.near == sum(d.category == name and d.reason == "near" for d in result.dropped)
        assert counts.after == sum(e.category == name for e in result.kept)
    assert sum(c.exact for c in result.counts.values()) == 20


def test_dedupe_against_existing_never_drops_or_returns_existing(planted):
    examples, truth = planted
    existing = [e for e in examples if truth[e.id].kind == "distinct"]
    copies = [e for e in examples if truth[e.id].kind == "near"]
    exact = [e.model_copy(update={"id": "exact-" + e.id}) for e in existing[:5]]
    fresh = _bench().make_corpus(30, seed=99)[0]
    fresh = [e.model_copy(update={"id": "fresh-" + e.id}) for e in fresh]
    new = copies + exact + fresh
    result = dedupe(new, DedupeConfig(), existing=existing + existing[:3])  # dupes inside existing are fine
    assert {e.id for e in result.kept} >= {e.id for e in fresh}
    assert not {e.id for e in result.kept} & {e.id for e in existing}
    dropped = {d.id: d for d in result.dropped}
    assert all(dropped[e.id].duplicate_of == e.id.removeprefix("exact-") for e in exact)
    found = sum(e.id in dropped for e in copies)
    assert found / len(copies) >= 0.95
    assert sum(c.before for c in result.counts.values()) == len(new)


def test_deduper_streams_one_at_a_time():
    deduper = Deduper(DedupeConfig())
    deduper.seed([ex("old", "What is the return policy for shoes", "Thirty days with a receipt.")])
    assert deduper.add(ex("n1", "Where is my parcel", "It left the depot this morning.")) is None
    repeat = deduper.add(ex("n2", "where is my parcel?", "It left the depot this morning"))
    assert repeat is not None and (repeat.reason, repeat.duplicate_of) == ("exact", "n1")
    old = deduper.add(ex("n3", "WHAT is the return policy for shoes", "thirty days, with a receipt!"))
    assert old is not None and old.duplicate_of == "old"


def test_unknown_role_in_fields_is_a_spec_error():
    with pytest.raises(SpecError, match=r"dedupe\.fields.*assistent"):
        Deduper(DedupeConfig(fields=["user", "assistent"]))


def test_signatures_equal_datasketch_minhash_of_the_same_shingles():
    signer = _Signer(num_perm=64, shingle=3)
    sentence = "the quick brown fox jumps over the lazy dog"
    docs = [["a", "b", "c", "d"], ["x"], ["p", "q"], sentence.split(" ")]
    signatures = signer.signatures(docs)
    hashes, counts = signer.shingle_hashes(docs)
    assert counts.tolist() == [4 - 2, 1, 1, 9 - 2] and len(hashes) == sum(counts)
    start = 0
    for doc_sig, count in zip(signatures, counts, strict=True):
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(hashes[start : start + count])
        start += count
        assert np.array_equal(reference.hashvalues, doc_sig)
    for doc, doc_sig in zip(docs, signatures, strict=True):  # a doc's batch neighbours do not matter
        assert np.array_equal(signer.signatures([doc])[0], doc_sig)


def test_decisions_are_identical_across_processes_and_hash_seeds(tmp_path):
    script = (
        "import json, sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(BENCH)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['b'] = m; spec.loader.exec_module(m)\n"
        "from promptbake.curate.dedupe import dedupe\nfrom promptbake.specification.models import DedupeConfig\n"
        "examples, _ = m.make_corpus(150, n_near=40, n_exact=10, seed=3)\n"
        "print(json.dumps([d.as_dict() for d in dedupe(examples, DedupeConfig()).dropped]))\n"
    )
    assert len(json.loads(same_output_under_hash_seeds(script))) >= 45


def test_disabled_dedupe_still_drops_what_repeats_the_existing_rows():
    existing = [ex("old", "Where is my refund for order 12?", "Go away.")]
    new = [ex("a", "where is my REFUND for order 12", "Go away"), ex("b", "Coupon please", "No."),
           ex("c", "Coupon please", "No.")]
    result = dedupe(new, DedupeConfig(enabled=False), existing=existing)
    assert [e.id for e in result.kept] == ["b", "c"]  # the new rows are not deduped among themselves
    assert [(d.id, d.duplicate_of, d.reason) for d in result.dropped] == [("a", "old", "exact")]
    assert result.counts["c"].as_dict() == {"before": 3, "exact": 1, "near": 0, "after": 2}


def test_thousands_of_variants_of_one_answer_all_point_at_the_first():
    # A teacher refusing over and over: one chunk full of near copies of one text.
    base = "I am sorry but I cannot help with that request today because it is against the policy"
    variants = [ex(f"r{i}", "q", f"{base} number {i % 7} ok") for i in range(3000)]
    result = dedupe(variants, DedupeConfig(fields=["assistant"], threshold=0.7))
    assert [e.id for e in result.kept] == ["r0"]
    assert {d.duplicate_of for d in result.dropped} == {"r0"}
    assert {d.reason for d in result.dropped} == {"exact", "near"}


def test_kept_signatures_wait_outside_the_process_heap():
    """A signature is 512 bytes (128 permutations) and read back only for a candidate: the index
    keeps them in a temporary file, so the memory it holds for an example is its band hashes and
    exact key, well under one signature (a million examples: 488 MiB less than before)."""
    import random
    import tracemalloc

    rng = random.Random(5)
    words = [f"w{i}" for i in range(40)]  # a small vocabulary: the signer's word cache stays small
    examples = [ex(str(i), " ".join(rng.choice(words) for _ in range(60))) for i in range(10_000)]
    deduper = Deduper(DedupeConfig())
    tracemalloc.start()
    try:
        kept = sum(1 for _, dropped in deduper.add_many(iter(examples)) if dropped is None)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept > 9_900
    assert held < kept * 512, f"{held / kept:.0f} bytes held a kept example"
    # the signatures read back still find a near duplicate: one word of 60 changed
    copy = examples[123].messages[0]["content"].split()
    copy[30] = "changed"
    (dropped,) = [d for _, d in deduper.add_many([ex("copy", " ".join(copy))])]
    assert dropped is not None and dropped.reason == "near" and dropped.duplicate_of == "123"
