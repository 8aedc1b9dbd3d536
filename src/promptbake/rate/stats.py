"""The statistics of a blind side-by-side study, computed from the live ratings.

Conventions follow FastChat's arena where it has one: a verdict is turned from sides (left, right)
into the unit's sources (a, b) before anything is counted; a pair's win rate is a's wins over the
decisive verdicts, with a Wilson 95% interval, and ties and "both bad" are counted apart; the
Bradley–Terry strengths (more than two sources) are fitted by maximum likelihood with ties (and
"both bad") as half a win each, shown on the Elo scale (400 points = 10:1 odds, mean 1000), with
1,000-round bootstrap 95% intervals. Only first showings count towards wins, position and
agreement; repeats measure self-consistency.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from promptbake.rate.store import Rating

Z95 = 1.959963984540054
ROUNDS = 1000
ELO_SCALE = 400 / math.log(10)  # natural-log strength → Elo points
HUMAN_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


def outcome(rating: Rating) -> str | None:
    """The verdict in terms of the unit's sources: ``a``, ``b``, ``tie``, ``both_bad`` (None: skipped)."""
    if rating.verdict in ("tie", "both_bad"):
        return rating.verdict
    if rating.verdict not in ("left", "right"):
        return None
    winner_is_left = rating.verdict == "left"
    return "a" if (rating.left == rating.a) == winner_is_left else "b"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials (None for n = 0)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends (p = 0 or 1), where rounding would leave 0.9999999999999999
    return 0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half)


def first_showings(ratings: Iterable[Rating]) -> list[Rating]:
    return [r for r in ratings if r.repeat_of is None and outcome(r) is not None]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    n: int
    a_wins: int
    b_wins: int
    ties: int
    both_bad: int
    win_rate: float | None  # a's wins ÷ decisive verdicts
    low: float | None
    high: float | None


def pairs(ratings: Sequence[Rating], sources: Sequence[str] = ()) -> list[Pair]:
    """One row per pair of sources, in the order of ``sources`` (as given to ``rate``)."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in first_showings(ratings):
        counts[r.a, r.b][outcome(r) or ""] += 1
    place = {name: i for i, name in enumerate(sources)}
    out = []
    for (a, b), c in sorted(counts.items(), key=lambda kv: (place.get(kv[0][0], 0), place.get(kv[0][1], 0))):
        decisive = c["a"] + c["b"]
        interval = wilson(c["a"], decisive)
        out.append(Pair(a, b, sum(c.values()), c["a"], c["b"], c["tie"], c["both_bad"],
                        c["a"] / decisive if decisive else None, *(interval or (None, None))))
    return out


def by_category(ratings: Sequence[Rating], sources: Sequence[str] = ()) -> dict[str, list[Pair]]:
    groups: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        groups[r.category].append(r)
    return {name: pairs(group, sources) for name, group in sorted(groups.items())}


def position_bias(ratings: Sequence[Rating]) -> dict[str, Any]:
    """How often the left answer won a decisive verdict; 50% means no position bias. The p-value is
    the two-sided binomial test against 50%."""
    from scipy.stats import binomtest

    left = sum(1 for r in first_showings(ratings) if r.verdict == "left")
    decisive = sum(1 for r in first_showings(ratings) if r.verdict in ("left", "right"))
    interval = wilson(left, decisive)
    return {"left_wins": left, "decisive": decisive, "rate": left / decisive if decisive else None,
            "low": interval[0] if interval else None, "high": interval[1] if interval else None,
            "p": float(binomtest(left, decisive, 0.5).pvalue) if decisive else None}


# --- Bradley–Terry ---------------------------------------------------------------------------------


def _fit(wins: Any, iterations: int = 200) -> Any:
    """Maximum-likelihood strengths (natural log scale, mean 0) for a stack of win matrices,
    ``wins[r, i, j]`` being i's wins over j in resample r: Newton's method on all resamples at
    once, as array operations, rather than an optimiser call per resample. A negligible L2 term
    (FastChat's logistic regression uses C = 1e6) keeps a source that never won finite."""
    import numpy as np

    rounds, k, _ = wins.shape
    games = wins + wins.transpose(0, 2, 1)
    theta = np.zeros((rounds, k))
    ridge = 1e-6 * np.eye(k)
    for _ in range(iterations):
        beats = 1 / (1 + np.exp(theta[:, None, :] - theta[:, :, None]))  # beats[r, i, j] = P(i beats j)
        grad = -(wins - games * beats).sum(axis=2) + 1e-6 * theta
        weight = games * beats * (1 - beats)
        hessian = ridge - weight
        hessian[:, np.arange(k), np.arange(k)] += weight.sum(axis=2)
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]
        step = np.clip(step, -4, 4)  # a source that never won walks off slowly; no overshoot
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta - theta.mean(axis=1, keepdims=True)


