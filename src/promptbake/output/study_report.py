"""The study's HTML report: learning curves per metric and category, with the seeds' spread, the
reference rows, the size at which each category reaches a target, and what the last size bought.

It reads ``study.jsonl`` (the curves) and, when they are beside it, the per-model answer files in
``evals/`` (the searchable table of answers), and writes one self-contained page like the dataset
and eval reports (``report.render``: inline SVG, no network).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptbake.curate.checks import AnswerList
from promptbake.output import curves, plots
from promptbake.output.jsonl import read_jsonl
from promptbake.output.report import SAMPLE, Row, render

EVALS = "evals"
MAX_PANELS = 6


def _model(line: dict[str, Any]) -> str:
    if line["kind"] != "student":
        return str(line["kind"])
    seed = "" if line.get("seed") is None else f", seed {line['seed']}"
    return f"{line['size']} example{'s' if line['size'] != 1 else ''}{seed}"


def _answers(directory: Path, sample: int) -> tuple[list[Row], str]:
    """Answers from the eval files beside the study, each model's in turn, up to ``sample``."""
    files = sorted((directory / EVALS).glob("*.jsonl")) if (directory / EVALS).is_dir() else []
    rows: list[Row] = []
    total = 0
    for path in files:
        for _, row in read_jsonl(path, "eval"):
            total += 1
            if len(rows) >= sample:
                continue
            status = ("error" if row.get("output") is None and row.get("error") else
                      "unscored" if row.get("pass") is None else "pass" if row["pass"] else "fail")
            metrics = row.get("metrics") or {}
            shown = ", ".join(f"{k} {v:g}" for k, v in metrics.items() if isinstance(v, int | float)) or \
                ("" if row.get("score") is None else f"score {row['score']}")
            reason = "; ".join(str(x) for x in [row.get("error"), *(row.get("failures") or []),
                                                row.get("judge_reasoning")] if x)
            settings = row.get("settings") or {}
            label = path.stem + (f" · {', '.join(f'{k}={v}' for k, v in settings.items())}" if settings else "")
            rows.append(Row(status, str(row.get("category", "")), label, shown, str(row.get("output") or ""), reason))
    note = f"showing {len(rows)} of {total} answers" if total > len(rows) else ""
    return rows, note


