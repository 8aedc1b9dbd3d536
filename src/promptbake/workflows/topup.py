"""Eval-driven top-up: more training data where the student is weak, the test split untouched.

Weak categories come from an eval file (ours, or any JSONL with ``category`` and ``pass`` or
``score``). New examples are made by the normal generation on a derived spec: the same spec, its
grid replaced by a table of the weak categories' cells crossed with a ``topup_round`` axis. That
axis changes every cell key, request id, cache key and step seed (they hash the cell values), so
round N is not served round 1's answers from the cache, while the templates, which never mention
it, render the same prompts; a step that sets no seed is sent one derived from the round
(``GenerateOptions.topup_round``), so the request's bytes differ too and a deterministic teacher
answers afresh. The new examples are deduplicated
against everything already in the dataset (train and test) and appended to a new train version,
``train.v2.jsonl``, ``train.v3.jsonl``…; ``test.jsonl`` is never written, so evals stay comparable.
The manifest's ``topups`` list records what each round added, why, and from which eval file.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from promptbake.curate.dedupe import dedupe
from promptbake.curate.examples import ExampleRenderer
from promptbake.curate.gates import Gates
from promptbake.errors import InputError
from promptbake.ids import file_sha256
from promptbake.output.atomic import ensure_dir, json_line, write_jsonl_atomic, write_text_atomic
from promptbake.output.eval_results import CategoryScore, load_eval
from promptbake.output.export import read_manifest
from promptbake.output.formats import convert_all
from promptbake.output.sidecar import read_split
from promptbake.plan.expand import Cell, Expander
from promptbake.records import Example
from promptbake.specification.models import Grid, Spec
from promptbake.store.db import Store
from promptbake.teacher.config import Teacher
from promptbake.teacher.generate import GenerateOptions
from promptbake.workflows.pipeline import RunReport, default_store, generate_async
from promptbake.workflows.sync import synchronous

TOPUP_AXIS = "topup_round"
DEFAULT_THRESHOLD = 0.8
Metric = Literal["auto", "pass", "score"]


# --- which categories are weak ------------------------------------------------------------------


def weak_categories(scores: dict[str, CategoryScore], *, metric: Metric = "auto", threshold: float | None = None,
                    bottom: int | None = None) -> tuple[str, list[CategoryScore]]:
    """(the metric used, the weak categories worst first): below ``threshold``, or the worst
    ``bottom``. ``auto`` uses the pass rate when the file has ``pass`` values, else the mean score."""
    if threshold is not None and bottom is not None:
        raise InputError("give --threshold or --bottom, not both")
    if metric == "auto":
        metric = "pass" if any(s.with_pass for s in scores.values()) else "score"
    rated = [(s.value(metric), s) for s in scores.values()]
    missing = [s.category for value, s in rated if value is None]
    if missing:
        raise InputError(f"the eval has no {metric} values for {', '.join(missing)}; choose another --metric")
    ranked = [s for _, s in sorted(rated, key=lambda pair: (pair[0], pair[1].category))]
    if bottom is not None:
        return metric, ranked[:bottom]
    limit = DEFAULT_THRESHOLD if threshold is None else threshold
    return metric, [s for s in ranked if (s.value(metric) or 0.0) < limit]


# --- generation on a derived spec ----------------------------------------------------------------


def _category_expression(spec: Spec, expander: Expander) -> str:
    """The spec's category rule, unchanged by the extra axis (the default joins every axis)."""
    if spec.category is not None:
        return spec.category
    names = list(expander.axes)
    return " ~ ' / ' ~ ".join(names) if names else "'all'"


def plan_cells(cells: Iterable[Cell], weak: list[str], per_category: int, round_: int) -> dict[int, list[Cell]]:
    """Cells to generate for, grouped by the count each needs: a category's N examples are spread
    over ceil(N / count) of its cells (a seeded choice, different each round)."""
    by_category: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        if cell.category in weak:
            by_category[cell.category].append(cell)
    groups: dict[int, list[Cell]] = defaultdict(list)
    for category in weak:
        pool = by_category.get(category, [])
        if not pool:
            continue
        count = math.ceil(per_category / len(pool))
        used = math.ceil(per_category / count)
        chosen = random.Random(f"topup:{round_}:{category}").sample(pool, used)
        groups[count].extend(sorted(chosen, key=lambda c: c.index))
    return dict(sorted(groups.items()))


