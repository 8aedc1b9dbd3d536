"""Dedupe benchmark: time, peak memory and precision/recall on synthetic data with planted duplicates.

    python bench/dedupe.py                      # 100,000 examples, against the baseline
    python bench/dedupe.py --sizes 1000000      # also 1M (target: under 2 GiB peak RSS)

Every measurement runs in its own process, so each peak RSS is its own. The baseline is what
promptbake did before (one ``LeanMinHash`` per example in datasketch's ``MinHashLSH`` with its
default dict storage), run at ``--baseline-size`` next to the current ``Deduper`` on the same
corpus: the script prints the time and memory ratios and whether both kept exactly the same
examples. The corpus is generated as a stream (each example regenerated from its own seed), so peak
RSS is the deduper's, not the corpus's.

The corpus imitates generated dialogues: a per-category prompt boilerplate (so unrelated examples
share words and shingles, as real template-rendered prompts do), Zipf-distributed words, sentences
with capitals and punctuation. Planted exact duplicates differ only in case, whitespace and
punctuation; planted near duplicates are copies with one to a few word edits whose true word-shingle
Jaccard with their source is at least ``NEAR_MIN`` (so the truth is unambiguous at the default
threshold 0.85). ``make_corpus`` is also what the tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from promptbake.curate.dedupe import _LSH_WEIGHTS, _SCHEME, _SEED, Deduper, normalise
from promptbake.records import Example
from promptbake.specification.models import DedupeConfig

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
    """Zipf-distributed sentences over a synthetic vocabulary; the randomness is the caller's, so
    any example can be regenerated from its own seed."""

    def __init__(self, rng: random.Random, vocab_size: int = 30_000) -> None:
        self.vocab = _vocabulary(rng, vocab_size)
        self.cum = list(itertools.accumulate(1 / (r + 1) for r in range(vocab_size)))

    def words(self, rng: random.Random, n: int) -> list[str]:
        return rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def text(self, rng: random.Random, lo: int, hi: int) -> str:
        words = self.words(rng, rng.randint(lo, hi))
        out, i = [], 0
        while i < len(words):
            n = rng.randint(5, 14)
            sentence = words[i : i + n]
            out.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + rng.choice(".!?"))
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
                edited[at] = writer.words(rng, 1)[0]
            elif op < 0.75 and len(edited) > 1:
                del edited[at]
            else:
                edited.insert(at, writer.words(rng, 1)[0])
        candidate = " ".join(edited)
        if normalise(candidate) != normalise(text) and jaccard(text, candidate) >= NEAR_MIN:
            return candidate
        edits = max(1, edits - 1)


class _Corpus:
    """The plan of a corpus (which row copies which, in what order), with every text regenerated on
    demand from its own seed: a million-example corpus streams in a few MiB."""

    def __init__(self, n_distinct: int, n_near: int, n_exact: int, seed: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        self.writer = _Writer(rng)
        self.boilerplate = [self.writer.text(rng, 10, 14) for _ in range(CATEGORIES)]
        copies = n_near + n_exact
        self.n_distinct = n_distinct
        self.source = np.array([rng.randrange(n_distinct) for _ in range(copies)], dtype=np.int64)
        # a copy sorts somewhere after its source (and after a distinct row at the same place)
        place = np.array([s + rng.random() * (n_distinct - s) for s in self.source.tolist()])
        keys = np.concatenate([np.arange(n_distinct, dtype=np.float64), place])
        after = np.concatenate([np.zeros(n_distinct), np.ones(copies)])
        self.order = np.lexsort((after, keys))  # output position -> row
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(self.order))  # row -> output position
        self.n_near = n_near

    def distinct(self, i: int) -> tuple[str, str, str]:
        """(category, user, assistant) of distinct row ``i``."""
        rng = random.Random(f"{self.seed}/{i}")
        c = rng.randrange(CATEGORIES)
        return f"cat{c}", self.boilerplate[c] + " " + self.writer.text(rng, 5, 25), self.writer.text(rng, 30, 90)

    def __iter__(self) -> Iterator[tuple[Example, Truth]]:
        for row in self.order.tolist():
            if row < self.n_distinct:
                category, user, assistant = self.distinct(row)
                truth = Truth("distinct")
            else:
                copy = row - self.n_distinct
                source = int(self.source[copy])
                category, user, assistant = self.distinct(source)
                rng = random.Random(f"{self.seed}/copy/{copy}")
                source_id = f"ex{self.position[source]:07d}"
                if copy < self.n_near:
                    # Edit the dialogue as one text so the planted similarity is what dedupe sees.
                    whole = user + " " + assistant
                    edited = _near_variant(rng, self.writer, whole)
                    parts, cut = edited.split(" "), len(user.split(" "))
                    user, assistant = " ".join(parts[:cut]), " ".join(parts[cut:])
                    truth = Truth("near", source_id, jaccard(whole, edited))
                else:
                    user, assistant = _exact_variant(rng, user), _exact_variant(rng, assistant)
                    truth = Truth("exact", source_id, 1.0)
            messages = [
                {"role": "system", "content": "You are a synthetic teacher."},
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
            yield Example(id=f"ex{self.position[row]:07d}", category=category, messages=messages), truth


def iter_corpus(n_distinct: int, n_near: int = 0, n_exact: int = 0, seed: int = 0) -> Iterator[tuple[Example, Truth]]:
    """``n_distinct`` unrelated examples plus planted near and exact duplicates, each placed
    somewhere after the distinct example it copies, as a stream of (example, truth)."""
    return iter(_Corpus(n_distinct, n_near, n_exact, seed))


def make_corpus(
    n_distinct: int, n_near: int = 0, n_exact: int = 0, seed: int = 0
) -> tuple[list[Example], dict[str, Truth]]:
    """``iter_corpus`` held in memory: the examples and the truth per id."""
    examples: list[Example] = []
    truth: dict[str, Truth] = {}
    for example, t in iter_corpus(n_distinct, n_near, n_exact, seed):
        examples.append(example)
        truth[example.id] = t
    return examples, truth


@dataclass
class Score:
    precision: float
    recall: float
    planted: int
    found: int


def score(dropped: dict[str, str], planted: set[str], kind: str) -> Score:
    """Precision/recall of the drops with ``reason == kind`` against the planted ``kind`` dups."""
    found = {i for i, reason in dropped.items() if reason == kind}
    hit = len(planted & found)
    return Score(hit / len(found) if found else 1.0, hit / len(planted) if planted else 1.0,
                 len(planted), len(found))


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _baseline(examples: Iterable[Example], config: DedupeConfig) -> Iterator[tuple[Example, str | None]]:
    """What promptbake did before: the same signatures, each wrapped in a ``LeanMinHash`` and
    indexed in datasketch's ``MinHashLSH`` with its default (dict) storage, one example at a time."""
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=_LSH_WEIGHTS)
    exact: dict[bytes, str] = {}
    sketches: list[LeanMinHash] = []
    for item in Deduper(config)._prepare(examples):
        if item.key in exact:
            yield item.example, "exact"
            continue
        if item.sig is not None:
            sketch = LeanMinHash(seed=_SEED, hashvalues=item.sig, scheme=_SCHEME)
            scores = [sketch.jaccard(sketches[key]) for key in lsh.query(sketch)]
            if scores and max(scores) >= config.threshold:
                yield item.example, "near"
                continue
            lsh.insert(len(sketches), sketch, check_duplication=False)
            sketches.append(sketch)
        exact[item.key] = item.example.id
        yield item.example, None