def bradley_terry(ratings: Sequence[Rating], sources: Sequence[str], rounds: int = ROUNDS,
                  seed: int = 0) -> dict[str, Any] | None:
    """Strengths with bootstrap intervals (battles resampled with replacement, ``rounds`` times),
    the observed win fraction of each source over each other (ties as half) and battle counts."""
    import numpy as np

    index = {name: i for i, name in enumerate(sources)}
    battles = [(index[r.a], index[r.b], outcome(r)) for r in first_showings(ratings)]
    if len(sources) < 3 or not battles:
        return None
    k = len(sources)
    kinds = sorted(set(battles), key=str)
    counts = np.array([battles.count(kind) for kind in kinds], dtype=float)

    def matrix(weights: Any) -> Any:
        wins = np.zeros((k, k))
        for (i, j, result), w in zip(kinds, weights, strict=True):
            if result == "a":
                wins[i, j] += w
            elif result == "b":
                wins[j, i] += w
            else:
                wins[i, j] += w / 2
                wins[j, i] += w / 2
        return wins

    observed = matrix(counts)
    strengths = _fit(observed[None])[0]
    rng = np.random.default_rng(seed)
    samples = _fit(np.array([matrix(draw) for draw in rng.multinomial(len(battles), counts / counts.sum(),
                                                                      size=rounds)]))
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    total = observed + observed.T
    order = sorted(range(k), key=lambda i: -strengths[i])
    return {
        "rounds": rounds,
        "strengths": [{"source": sources[i], "rating": 1000 + ELO_SCALE * strengths[i],
                       "low": 1000 + ELO_SCALE * low[i], "high": 1000 + ELO_SCALE * high[i]} for i in order],
        "win_fraction": {sources[i]: {sources[j]: float(observed[i, j] / total[i, j]) if total[i, j] else None
                                      for j in range(k) if j != i} for i in range(k)},
        "battles": {sources[i]: {sources[j]: int(total[i, j]) for j in range(k) if j != i} for i in range(k)},
    }