def derive_spec(spec: Spec, expander: Expander, cells: list[Cell], count: int, round_: int, name: str,
                table: Path) -> Spec:
    """``spec`` restricted to ``cells`` (written to ``table``), ``count`` each, in top-up round ``round_``."""
    ensure_dir(table.parent)
    write_jsonl_atomic(table, (cell.values for cell in cells))
    grid = Grid(axes={TOPUP_AXIS: [round_]}, table=str(table.resolve()), count=count)
    derived = spec.model_copy(update={"name": name, "grid": grid,
                                      "category": _category_expression(spec, expander)})
    derived._path = spec.path
    return derived


def _round_robin(examples: list[Example], n: int) -> list[Example]:
    """The first ``n`` examples taking one per cell in turn, so a category's new data is spread."""
    queues: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        queues[example.provenance.get("cell_key", "")].append(example)
    picked: list[Example] = []
    while len(picked) < n and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


@dataclass
class TopupReport:
    round: int
    train_path: Path
    metric: str
    weak: list[CategoryScore]
    added: dict[str, dict[str, int]]
    train: int
    warnings: list[str] = field(default_factory=list)
    runs: list[RunReport] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)  # per weak category, what made it weak (a study)

    def format(self) -> str:
        if not self.weak:
            return f"no category is weak by {self.metric}: nothing generated, {self.train_path} stays current"
        lines = [f"top-up round {self.round}: weak categories by {self.metric}"]
        wide = max([8, *(len(s.category) for s in self.weak)])
        lines.append(f"{'category':<{wide}} {'n':>5} {'pass':>6} {'score':>6} {'wanted':>6} {'new':>5} "
                     f"{'dupes':>5} {'added':>5}")
        for s in self.weak:
            a = self.added.get(s.category, {})
            rate = "-" if s.pass_rate is None else f"{100 * s.pass_rate:.0f}%"
            score = "-" if s.mean_score is None else f"{s.mean_score:.2f}"
            why = f"  {self.why[s.category]}" if s.category in self.why else ""
            lines.append(f"{s.category:<{wide}} {s.n:>5} {rate:>6} {score:>6} {a.get('wanted', 0):>6} "
                         f"{a.get('generated', 0):>5} {a.get('duplicates', 0):>5} {a.get('added', 0):>5}{why}")
        added = sum(a["added"] for a in self.added.values())
        lines.append(f"train: {self.train} examples (+{added}) → {self.train_path}; test unchanged")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


async def topup_async(spec: Spec, eval_path: str | Path, dataset: str | Path, *, per_category: int = 10,
          threshold: float | None = None, bottom: int | None = None, metric: Metric = "auto",
          store_path: str | Path | None = None, teacher: Teacher | None = None,
          options: GenerateOptions | None = None) -> TopupReport:
    """One top-up round on a built dataset DIR; returns what it added (nothing is written when no
    category is weak)."""
    if metric not in ("auto", "pass", "score"):
        raise InputError(f"--metric {metric}: an eval file ranks by auto, pass or score")
    eval_path = Path(eval_path)
    metric_used, weak = weak_categories(load_eval(eval_path), metric=metric, threshold=threshold, bottom=bottom)
    source = {"path": str(eval_path), "sha256": file_sha256(eval_path), "metric": metric_used,
              "threshold": None if bottom is not None else (DEFAULT_THRESHOLD if threshold is None else threshold),
              "bottom": bottom}
    return await topup_weak_async(spec, dataset, weak, metric_used, ("eval", source), per_category=per_category,
                                  store_path=store_path, teacher=teacher, options=options)


