"""Dedupe benchmark: time, peak memory and precision/recall on synthetic data with planted duplicates.

    python bench/dedupe.py                      # 100,000 examples (target: under 30 s)
    python bench/dedupe.py --sizes 100000 1000000

The corpus imitates generated dialogues: a per-category prompt boilerplate (so unrelated examples
share words and shingles, as real template-rendered prompts do), Zipf-distributed words, sentences
with capitals and punctuation. Planted exact duplicates differ only in case, whitespace and
punctuation; planted near duplicates are copies with one to a few word edits whose true word-shingle
Jaccard with their source is at least ``NEAR_MIN`` (so the truth is unambiguous at the default
threshold 0.85). ``make_corpus`` is also what the tests use.
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import sys
import time
from dataclasses import dataclass

from promptbake.build.dedupe import dedupe, normalise
from promptbake.records import Example
from promptbake.spec.models import DedupeConfig

NEAR_MIN = 0.9
CATEGORIES = 10
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


@dataclass(frozen=True)
class Truth:
    kind: str  # "distinct" | "exact" | "near"
    source: str | None = None  # the example a planted duplicate copies
    jaccard: float = 0.0  # true shingle Jaccard with the source (near only)


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))))
    return sorted(words)


def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    return {tuple(words[i : i + k]) for i in range(max(len(words) - k + 1, 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


class _Writer:
    """Zipf-distributed sentences over a synthetic vocabulary."""

    def __init__(self, rng: random.Random, vocab_size: int = 30_000) -> None:
        self.rng = rng
        self.vocab = _vocabulary(rng, vocab_size)
        self.cum = list(itertools.accumulate(1 / (r + 1) for r in range(vocab_size)))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def text(self, lo: int, hi: int) -> str:
        words = self.words(self.rng.randint(lo, hi))
        out, i = [], 0
        while i < len(words):
            n = self.rng.randint(5, 14)
            sentence = words[i : i + n]
            out.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + self.rng.choice(".!?"))
            i += n
        return " ".join(out)


def _exact_variant(rng: random.Random, text: str) -> str:
    """Same words, different surface: case, spacing, punctuation."""
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < 0.2:
            w = w.upper()
        elif r < 0.4:
            w = w.lower() + rng.choice([",", ";", "  ", " -", "…"])
        out.append(w)
    return "  ".join(out) if rng.random() < 0.5 else "\n".join(out)


def _near_variant(rng: random.Random, writer: _Writer, text: str) -> str:
    """A copy with word edits, as many as keep it at least NEAR_MIN similar (at least one)."""
    words = text.split(" ")
    edits = rng.randint(1, 3)
    while True:
        edited = list(words)
        for _ in range(edits):
            op, at = rng.random(), rng.randrange(len(edited))
            if op < 0.5:
                edited[at] = writer.words(1)[0]
            elif op < 0.75 and len(edited) > 1:
                del edited[at]
            else:
                edited.insert(at, writer.words(1)[0])
        candidate = " ".join(edited)
        if normalise(candidate) != normalise(text) and jaccard(text, candidate) >= NEAR_MIN:
            return candidate
        edits = max(1, edits - 1)


@dataclass
class _Row:
    order: tuple[float, int]  # a copy sorts somewhere after its source
    category: str
    user: str
    assistant: str
    kind: str = "distinct"
    source: int = -1  # index of the copied distinct row
    jaccard: float = 0.0


def make_corpus(
    n_distinct: int, n_near: int = 0, n_exact: int = 0, seed: int = 0
) -> tuple[list[Example], dict[str, Truth]]:
    """``n_distinct`` unrelated examples plus planted near and exact duplicates, each placed
    somewhere after the distinct example it copies. Returns the examples and the truth per id."""
    rng = random.Random(seed)
    writer = _Writer(rng)
    boilerplate = [writer.text(10, 14) for _ in range(CATEGORIES)]
    rows: list[_Row] = []
    for i in range(n_distinct):
        c = rng.randrange(CATEGORIES)
        rows.append(_Row((i, 0), f"cat{c}", boilerplate[c] + " " + writer.text(5, 25), writer.text(30, 90)))
    for kind, count in (("near", n_near), ("exact", n_exact)):
        for _ in range(count):
            s = rng.randrange(n_distinct)
            src = rows[s]
            order = (s + rng.random() * (n_distinct - s), 1)
            if kind == "near":
                # Edit the dialogue as one text so the planted similarity is what dedupe sees.
                whole = src.user + " " + src.assistant
                edited = _near_variant(rng, writer, whole)
                parts, cut = edited.split(" "), len(src.user.split(" "))
                user, assistant = " ".join(parts[:cut]), " ".join(parts[cut:])
                rows.append(_Row(order, src.category, user, assistant, kind, s, jaccard(whole, edited)))
            else:
                user, assistant = _exact_variant(rng, src.user), _exact_variant(rng, src.assistant)
                rows.append(_Row(order, src.category, user, assistant, kind, s, 1.0))
    ordered = sorted(range(len(rows)), key=lambda i: rows[i].order)
    ids = {i: f"ex{k:07d}" for k, i in enumerate(ordered)}
    examples: list[Example] = []
    truth: dict[str, Truth] = {}
    for i in ordered:
        row = rows[i]
        messages = [
            {"role": "system", "content": "You are a synthetic teacher."},
            {"role": "user", "content": row.user},
            {"role": "assistant", "content": row.assistant},
        ]
        examples.append(Example(id=ids[i], category=row.category, messages=messages))
        source = ids[row.source] if row.kind != "distinct" else None
        truth[ids[i]] = Truth(row.kind, source, row.jaccard)
    return examples, truth


@dataclass
class Score:
    precision: float
    recall: float
    planted: int
    found: int


def score(dropped: dict[str, str], truth: dict[str, Truth], kind: str) -> Score:
    """Precision/recall of the drops with ``reason == kind`` against the planted ``kind`` dups."""
    planted = {i for i, t in truth.items() if t.kind == kind}
    found = {i for i, reason in dropped.items() if reason == kind}
    hit = len(planted & found)
    return Score(hit / len(found) if found else 1.0, hit / len(planted) if planted else 1.0,
                 len(planted), len(found))


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(n: int, config: DedupeConfig) -> None:
    t0 = time.perf_counter()
    examples, truth = make_corpus(n - n // 10 - n // 20, n // 10, n // 20)
    gen = time.perf_counter() - t0
    rss0 = _peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    result = dedupe(examples, config)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    dropped = {d.id: d.reason for d in result.dropped}
    near, exact = score(dropped, truth, "near"), score(dropped, truth, "exact")
    print(f"n={n:,}  (corpus generated in {gen:.1f} s, peak RSS before dedupe {rss0:,.0f} MiB)")
    print(f"  dedupe: {elapsed:.2f} s wall ({cpu:.2f} s CPU; the machine is shared), "
          f"{n / elapsed:,.0f} examples/s, peak RSS {_peak_rss_mib():,.0f} MiB")
    print(f"  kept {len(result.kept):,}, dropped {len(result.dropped):,}")
    for name, s in (("exact", exact), ("near", near)):
        print(f"  {name:5}: planted {s.planted:,}, dropped {s.found:,}, "
              f"precision {s.precision:.4f}, recall {s.recall:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()
    config = DedupeConfig(threshold=args.threshold, num_perm=args.num_perm)
    print(f"config: {config.model_dump()}")
    for n in args.sizes:
        run(n, config)
    if args.sizes == [100_000]:
        print("1,000,000 examples (a few minutes, several GiB): python bench/dedupe.py --sizes 1000000")


if __name__ == "__main__":
    main()
