"""Learning curves from a study file (``study.jsonl``): what ``promptbake study`` writes, and what its
report, its summary and ``promptbake topup --study`` read.

One line per model × setting × category (``all`` is the whole test split). ``kind`` says which model:
``student`` (a student trained on ``size`` examples with ``seed``; size 0 is the untrained student),
``teacher`` (the teacher's own answers to the test prompts, the ceiling baking aims at) or
``prompted`` (the untrained student given the teacher's full prompt: what baking replaces).
``metrics`` holds every score the eval computed: ``pass`` and ``score`` (the eval's pass rate and
mean score), the answer-list metrics ``list``, ``keys``, ``values``, ``correct`` and ``items`` when
the spec scores answer lists, and ``judge`` (the mean 1-5 verdict) with a rubric.

A curve is measured points only, never a fitted law: at small sizes fine-tuning curves have a
"pre-power" phase where a power-law fit misleads (Rectified Scaling Law, arXiv 2402.02314). Each
point is the mean over the seeds, with their lowest and highest value as the spread. With a sweep, a
student's point is taken at its best setting (by the curve's ranking metric on the whole test
split), the sweep's answer to "which temperature suits this model".
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.curate.checks import AnswerList
from promptbake.errors import DataFileError, InputError
from promptbake.output.jsonl import read_jsonl

STUDY_FILE = "study.jsonl"
KINDS = ("teacher", "prompted", "student")
ALL = "all"
# the order metrics are shown in: the answer-list metrics as the formatting task names them first
METRIC_ORDER = (*AnswerList.METRICS, "pass", "score", "judge")
DEFAULT_THRESHOLD = 0.8  # top-up: a category whose curve ends below this
DEFAULT_RISING = 0.05  # top-up: a category whose metric still rose this much between the last two sizes


def read_study(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a study file, each checked for the fields the curves need (a bad one is named
    by its line)."""
    path = Path(path)
    lines = []
    for number, row in read_jsonl(path, "study"):
        kind, size, metrics = row.get("kind"), row.get("size"), row.get("metrics")
        if kind not in KINDS:
            raise DataFileError(f"{path}:{number}: 'kind' must be one of {', '.join(KINDS)}")
        if kind == "student" and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise DataFileError(f"{path}:{number}: a student line needs 'size', a whole number ≥ 0")
        if not isinstance(row.get("category"), str) or not isinstance(metrics, dict):
            raise DataFileError(f"{path}:{number}: needs 'category' and a 'metrics' object")
        lines.append(row)
    if not lines:
        raise DataFileError(f"{path}: no study lines")
    return lines


def is_study_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a study file (its first line), so ``report`` can tell it from
    an eval file."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        row = json.loads(first)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(row, dict) and row.get("kind") in KINDS and "metrics" in row


def metric_names(lines: list[dict[str, Any]]) -> list[str]:
    """Every metric with a value somewhere in the study, known ones in their usual order."""
    names = {k for line in lines for k, v in line["metrics"].items() if v is not None}
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def categories(lines: list[dict[str, Any]]) -> list[str]:
    """The study's categories, ``all`` last (alone when the test split has one category)."""
    names = sorted({line["category"] for line in lines} - {ALL})
    return [*names, ALL] if any(line["category"] == ALL for line in lines) else names


def ranking_metric(lines: list[dict[str, Any]], preferred: str | None = None) -> str:
    """The metric that picks a student's best setting and ranks categories: ``preferred`` when the
    study has it, else the pass rate, else the first metric measured."""
    names = metric_names(lines)
    if preferred is not None:
        if preferred not in names:
            raise InputError(f"metric {preferred!r}: the study measured {', '.join(names) or 'nothing'}")
        return preferred
    if "pass" in names:
        return "pass"
    if not names:
        raise InputError("the study has no scored answers: give the spec an eval block or checks")
    return names[0]


def _value(line: dict[str, Any], metric: str) -> float | None:
    value = line["metrics"].get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _key(line: dict[str, Any]) -> tuple[str, int | None, int | None]:
    return line["kind"], line.get("size"), line.get("seed")


def best_settings(lines: list[dict[str, Any]], metric: str) -> dict[tuple[str, int | None, int | None], str]:
    """Per model (kind, size, seed), the setting with the highest ``metric`` on the whole test split
    (ties: the first in the file)."""
    best: dict[tuple[str, int | None, int | None], tuple[str, float]] = {}
    whole = any(line["category"] == ALL for line in lines)
    for line in lines:
        if whole and line["category"] != ALL:
            continue
        value = _value(line, metric)
        key = _key(line)
        setting = str(line.get("setting", "default"))
        if key not in best or (value is not None and value > best[key][1]):
            best[key] = (setting, value if value is not None else float("-inf"))
    return {key: setting for key, (setting, _) in best.items()}


def _at_best(lines: list[dict[str, Any]], rank: str) -> list[dict[str, Any]]:
    best = best_settings(lines, rank)
    return [line for line in lines if best.get(_key(line)) == str(line.get("setting", "default"))]