async def topup_weak_async(spec: Spec, dataset: str | Path, weak: list[CategoryScore], metric_used: str,
                           source: tuple[str, dict[str, Any]], *, per_category: int = 10,
                           store_path: str | Path | None = None, teacher: Teacher | None = None,
                           options: GenerateOptions | None = None, why: dict[str, str] | None = None) -> TopupReport:
    """One top-up round for the ``weak`` categories, which ``source`` (``("eval", record)`` or
    ``("study", record)``, the record holding the file's ``path`` and ``sha256``) found; ``why``
    says per category what made it weak, for the summary."""
    if per_category < 1:
        raise InputError("--per-category must be at least 1")
    directory = Path(dataset)
    kind, record = source
    manifest = read_manifest(directory)
    rounds = manifest.get("topups", [])
    round_ = len(rounds) + 1
    while (directory / f"train.v{round_ + 1}.jsonl").exists():  # a version the manifest lost: never overwrite
        round_ += 1
    current = directory / (rounds[-1]["train"] if rounds else "train.jsonl")
    target = directory / f"train.v{round_ + 1}.jsonl"
    report = TopupReport(round_, target, metric_used, weak, {}, 0, why=dict(why or {}))
    if not weak:
        report.train_path = current
        return report
    reused = [r["round"] for r in rounds if (r.get(kind) or {}).get("sha256") == record["sha256"]]
    if reused:
        again = "evaluate the new train split first" if kind == "eval" else "run the study again first"
        report.warnings.append(f"{record['path']} already drove round {reused[-1]}; {again}")

    expander = Expander(spec)
    cells = list(expander.cells())
    known = {c.category for c in cells}
    names = [s.category for s in weak if s.category in known]
    unknown = [s.category for s in weak if s.category not in known]
    if unknown:
        report.warnings.append(f"not categories of spec {spec.name!r}, skipped: {', '.join(unknown)}")
    if not names:
        raise InputError(f"none of the weak categories ({', '.join(unknown)}) is a category of spec {spec.name!r} "
                         f"(it has {', '.join(sorted(known))}); was the eval run with the dataset's metadata?")

    train, test = read_split(current, "train"), read_split(directory / "test.jsonl", "test")
    store_path = Path(store_path) if store_path is not None else default_store(directory)
    fresh: list[Example] = []
    options = options or GenerateOptions()
    for j, (count, group) in enumerate(plan_cells(cells, names, per_category, round_).items()):
        tag = f"topup{round_}" + (f".{j + 1}" if j else "")
        derived = derive_spec(spec, expander, group, count, round_, f"{spec.name}@{tag}",
                              directory / "topups" / f"{tag}.cells.jsonl")
        # the round varies the seed of steps that set none: the teacher is asked afresh
        run = await generate_async(derived, store_path, teacher, replace(options, topup_round=round_), topup=True,
                                   command="topup")
        report.runs.append(run)
        if options.max_cost is not None:  # one budget for the whole round
            options = replace(options, max_cost=max(0.0, options.max_cost - run.generate.spent))
        templates = Expander(derived).templates
        with Store(store_path, lock=False) as store:
            fresh.extend(Gates(derived, store).passing(ExampleRenderer(derived, templates).examples(store)))

    deduped = dedupe(fresh, spec.dedupe, existing=[*train.examples, *test.examples])
    new: list[Example] = []
    for name in names:
        kept = [e for e in deduped.kept if e.category == name]
        chosen = _round_robin(kept, per_category)
        counts = deduped.counts.get(name)
        report.added[name] = {
            "wanted": per_category,
            "generated": counts.before if counts else 0,
            "duplicates": (counts.exact + counts.near) if counts else 0,
            "added": len(chosen),
        }
        if len(chosen) < per_category:
            report.warnings.append(f"{name}: only {len(chosen)} of {per_category} new examples were distinct")
        new.extend(chosen)

    rows, refused = convert_all(new, "openai-chat", spec.output)
    refused_ids = {r.example_id for r in refused}
    accepted = [e for e in new if e.id not in refused_ids]
    if refused:
        report.warnings.append(f"{len(refused)} new examples cannot be written as openai-chat "
                               f"(first: {refused[0].reason})")
    entries = list(zip(train.lines, train.metadata, strict=True))
    entries += [(json_line(row), {**e.metadata(), "split": "train"}) for row, e in zip(rows, accepted, strict=True)]
    seed = spec.split.seed
    random.Random(f"topup:{seed}:{round_}").shuffle(entries)
    write_text_atomic(target, "".join(line + "\n" for line, _ in entries))
    write_jsonl_atomic(directory / f"metadata.v{round_ + 1}.jsonl",
                       [*(meta for _, meta in entries), *test.metadata])
    report.train = len(entries)

    manifest.setdefault("topups", []).append({
        "round": round_,
        "train": target.name,
        "from": current.name,
        "spec": spec.name,
        "spec_hash": spec.spec_hash(),
        kind: record,
        "categories": {s.category: {**s.as_dict(), **report.added.get(s.category, {"added": 0}),
                                    **({"why": report.why[s.category]} if s.category in report.why else {})}
                       for s in weak},
        "train_examples": len(entries),
        "added": len(accepted),
        "seed": seed,
        "warnings": report.warnings,
    })
    write_text_atomic(directory / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return report


topup = synchronous(topup_async)
