"""The eval's table: per category (and sweep setting) pass rate, mean score, length, JSON share
and cut-off share, and the sweep's answer, the best setting per category."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from promptbake.curate.checks import AnswerList
from promptbake.output.eval_results import setting_label


@dataclass
class Group:
    """The statistics of one category under one setting."""

    category: str
    setting: str
    n: int = 0
    errors: int = 0
    scored: int = 0
    passed: int = 0
    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    json_ok: int = 0
    cut: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        self.n += 1
        if row["output"] is None:
            self.errors += 1
            return
        self.lengths.append(row["length"])
        self.json_ok += bool(row["json"])
        self.cut += row["finish_reason"] == "length"
        for name, value in (row.get("metrics") or {}).items():
            if value is not None:
                self.metrics.setdefault(name, []).append(value)
        if row["pass"] is not None:
            self.scored += 1
            self.passed += bool(row["pass"])
            self.scores.append(row["score"])

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.scored if self.scored else None

    @property
    def mean_score(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    def as_dict(self) -> dict[str, Any]:
        answered = len(self.lengths)
        return {
            "category": self.category, "setting": self.setting, "n": self.n, "errors": self.errors,
            "pass_rate": self.pass_rate, "mean_score": self.mean_score,
            "mean_length": statistics.fmean(self.lengths) if self.lengths else None,
            "median_length": statistics.median(self.lengths) if self.lengths else None,
            "json_share": self.json_ok / answered if answered else None,
            "cut_share": self.cut / answered if answered else None,
            **{f"metric_{name}": statistics.fmean(values) for name, values in self.metrics.items()},
        }


def _rank(group: Group) -> tuple[bool, float]:
    value = group.pass_rate if group.pass_rate is not None else group.mean_score
    return (value is None, -(value or 0.0))


def summarise(rows: list[dict[str, Any]]) -> list[Group]:
    """Groups per (category, setting), categories sorted, plus an ``all`` row per setting; within a
    category the best setting (pass rate, else mean score) comes first."""
    groups: dict[tuple[str, str], Group] = {}
    for row in rows:
        label = setting_label(row["settings"])
        keys = [(row["category"], label)]
        keys += [("all", label)] if row["category"] != "all" else []
        for key in keys:
            groups.setdefault(key, Group(*key)).add(row)
    categories = {cat for cat, _ in groups if cat != "all"}
    if len(categories) == 1:  # "all" would repeat the only category
        groups = {k: g for k, g in groups.items() if k[0] != "all"}
    settings = list(dict.fromkeys(setting_label(r["settings"]) for r in rows))
    order = [*sorted(categories), "all"]
    return [
        g for c in order for g in sorted((groups[(c, s)] for s in settings if (c, s) in groups), key=_rank)
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(groups: list[Group]) -> str:
    """One line per category and setting; with an ``answers`` block, its five metrics as shares
    (``values`` among answers with a valid list and keys)."""
    wide = max([8, *(len(g.category) for g in groups)])
    sweep = max([7, *(len(g.setting) for g in groups)]) if len({g.setting for g in groups}) > 1 else 0
    metrics = [m for m in AnswerList.METRICS if any(m in g.metrics for g in groups)]
    head = f"{'category':<{wide}} " + (f"{'setting':<{sweep}} " if sweep else "")
    head += f"{'n':>5} {'failed':>6} {'pass':>5} {'score':>5} {'len':>7} {'median':>7} {'json':>5} {'cut':>5}"
    lines = [head + "".join(f" {m:>7}" for m in metrics)]
    for g in groups:
        d = g.as_dict()
        lines.append(
            f"{g.category:<{wide}} " + (f"{g.setting:<{sweep}} " if sweep else "")
            + f"{g.n:>5} {g.errors:>6} {_pct(d['pass_rate']):>5} {_num(d['mean_score']):>5} "
            f"{_num(d['mean_length'], 1):>7} {_num(d['median_length'], 1):>7} {_pct(d['json_share']):>5} "
            f"{_pct(d['cut_share']):>5}" + "".join(f" {_pct(d.get(f'metric_{m}')):>7}" for m in metrics)
        )
    return "\n".join(lines)


def best_settings(groups: list[Group]) -> dict[str, tuple[str, float]]:
    """Per category, the setting with the highest pass rate (else mean score): the sweep's answer."""
    best: dict[str, tuple[str, float]] = {}
    for g in groups:
        value = g.pass_rate if g.pass_rate is not None else g.mean_score
        if value is not None and (g.category not in best or value > best[g.category][1]):
            best[g.category] = (g.setting, value)
    return best
