"""An eval results file (``promptbake eval --out FILE``, or any JSONL with ``category`` and
``pass`` or ``score``) read back: per-category pass rates and scores, and the label of a sweep's
setting. Top-up picks weak categories from it and the report draws it; both read it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError
from promptbake.output.jsonl import read_jsonl


@dataclass
class CategoryScore:
    """One category's results pooled: its pass rate over the lines that have ``pass``, its mean
    score over those that have ``score`` (an eval with checks and a rubric has both)."""

    category: str
    n: int = 0
    passed: int = 0
    with_pass: int = 0
    scores: list[float] = field(default_factory=list)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.with_pass if self.with_pass else None

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def value(self, metric: str) -> float | None:
        return self.pass_rate if metric == "pass" else self.mean_score

    def add(self, passed: bool | None, score: float | None) -> None:
        self.n += 1
        if passed is not None:
            self.with_pass += 1
            self.passed += passed
        if score is not None:
            self.scores.append(float(score))

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "pass_rate": self.pass_rate, "mean_score": self.mean_score}


def load_eval(path: str | Path) -> dict[str, CategoryScore]:
    """Per-category results of an eval file; lines with neither ``pass`` nor ``score`` (failed
    calls, unscored outputs) are skipped. A sweep's settings are pooled."""
    path = Path(path)
    scores: dict[str, CategoryScore] = {}
    for number, row in read_jsonl(path, "eval"):
        category = row.get("category")
        if not isinstance(category, str) or not category:
            raise DataFileError(f"{path}:{number}: no 'category'")
        passed, score = row.get("pass"), row.get("score")
        if passed is not None and not isinstance(passed, bool):
            raise DataFileError(f"{path}:{number}: 'pass' must be true, false or null")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise DataFileError(f"{path}:{number}: 'score' must be a number or null")
        if passed is None and score is None:
            continue
        scores.setdefault(category, CategoryScore(category)).add(passed, score)
    if not scores:
        raise DataFileError(f"{path}: no scored lines (need 'category' and 'pass' or 'score'); "
                            "run eval with checks or a rubric")
    return dict(sorted(scores.items()))


def setting_label(settings: dict[str, Any]) -> str:
    """How a sweep's setting is named in tables: ``temperature=0.5 top_p=0.9`` (``default``: none)."""
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "default"