# --- agreement -------------------------------------------------------------------------------------


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same units (None when chance agreement is total)."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    one, two = Counter(first), Counter(second)
    expected = sum(one[label] * two[label] for label in one) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def agreement(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Inter-rater agreement on units rated by more than one rater (first showings, skips left
    out): Cohen's kappa when exactly two raters overlap, Krippendorff's alpha (nominal) for any
    number, with the share of overlapping pairs of verdicts that agree."""
    import numpy as np

    labels: dict[int, dict[str, str]] = defaultdict(dict)
    for r in first_showings(ratings):
        labels[r.unit][r.rater] = outcome(r) or ""
    shared = {unit: by for unit, by in labels.items() if len(by) > 1}
    raters = sorted({rater for by in shared.values() for rater in by})
    result: dict[str, Any] = {"units": len(shared), "raters": raters, "kappa": None, "alpha": None,
                              "pairs": 0, "agreed": 0}
    if not shared:
        return result
    for by in shared.values():
        values = list(by.values())
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                result["pairs"] += 1
                result["agreed"] += values[i] == values[j]
    if len(raters) == 2:
        both = list(shared.values())
        result["kappa"] = cohen_kappa([by[raters[0]] for by in both], [by[raters[1]] for by in both])
    codes = {label: float(i) for i, label in enumerate(HUMAN_SCORE)}
    data = np.array([[codes[by[rater]] if rater in by else np.nan for by in shared.values()] for rater in raters])
    if len({label for by in shared.values() for label in by.values()}) > 1:  # else undefined: no variation
        import krippendorff

        result["alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    return result


def consistency(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Self-consistency: how often a rater's verdict on a repeated unit (sides swapped) names the
    same source as their first verdict on it."""
    by_shown = {r.shown: r for r in ratings}
    per: dict[str, list[bool]] = defaultdict(list)
    for r in ratings:
        first = by_shown.get(r.repeat_of) if r.repeat_of is not None else None
        if first is not None and outcome(r) is not None and outcome(first) is not None:
            per[r.rater].append(outcome(r) == outcome(first))
    everyone = [x for v in per.values() for x in v]
    return {"repeats": len(everyone), "agreed": sum(everyone),
            "rate": sum(everyone) / len(everyone) if everyone else None,
            "by_rater": {rater: {"repeats": len(v), "agreed": sum(v)} for rater, v in sorted(per.items())}}


def judge_agreement(ratings: Sequence[Rating]) -> dict[str, Any] | None:
    """Where both answers of a rated unit carry an LLM-judge score: the rank correlation of the
    judge's score difference (a − b) with the human verdict (a 1, b 0, tie and both bad ½;
    Spearman, and Kendall's tau-b for the many ties), and how often the judge scored higher the
    side the human picked (the judge's own ties count as misses and are counted apart)."""
    from scipy.stats import kendalltau, spearmanr

    scored = [r for r in first_showings(ratings) if r.judge_a is not None and r.judge_b is not None]
    if not scored:
        return None
    human = [HUMAN_SCORE[outcome(r) or ""] for r in scored]
    judge = [float(r.judge_a or 0) - float(r.judge_b or 0) for r in scored]
    sided = [(h, j) for h, j in zip(human, judge, strict=True) if h != 0.5]
    out: dict[str, Any] = {"n": len(scored), "spearman": None, "spearman_p": None, "kendall": None,
                           "kendall_p": None, "sided": len(sided),
                           "judge_agrees": sum(1 for h, j in sided if (j > 0) == (h == 1.0) and j != 0),
                           "judge_ties": sum(1 for _, j in sided if j == 0)}
    out["share"] = out["judge_agrees"] / len(sided) if sided else None
    if len(scored) >= 3 and len(set(human)) > 1 and len(set(judge)) > 1:
        rho = spearmanr(human, judge)
        tau = kendalltau(human, judge)
        out.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue), kendall=float(tau.statistic),
                   kendall_p=float(tau.pvalue))
    return out


def summarise(ratings: Sequence[Rating], sources: Sequence[str], rounds: int = ROUNDS) -> dict[str, Any]:
    """Every statistic of the study, JSON-ready."""
    first = first_showings(ratings)
    return {
        "sources": list(sources),
        "ratings": len(ratings),
        "counted": len(first),
        "skipped": sum(1 for r in ratings if r.verdict == "skip"),
        "repeats": sum(1 for r in ratings if r.repeat_of is not None),
        "raters": sorted({r.rater for r in ratings}),
        "pairs": [asdict(p) for p in pairs(ratings, sources)],
        "bradley_terry": bradley_terry(ratings, sources, rounds),
        "position": position_bias(ratings),
        "categories": {name: [asdict(p) for p in group] for name, group in by_category(ratings, sources).items()},
        "agreement": agreement(ratings),
        "consistency": consistency(ratings),
        "judge": judge_agreement(ratings),
    }