def study_context(path: str | Path, *, targets: dict[str, float] | None = None,
                  sample: int = SAMPLE) -> dict[str, Any]:
    path = Path(path)
    lines = curves.read_study(path)
    names = curves.metric_names(lines)
    targets = dict(targets or {})
    record = _record(path.parent)
    targets = {**record.get("targets", {}), **targets}
    rank = curves.ranking_metric(lines, next((m for m in targets if m in names), None)) if names else None
    drawn = {m: curves.curves(lines, m, rank) for m in names}
    # an answer list's five metrics say more than pass and score (which they decide); a metric no
    # student has a value of (``values`` when no answer had the keys) would be an empty panel
    answers = [m for m in names if m in AnswerList.METRICS]
    panels_for = [m for m in (answers or names) if drawn[m]][:MAX_PANELS]
    refs = {m: curves.references(lines, m, rank) for m in names}
    panels = {m: {c: [(p.size, p.mean, p.low, p.high) for p in points] for c, points in drawn[m].items()}
              for m in panels_for}
    plot = plots.learning_curves("curves", panels, {m: {k: v[curves.ALL] for k, v in refs[m].items()
                                                        if curves.ALL in v} for m in panels_for},
                                 {m: v for m, v in targets.items() if m in panels_for}) if panels else None
    sizes = sorted({p.size for m in names for points in drawn[m].values() for p in points})
    summary = []
    for kind in ("teacher", "prompted"):
        if any(kind in refs[m] for m in names):
            summary.append([kind, *(refs[m].get(kind, {}).get(curves.ALL) for m in names)])
    for size in sizes:
        row: list[Any] = [f"student, {size} example{'s' if size != 1 else ''}"]
        for m in names:
            point = next((p for p in drawn[m].get(curves.ALL, []) if p.size == size), None)
            row.append(None if point is None else point.mean if point.low == point.high
                       else f"{point.mean:.2f} ({point.low:.2f}–{point.high:.2f})")
        summary.append(row)
    category_rows = []
    if rank is not None:
        for category, points in drawn[rank].items():
            by_size = {p.size: p for p in points}
            category_rows.append([category, *(by_size[s].mean if s in by_size else None for s in sizes)])
    target_rows = []
    for metric, value in targets.items():
        for category, points in (drawn.get(metric) or {}).items():
            first = curves.reached(points, value)
            top = max(points, key=lambda p: p.mean) if points else None
            target_rows.append([metric, value, category, first if first is not None else "not reached",
                                None if top is None else f"{top.mean:.2f} at {top.size}"])
        if metric not in drawn:
            target_rows.append([metric, value, "–", "not measured", None])
    gain_rows = []
    if rank is not None:
        for category, g in curves.gains(drawn[rank]).items():
            gain_rows.append([category, f"{g.start} → {g.end}", g.before, g.after, f"{g.gain:+.2f}",
                              f"{g.per_100:+.2f}"])
    chosen = curves.best_settings(lines, rank) if rank is not None else {}
    swept = len({line.get("setting") for line in lines}) > 1
    best_rows = [[_model({"kind": k, "size": s, "seed": seed}), setting]
                 for (k, s, seed), setting in sorted(chosen.items(), key=lambda kv: (kv[0][0] != "student",
                                                                                   kv[0][1] or 0, kv[0][2] or 0))]
    students = {(line["size"], line.get("seed")) for line in lines if line["kind"] == "student"}
    at_all = [line for line in lines if line["category"] == curves.ALL]
    trained = {(line["size"], line.get("seed")): line["train"] for line in lines if line.get("train")}
    glance = [
        ("spec", str(lines[0].get("study", "?"))), ("dataset", str(lines[0].get("dataset", "?"))),
        ("sizes", ", ".join(map(str, sorted({s for s, _ in students})))),
        ("seeds", str(len({seed for _, seed in students if seed is not None}) or 1)),
        ("settings", ", ".join(dict.fromkeys(str(line.get("setting")) for line in lines))),
        ("test answers per model", str(max((line["n"] for line in at_all), default=0))),
        ("answer tokens", f"{sum(x['tokens']['prompt'] + x['tokens']['completion'] for x in at_all):,}"),
        ("answer time (model)", f"{sum(x.get('eval_s') or 0 for x in at_all):,.0f} s"),
        ("training time", f"{sum(t.get('seconds') or 0 for t in trained.values()):,.0f} s for {len(trained)} students"),
        ("cost", f"${sum(x.get('cost') or 0 for x in at_all):.4f}"),
        ("ranked by", rank or "–"),
    ]
    if record.get("last_run"):
        run = record["last_run"]
        glance.append(("last run", f"{run.get('seconds', 0):,.0f} s; trained {len(run.get('trained', []))}, "
                                   f"sent {run.get('sent', 0)} of {run.get('answers', 0)} answers"))
    rows, note = _answers(path.parent, sample)
    return {
        "kind": "study", "title": f"promptbake study: {lines[0].get('study', path.stem)}", "source": str(path),
        "notes": [], "glance": glance, "plot": plot, "metrics": names, "rank": rank,
        "panels": panels_for, "summary": summary, "sizes": sizes, "category_rows": category_rows,
        "target_rows": target_rows, "gain_rows": gain_rows, "best_rows": best_rows if swept else [],
        "rows": rows, "sample_note": note, "row_categories": sorted({r.category for r in rows}),
        "statuses": ["pass", "fail", "unscored", "error"],
    }


def _record(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_study_report(path: str | Path, out: str | Path | None = None, *, targets: dict[str, float] | None = None,
                       sample: int = SAMPLE) -> Path:
    """``study.html`` beside ``study.jsonl`` (or ``out``)."""
    from promptbake.output.atomic import write_text_atomic

    target = Path(out) if out else Path(path).with_suffix(".html")
    write_text_atomic(target, render(study_context(path, targets=targets, sample=sample)))
    return target