def _current(examples: Iterable[Example], config: DedupeConfig) -> Iterator[tuple[Example, str | None]]:
    for example, dropped in Deduper(config).add_many(examples):
        yield example, None if dropped is None else dropped.reason


def measure(n: int, config: DedupeConfig, implementation: str) -> dict[str, object]:
    """One run in this process: the corpus streams through the deduper, nothing is kept but ids."""
    planted: dict[str, set[str]] = {"near": set(), "exact": set()}

    generating = [0.0, 0.0]  # wall, CPU seconds spent making the corpus: not the deduper's

    def stream() -> Iterator[Example]:
        corpus = iter_corpus(n - n // 10 - n // 20, n // 10, n // 20)
        while True:
            t, c = time.perf_counter(), time.process_time()
            item = next(corpus, None)
            generating[0] += time.perf_counter() - t
            generating[1] += time.process_time() - c
            if item is None:
                return
            example, truth = item
            if truth.kind != "distinct":
                planted[truth.kind].add(example.id)
            yield example

    rss0 = _peak_rss_mib()
    run = _baseline if implementation == "baseline" else _current
    dropped: dict[str, str] = {}
    kept = hashlib.sha256()
    t0, c0 = time.perf_counter(), time.process_time()
    for example, reason in run(stream(), config):
        if reason is None:
            kept.update(example.id.encode() + b"\n")
        else:
            dropped[example.id] = reason
    elapsed = time.perf_counter() - t0 - generating[0]
    cpu = time.process_time() - c0 - generating[1]
    return {
        "n": n, "implementation": implementation, "seconds": elapsed, "cpu": cpu, "corpus_seconds": generating[0],
        "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": rss0, "kept": n - len(dropped),
        "kept_sha256": kept.hexdigest(),
        "exact": asdict(score(dropped, planted["exact"], "exact")),
        "near": asdict(score(dropped, planted["near"], "near")),
    }


def _in_child(n: int, args: argparse.Namespace, implementation: str) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", implementation, "--sizes", str(n),
               "--threshold", str(args.threshold), "--num-perm", str(args.num_perm)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def _report(r: dict[str, object]) -> None:
    print(f"n={r['n']:,} {r['implementation']}: dedupe {r['seconds']:.2f} s wall ({r['cpu']:.2f} s CPU; the "
          f"machine is shared), {r['n'] / r['seconds']:,.0f} examples/s, peak RSS {r['peak_rss_mib']:,.0f} MiB "
          f"(before dedupe {r['rss_before_mib']:,.0f} MiB), kept {r['kept']:,}; "
          f"corpus streamed in another {r['corpus_seconds']:.1f} s")
    for kind in ("exact", "near"):
        s = r[kind]
        print(f"  {kind:5}: planted {s['planted']:,}, dropped {s['found']:,}, "
              f"precision {s['precision']:.4f}, recall {s['recall']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--baseline-size", type=int, default=100_000,
                        help="size at which the baseline runs next to the current deduper (0: skip)")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--child", choices=["baseline", "current"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = DedupeConfig(threshold=args.threshold, num_perm=args.num_perm)
    if args.child:
        print(json.dumps(measure(args.sizes[0], config, args.child)))
        return
    print(f"config: {config.model_dump()}")
    results: dict[int, dict[str, object]] = {}
    if args.baseline_size:
        base = _in_child(args.baseline_size, args, "baseline")
        _report(base)
        results[args.baseline_size] = now = _in_child(args.baseline_size, args, "current")
        _report(now)
        same = "the same" if now["kept_sha256"] == base["kept_sha256"] else "DIFFERENT"
        print(f"  current vs baseline at n={args.baseline_size:,}: wall {now['seconds'] / base['seconds']:.2f}x, "
              f"CPU {now['cpu'] / base['cpu']:.2f}x, "
              f"peak RSS {now['peak_rss_mib'] / base['peak_rss_mib']:.2f}x, {same} kept examples")
    for n in args.sizes:
        if n not in results:
            results[n] = _in_child(n, args, "current")
            _report(results[n])


if __name__ == "__main__":
    main()