@dataclass(frozen=True)
class Point:
    """One size of a curve: the mean over the seeds and their spread."""

    size: int
    mean: float
    low: float
    high: float
    seeds: int


def curves(lines: list[dict[str, Any]], metric: str, rank: str | None = None) -> dict[str, list[Point]]:
    """Per category, the students' ``metric`` by size (each at its best setting by ``rank``,
    default ``metric``), sizes ascending."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in _at_best([x for x in lines if x["kind"] == "student"], rank or metric):
        value = _value(line, metric)
        if value is not None:
            values[line["category"]][int(line["size"])].append(value)
    return {category: [Point(size, statistics.fmean(v), min(v), max(v), len(v)) for size, v in sorted(sizes.items())]
            for category, sizes in sorted(values.items(), key=lambda kv: (kv[0] == ALL, kv[0]))}


def references(lines: list[dict[str, Any]], metric: str, rank: str | None = None) -> dict[str, dict[str, float]]:
    """``{"teacher": {category: value}, "prompted": {...}}`` at each one's best setting."""
    found: dict[str, dict[str, float]] = {}
    for line in _at_best([x for x in lines if x["kind"] != "student"], rank or metric):
        value = _value(line, metric)
        if value is not None:
            found.setdefault(line["kind"], {})[line["category"]] = value
    return found


def reached(points: list[Point], target: float) -> int | None:
    """The smallest measured size whose mean reaches ``target`` (None: none does)."""
    return next((p.size for p in points if p.mean >= target), None)


@dataclass(frozen=True)
class Gain:
    """What the last step of a curve bought: the change between its last two sizes."""

    start: int
    end: int
    before: float
    after: float

    @property
    def gain(self) -> float:
        return self.after - self.before

    @property
    def per_100(self) -> float:
        """The gain per 100 more examples, to compare steps of different lengths."""
        return 100 * self.gain / (self.end - self.start)


def gains(curve_set: dict[str, list[Point]]) -> dict[str, Gain]:
    """Per category with at least two sizes, the gain between its last two."""
    return {category: Gain(points[-2].size, points[-1].size, points[-2].mean, points[-1].mean)
            for category, points in curve_set.items() if len(points) >= 2}


def parse_targets(targets: list[str] | dict[str, float]) -> dict[str, float]:
    """``["keys=0.8", "items=0.5"]`` (the ``--target`` flags) or a dict → ``{metric: value}``."""
    if isinstance(targets, dict):
        return {str(k): float(v) for k, v in targets.items()}
    parsed: dict[str, float] = {}
    for text in targets:
        name, sep, value = (part.strip() for part in text.partition("="))
        try:
            parsed[name] = float(value)
        except ValueError:
            raise InputError(f"--target {text!r}: write METRIC=VALUE, e.g. keys=0.8") from None
        if not sep or not name:
            raise InputError(f"--target {text!r}: write METRIC=VALUE, e.g. keys=0.8")
    return parsed


@dataclass(frozen=True)
class Weak:
    """A category ``topup --study`` adds data to, and why."""

    category: str
    value: float  # the metric at the largest size (mean over seeds)
    size: int
    gain: Gain | None
    why: str


def weak_categories(lines: list[dict[str, Any]], metric: str | None = None, *, threshold: float | None = None,
                    rising: float | None = None, bottom: int | None = None) -> tuple[str, list[Weak]]:
    """(the metric used, the categories to top up, lowest first): those whose curve ends below
    ``threshold`` (default 0.8) or still rose by ``rising`` or more (default 0.05) between the last
    two sizes; with ``bottom``, the ``bottom`` lowest instead."""
    if threshold is not None and bottom is not None:
        raise InputError("give --threshold or --bottom, not both")
    used = ranking_metric(lines, metric)
    curve_set = {c: points for c, points in curves(lines, used).items() if c != ALL}
    if not curve_set:
        raise InputError(f"the study has no per-category {used} of a trained student; run it with sizes above 0")
    step = gains(curve_set)
    limit = DEFAULT_THRESHOLD if threshold is None else threshold
    climb = DEFAULT_RISING if rising is None else rising
    ranked = sorted(curve_set.items(), key=lambda kv: (kv[1][-1].mean, kv[0]))
    chosen: list[Weak] = []
    for k, (category, points) in enumerate(ranked):
        last, gain = points[-1], step.get(category)
        reasons = []
        if bottom is not None and k < bottom:
            reasons.append(f"among the {bottom} lowest")
        if bottom is None and last.mean < limit:
            reasons.append(f"{used} {last.mean:.2f} < {limit:g} at {last.size} examples")
        if bottom is None and gain is not None and gain.gain >= climb:
            reasons.append(f"still rising: +{gain.gain:.2f} from {gain.start} to {gain.end} examples")
        if reasons:
            chosen.append(Weak(category, last.mean, last.size, gain, "; ".join(reasons)))
    return used, chosen
