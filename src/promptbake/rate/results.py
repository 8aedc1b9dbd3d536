"""The results of a study as text (``promptbake rate --results``), JSON (``--json``) and a section
of the HTML report (``promptbake report ... --ratings RATINGS``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from promptbake.rate.stats import summarise
from promptbake.rate.store import RatingStore


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(low: float | None, high: float | None, digits: int = 2) -> str:
    return "" if low is None or high is None else f" ({low:.{digits}f}–{high:.{digits}f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def pair_rows(pairs: list[dict[str, Any]]) -> list[list[str]]:
    return [[f"{p['a']} vs {p['b']}", str(p["n"]), str(p["a_wins"]), str(p["b_wins"]), str(p["ties"]),
             str(p["both_bad"]), _num(p["win_rate"]) + _interval(p["low"], p["high"])] for p in pairs]


PAIR_HEADER = ["pair (a vs b)", "n", "a wins", "b wins", "ties", "both bad", "a win rate (95% CI)"]


@dataclass
class RateResults:
    """Every statistic of one ratings store (``summary``: :func:`promptbake.rate.stats.summarise`)."""

    store: Path
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, rounds: int | None = None) -> RateResults:
        with RatingStore(path) as store:
            sources = [s["name"] for s in store.sources()]
            ratings = store.ratings()
            where = store.path
        return cls(where, summarise(ratings, sources, **({"rounds": rounds} if rounds else {})))

    def to_json(self) -> dict[str, Any]:
        return {"store": str(self.store), **self.summary}

    def format(self) -> str:
        s = self.summary
        lines = [f"{len(s['sources'])} sources ({', '.join(s['sources'])}); {s['ratings']} ratings by "
                 f"{len(s['raters'])} rater(s): {s['counted']} counted, {s['skipped']} skipped, "
                 f"{s['repeats']} repeats", ""]
        if not s["pairs"]:
            return "\n".join([*lines, "no ratings yet"])
        lines += _table(PAIR_HEADER, pair_rows(s["pairs"]))
        bt = s["bradley_terry"]
        if bt:
            lines += ["", f"Bradley–Terry strengths (Elo scale, mean 1000; {bt['rounds']:,}-round bootstrap 95% CI)"]
            lines += _table(["source", "rating", "95% CI"], [[x["source"], f"{x['rating']:.0f}",
                                                              f"{x['low']:.0f}–{x['high']:.0f}"]
                                                             for x in bt["strengths"]])
        p = s["position"]
        if p["decisive"]:
            lines += ["", f"position: the left answer won {p['left_wins']} of {p['decisive']} decisive verdicts, "
                          f"{_num(p['rate'])}{_interval(p['low'], p['high'])}; p = {p['p']:.3g} against 0.50"]
        if len(s["categories"]) > 1:
            lines += ["", "per category:"]
            lines += _table(["category", *PAIR_HEADER], [[name, *row] for name, group in s["categories"].items()
                                                         for row in pair_rows(group)])
        a = s["agreement"]
        lines.append("")
        if a["units"]:
            kappa = f"Cohen's kappa {_num(a['kappa'])}, " if a["kappa"] is not None else ""
            lines.append(f"agreement: {a['units']} units rated by more than one of {len(a['raters'])} raters; "
                         f"{kappa}Krippendorff's alpha {_num(a['alpha'])}; {a['agreed']} of {a['pairs']} "
                         "pairs of verdicts agree")
        else:
            lines.append("agreement: no unit was rated by two raters (--raters-per-item 2 overlaps them)")
        c = s["consistency"]
        lines.append(f"self-consistency: {c['agreed']} of {c['repeats']} repeats named the same winner "
                     f"({_num(c['rate'])})" if c["repeats"] else "self-consistency: no repeat rated yet")
        j = s["judge"]
        if j:
            corr = (f"Spearman {_num(j['spearman'])} (p {j['spearman_p']:.3g}), Kendall {_num(j['kendall'])} "
                    f"(p {j['kendall_p']:.3g})" if j["spearman"] is not None else "correlation undefined")
            lines.append(f"judge vs people ({j['n']} ratings with judge scores on both answers): {corr}; the judge "
                         f"scored the human's pick higher in {j['judge_agrees']} of {j['sided']} "
                         f"({_num(j['share'])}; {j['judge_ties']} judge ties)")
        return "\n".join(lines)

    def section(self) -> Markup:
        """The results as one HTML section (autoescaped), for the report page."""
        from promptbake.rate.html import environment

        template = environment(num=_num).get_template("results.html.j2")
        s = self.summary
        return Markup(template.render(
            s=s, store=str(self.store), pairs=[("", p) for p in s["pairs"]],
            category_rows=[(name, p) for name, group in s["categories"].items() for p in group]))
