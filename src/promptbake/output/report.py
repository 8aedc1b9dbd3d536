"""The HTML report: a built dataset (or an eval file) in one self-contained page.

People would rather look than read 2,000 JSONL lines. The page needs nothing but a browser and the
file itself: plots are inline SVG drawn by matplotlib (``plots.py``), styles and the few lines of
script that filter the example table are inline, and no font, script or image is fetched.

What a dataset report knows depends on what is at hand. The built files (``manifest.json``,
``metadata.jsonl``, ``train``/``test.jsonl``, ``dropped.jsonl``) give the counts, the kept examples
and the drop reasons. The store, when found (``DIR/promptbake.db`` or ``--store``), adds the run:
spec text, timings, failures by reason, rounds, the estimated cost, the requested count of every
cell, and the text of every dropped example, re-rendered from the stored answers.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from promptbake.curate.checks import last_assistant
from promptbake.errors import DataFileError, OutputError, PromptbakeError
from promptbake.output.bounded import AxisGrid, Buckets, IdIndex, Reservoir, batches, fair_shares
from promptbake.output.dataset import Dataset
from promptbake.output.dialogues import Conversations
from promptbake.output.jsonl import read_jsonl
from promptbake.output.visible import visible
from promptbake.plan.expand import Expander
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.specification.templates import Templates

REPORT = "report.html"
SAMPLE = 1000  # examples of each kind (kept, dropped) in the page's table, shared between the categories
DIST_SAMPLE = 20_000  # kept examples (and dropped ones with text) whose text the figures read; past it, a sample
CELL_ROWS = 1000  # cells the per-cell table lists
GRID_WALK = 1_000_000  # cells walked for the requested counts (a 10^7-cell grid took minutes)
HEAT_VALUES = 200  # values an axis of the heat map may take (it draws the first plots.HEATMAP_MAX of them)
BATCH = 2000  # examples looked up in the id index at a time
OPENING_WORDS = 3
STAGE_COLORS = {"kept": "#59a14f", "rejected_by_checks": "#e15759", "filtered": "#b07aa1", "judged_out": "#76b7b2",
                "exact_dupes": "#f28e2b", "near_dupes": "#edc948", "surplus": "#bab0ac", "balanced_away": "#9c755f"}


# --- reading what the build wrote -------------------------------------------------------------


@dataclass
class Row:
    """One line of the browsable table."""

    status: str  # train, test, dropped (or pass, fail, unscored, error in an eval report)
    category: str
    cell: str
    prompt: str
    answer: str
    reason: str = ""
    flags: list[str] = field(default_factory=list)  # the built-in heuristics it trips (curate/quality.py)


@dataclass
class StoreFacts:
    """What only the store knows about the run. Its examples are not held: the report's one pass
    re-renders them from ``path``."""

    path: Path
    totals: dict[str, Any]
    runs: list[dict[str, Any]]
    attempt_errors: dict[str, int]
    failures: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    spec_text: str | None  # as the run saved it: the spec file may have moved or changed since
    cut_off: dict[str, tuple[int, int]] = field(default_factory=dict)  # category → (cut off, answers)
    rejections: list[tuple[str, int]] = field(default_factory=list)  # why answers were rejected
    fanout_cells: dict[str, str] = field(default_factory=dict)  # fan-out drop id → its cell key


@dataclass
class CellTally:
    """The per-cell table's rows: the first ``limit`` cells (the spec's in grid order, then those of
    kept examples), with what became of their examples; and, over every cell, the counts of the
    heat map's axes and the requested count per category."""

    limit: int
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell key → its variables
    requested: dict[str, int] = field(default_factory=dict)  # cell key → the spec's count
    splits: dict[str, Counter[str]] = field(default_factory=dict)
    fates: dict[str, Counter[str]] = field(default_factory=dict)
    by_category: Counter[str] = field(default_factory=Counter)  # the spec's requested count per category
    grid: AxisGrid = field(default_factory=lambda: AxisGrid(HEAT_VALUES))
    more: bool = False  # cells left out of the table
    total: int | None = None  # the grid's cell count, when the spec is known

    def track(self, key: str, values: dict[str, Any]) -> bool:
        if key not in self.values:
            if len(self.values) >= self.limit:
                self.more = True
                return False
            self.values[key] = values
            self.splits[key], self.fates[key] = Counter(), Counter()
        return True

    def fate(self, key: str, *fates: str) -> None:
        if key in self.fates:
            self.fates[key].update(fates)


@dataclass
class ReportData:
    """What a dataset report draws: the built ``Dataset`` (its directory, manifest and splits as
    build wrote them, read once by ``dataset_context``) and what the page adds to it: the spec, the
    store's facts when found, and the requested count of every cell."""

    dataset: Dataset
    manifest: dict[str, Any]  # the manifest's keys as written (older builds lack some)
    spec: Spec | None = None
    templates: Templates | None = None  # the spec's (for re-rendering the store's examples)
    estimated: str = ""  # the cost estimated before the run, as the glance words it
    store: StoreFacts | None = None
    notes: list[str] = field(default_factory=list)
    cells: CellTally = field(default_factory=lambda: CellTally(CELL_ROWS))

    @property
    def directory(self) -> Path:
        return self.dataset.directory


def _store_facts(store_path: Path, spec: Spec) -> StoreFacts:
    from promptbake.store.db import Store
    from promptbake.teacher.parse import CUT_OFF

    with Store(store_path, lock=False) as store:
        rounds = []
        for round_ in sorted({0, *store.rounds(spec.name)}):
            wants = store.wants(spec.name, round_)
            rounds.append({"round": round_, "cells": len(wants), "wanted": sum(wants.values())})
        return StoreFacts(
            path=store_path,
            totals=store.totals(spec.name),
            runs=store.runs(spec.name),
            attempt_errors=store.attempt_errors(spec.name),
            failures=store.failures(spec.name),
            rounds=rounds,
            spec_text=next((text for name, _, text in store.saved_specs() if name == spec.name), None),
            cut_off=store.cut_off(spec.name, CUT_OFF),
            rejections=store.rejection_reasons(spec.name),
            fanout_cells={f"{d.request_id}:{d.item_index}": d.cell_key for d in store.fanout_drops(spec.name)},
        )


def _store_examples(data: ReportData) -> Iterator[Example]:
    """Every example the build saw, re-rendered from the store's answers, one at a time: of a
    best-of-n step, the choice the build picked (the others were candidates, not examples)."""
    from promptbake.curate.examples import ExampleRenderer
    from promptbake.curate.gates import Gates
    from promptbake.store.db import Store

    assert data.store is not None and data.spec is not None and data.templates is not None
    with Store(data.store.path, lock=False) as store:
        yield from Gates(data.spec, store).picked(ExampleRenderer(data.spec, data.templates).examples(store))


def load_dataset(directory: str | Path, store_path: str | Path | None = None, spec: Spec | str | Path | None = None
                 ) -> ReportData:
    """The built files of ``directory``, with the store's facts when the store is found. The page
    shows the build (``train.jsonl``, whose counts the manifest holds), not a later top-up version."""
    from promptbake.specification.models import load_spec
    from promptbake.store.saved_specs import spec_from_store

    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise DataFileError(f"{directory}: no manifest.json; give a directory written by `promptbake build`")
    dataset = Dataset.load(directory, train_version=1)
    data = ReportData(dataset, dataset.manifest.model_dump(mode="json", exclude_unset=True))
    if dataset.manifest.topups:
        latest = dataset.manifest.topups[-1]
        data.notes.append(f"top-up rounds since this build made {latest.get('train')} the training set "
                          f"({latest.get('train_examples', '?')} examples); this page shows the build's train.jsonl")
    store = Path(store_path) if store_path is not None else directory / "promptbake.db"
    if store_path is not None and not store.exists():
        raise DataFileError(f"{store}: no such store")
    if isinstance(spec, str | Path):
        spec = load_spec(spec)
    if spec is None and store.exists():
        spec = spec_from_store(store, data.manifest.get("spec"))
    data.spec = spec
    if spec is not None:
        data.estimated = _estimated_cost(data)  # before the grid below: one inputs table at a time
        expander = Expander(spec)  # not kept: its inputs table is as long as the dataset
        data.templates = expander.templates
        tally = data.cells
        tally.total = expander.totals()[0]
        # the category table's rows are the manifest's: only their requested counts are kept (a grid
        # without a category expression has a category per cell)
        shown = set(data.manifest.get("categories", {}))
        whole = tally.total <= GRID_WALK  # else counts over part of the grid would mislead: none
        for cell in itertools.islice(expander.cells(), GRID_WALK if whole else CELL_ROWS):
            if whole:
                if cell.category in shown:
                    tally.by_category[cell.category] += cell.count
                tally.grid.add(cell.values, wanted=cell.count)
            if tally.track(cell.key, cell.values):
                tally.requested[cell.key] = cell.count
        if not whole:
            data.notes.append(f"the grid has {tally.total:,} cells: requested counts are shown for grids of at most "
                              f"{GRID_WALK:,} (the heat map shows kept counts)")
        if store.exists():
            data.store = _store_facts(store, spec)
    if data.store is None:
        data.notes.append(f"no store at {store}: timings, failures" + ("" if spec else ", requested counts")
                          + " and the text of dropped examples are not shown (pass --store)")
    return data


# --- what the page shows ----------------------------------------------------------------------


def _label(cell: dict[str, Any], axes: Iterable[str] | None = None) -> str:
    keys = list(axes) if axes is not None else list(cell)
    return " · ".join(str(cell.get(k, "")) for k in keys)


def _prompt(messages: list[dict[str, Any]]) -> str:
    """Everything before the last assistant turn; roles named when there is more than a user turn."""
    end = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    turns = [m for m in messages[:end] if isinstance(m.get("content"), str)]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return str(turns[0]["content"])
    return "\n".join(f"{m.get('role')}: {m['content']}" for m in turns)


def _judge_score(by_judge: dict[str, int]) -> float | None:
    """A kept example's judge score (the lowest, with several judges: the one that gated it), when
    the build recorded one in its metadata row."""
    scores = [v for v in by_judge.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    return float(min(scores)) if scores else None


def _drop_reason(row: dict[str, Any]) -> str:
    """One line from a ``dropped.jsonl`` row: the gate and its reasons (``checks: regex: no match``,
    ``judge: score 2 < 4 — too polite``), or the duplicate and what it duplicates."""
    reason = str(row.get("reason") or "dropped")
    if row.get("detail"):
        reason += f": {row['detail']}"
    if row.get("reasoning"):
        reason += f" — {row['reasoning']}"
    if row.get("duplicate_of"):
        similarity = row.get("similarity")
        reason += f" duplicate of {row['duplicate_of']}" + (f" (similarity {similarity:.2f})"
                                                             if isinstance(similarity, float) else "")
    return reason


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams (Li et al. 2016): 1.0 means nothing repeats."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.lower().split()
        grams = list(zip(*(words[i:] for i in range(n)), strict=False))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def openings(texts: Iterable[str], words: int = OPENING_WORDS) -> Counter[str]:
    return Counter(" ".join(text.split()[:words]) for text in texts if text.strip())


@dataclass
class Listed:
    """A row of the example table before it is drawn: its text is made (and its flags read) only
    for the rows the page shows."""

    order: int
    status: str
    category: str
    cell: str
    example: Example | None  # None: a drop without text (no store, or a fan-out item)
    reason: str = ""


@dataclass
class Classified:
    """What one pass over every example the build saw keeps: exact counts, the first rows of each
    category and kind for the table, a uniform sample per category for the figures that read text,
    and the table's cells (``data.cells``) filled in."""

    table: dict[str, Buckets[Listed]]  # kept, dropped
    kept: Reservoir[Example]  # per category
    dropped: Reservoir[Example]  # dropped examples with text
    similarity: Reservoir[float]
    exact: int = 0
    conversations: Conversations = field(default_factory=Conversations)


def _caps(data: ReportData, sample: int) -> tuple[dict[str, int], dict[str, int]]:
    """How many rows of each category the table may need, kept and dropped: the manifest's counts
    shared out as the page will share them, so a pass holds no more than it may show."""
    counts = data.manifest.get("categories", {})
    kept = {name: c.get("train", 0) + c.get("test", 0) for name, c in counts.items()}
    dropped = {name: c.get("rows", 0) - kept[name] for name, c in counts.items()}
    return fair_shares(kept, sample), fair_shares(dropped, sample)


def _classify(data: ReportData, sample: int, folder: Path) -> Classified:
    """One pass over the kept examples (the files), ``dropped.jsonl`` and, when the store is here,
    every example it renders to (dropped ones get their text from there). Anything rendered that is
    neither kept nor listed in ``dropped.jsonl`` (a gate's drop or a duplicate) was cut by the cell's
    count or by balance. Ids go through a SQLite file in ``folder``, not a set in memory."""
    kept_caps, dropped_caps = _caps(data, sample)
    per_category = max(100, DIST_SAMPLE // max(1, len(kept_caps)))
    fair = max(1, sample // max(1, len(kept_caps)))
    out = Classified({"kept": Buckets(kept_caps, fair), "dropped": Buckets(dropped_caps, fair)},
                     Reservoir(per_category), Reservoir(DIST_SAMPLE), Reservoir(DIST_SAMPLE))
    tally, order = data.cells, 0
    index = IdIndex(folder)
    try:
        for split in ("train", "test"):
            for batch in batches(data.dataset.stream(split), BATCH):
                index.keep(example.id for example in batch)
                for example in batch:
                    order += 1
                    key = example.provenance.get("cell_key") or _label(example.cell)
                    if tally.track(key, example.cell):
                        tally.splits[key][split] += 1
                    tally.grid.add(example.cell, kept=1)
                    out.table["kept"].add(example.category, Listed(order, split, example.category,
                                                                   _label(example.cell), example))
                    out.kept.add(example.category, example)
                    out.conversations.add(split, example)
        listed = read_jsonl(data.directory / "dropped.jsonl", "dropped") \
            if (data.directory / "dropped.jsonl").exists() else iter(())
        for drops in batches((row for _, row in listed), BATCH):
            for drop in drops:
                if drop.get("reason") == "exact":
                    out.exact += 1
                elif drop.get("reason") == "near" and isinstance(drop.get("similarity"), int | float):
                    out.similarity.add("", float(drop["similarity"]))
                if data.store is None:
                    order += 1
                    category = str(drop.get("category", ""))
                    out.table["dropped"].add(category, Listed(order, "dropped", category, "", None,
                                                              _drop_reason(drop)))
            if data.store is not None:
                index.drop(drops)
        if data.store is None:
            return out
        for batch in batches(_store_examples(data), BATCH):
            kept, dropped = index.look_up([example.id for example in batch])
            for example in batch:
                key = example.provenance.get("cell_key", "")
                tally.fate(key, "generated")
                if example.id in kept:
                    continue
                if example.id in dropped:
                    fate, reason = str(dropped[example.id].get("reason")), _drop_reason(dropped[example.id])
                else:
                    fate, reason = "count/balance", "not needed: its cell already had its count, or balance left it out"
                tally.fate(key, fate)
                order += 1
                out.table["dropped"].add(example.category, Listed(order, "dropped", example.category,
                                                                  _label(example.cell), example, reason))
                out.dropped.add("", example)
        # fan-out items were dropped before the next step was paid for (repeats, or a user line a filter
        # drops): no example to render, but each counts in its cell, as in its category
        for drop in index.unrendered():
            order += 1
            category = str(drop.get("category", ""))
            out.table["dropped"].add(category, Listed(order, "dropped", category, "", None, _drop_reason(drop)))
            cell = data.store.fanout_cells.get(str(drop.get("id")))
            if cell is not None:
                tally.fate(cell, "generated", str(drop.get("reason")))
        return out
    finally:
        index.close()


class _Flags:
    """The heuristics' flags of each example read, read once (a shown row is often in the sample)."""

    def __init__(self) -> None:
        self.known: dict[str, list[str]] = {}

    def __call__(self, example: Example) -> list[str]:
        from promptbake.curate.quality import flags

        if example.id not in self.known:
            self.known[example.id] = flags(example.messages)
        return self.known[example.id]


def _rows(classified: Classified, sample: int, flags: _Flags) -> tuple[list[Row], str]:
    """The table's rows: at most ``sample`` of each kind, shared fairly between the categories, in the
    order the pass met them; and a note when that is not every example."""
    rows: list[Listed] = []
    parts = []
    for kind in ("kept", "dropped"):
        buckets = classified.table[kind]
        picked, most = buckets.pick(sample)
        rows += picked
        total = sum(buckets.counts.values())
        if len(picked) < total:
            parts.append(f"{len(picked):,} of {total:,} {kind} examples (at most {most:,} of a category)")
    note = ("showing " + " and ".join(parts) + "; the counts above are of every example (--sample changes this)"
            if parts else "")
    rows.sort(key=lambda listed: (listed.status == "dropped", listed.order))
    return [Row(r.status, r.category, r.cell, _prompt(r.example.messages) if r.example else "",
                last_assistant(r.example.messages) if r.example else "", r.reason,
                flags(r.example) if r.example else []) for r in rows], note


def _category_table(data: ReportData) -> tuple[list[str], list[list[Any]]]:
    """The manifest's per-category counts, after what the spec requested (when known), with what
    balance cut made explicit."""
    categories = data.manifest.get("categories", {})
    columns = list(dict.fromkeys(k for counts in categories.values() for k in counts))
    drops = [c for c in columns if c not in ("rows", "kept", "train", "test")]
    with_balance = "rows" in columns and "kept" in columns
    requested = data.cells.by_category
    rows = []
    for name, counts in categories.items():
        values = [*([requested[name]] if requested else []), *(counts.get(c, 0) for c in columns)]
        if with_balance:
            values.append(counts.get("rows", 0) - sum(counts.get(c, 0) for c in drops) - counts.get("kept", 0))
        rows.append([name, *values])
    header = ["category", *(["requested"] if requested else []), *columns,
              *(["balanced_away"] if with_balance else [])]
    if rows:
        rows.append(["all", *(sum(r[i] for r in rows) for i in range(1, len(header)))])
    return header, rows


@dataclass
class CellView:
    columns: list[str]
    rows: list[list[Any]]
    axes: list[str]
    heatmap: Markup | None
    share: bool  # the heat map's colour is kept ÷ requested (the spec is known), else kept
    total: int = 0  # cells in the grid (or listed, without the spec)
    note: str = ""


def _cells(data: ReportData) -> CellView:
    """Per-cell rows (requested, generated, drops, kept, train, test) of the first ``CELL_ROWS``
    cells and the heat map over the two main axes: kept per cell, coloured by the share of the
    requested count when known. An axis of more than ``HEAT_VALUES`` values is passed over."""
    from promptbake.output import plots

    tally = data.cells
    requested = tally.requested
    fates_seen = list(tally.fates.values())
    fate_names = [f for f in ("checks", "filters", "judge", "exact", "near", "count/balance")
                  if any(f in c for c in fates_seen)]
    fate_names += sorted({f for c in fates_seen for f in c} - {"generated", *fate_names})
    axes = tally.grid.axes()
    view = CellView(["cell", "requested", "generated", *fate_names, "kept", "train", "test"], [], axes, None,
                    bool(tally.by_category), tally.total or len(tally.values))
    for key, values in tally.values.items():
        fates, got = tally.fates[key], tally.splits[key]
        view.rows.append([_label(values), requested.get(key, ""),
                          fates["generated"] if data.store else "", *(fates[f] for f in fate_names),
                          got["train"] + got["test"], got["train"], got["test"]])
    if tally.more:
        view.note = (f"the table lists the first {len(view.rows):,} of {tally.total:,} cells" if tally.total
                     else f"the table lists the first {len(view.rows):,} cells (there are more)")
    if tally.grid.wide:
        view.note += ("; " if view.note else "") + (
            f"no heat map over {', '.join(tally.grid.wide)}: more than {HEAT_VALUES} values")
    if not view.axes:
        return view
    at = tally.grid.at(view.axes)
    rows_axis = list(dict.fromkeys(r for r, _ in at))
    cols_axis = list(dict.fromkeys(c for _, c in at))
    grid = [[(r, c) if (r, c) in at else None for c in cols_axis] for r in rows_axis]
    values_grid = [[None if p is None else at[p][0] / at[p][1] if view.share and at[p][1] else at[p][0]
                    for p in row] for row in grid]
    labels = [["" if p is None else f"{at[p][0]}/{at[p][1]}" if view.share else str(at[p][0]) for p in row]
              for row in grid]
    view.heatmap = plots.heatmap("heatmap", rows_axis, cols_axis, values_grid, labels, view.axes[0],
                                 view.axes[1] if len(view.axes) > 1 else "",
                                 "kept ÷ requested" if view.share else "kept", vmax=1.0 if view.share else None)
    return view


def _glance(data: ReportData) -> list[tuple[str, str]]:
    m = data.manifest
    usage = (data.store.totals if data.store else None) or m.get("usage", {})
    teacher = m.get("teacher", {})
    items = [
        ("spec", f"{m.get('spec', '?')} (hash {m.get('spec_hash', '?')})"),
        ("teacher", f"{teacher.get('kind', '?')}: {', '.join(teacher.get('models', [])) or '?'}"),
        ("requests", f"{usage.get('requests', 0):,} ({usage.get('ok', 0):,} ok, {usage.get('failed', 0):,} failed"
                     + (f", {usage['pending']:,} pending" if usage.get("pending") else "")
                     + f"), {usage.get('attempts', 0):,} attempts"),
        ("tokens", f"{usage.get('prompt_tokens', 0):,} prompt + {usage.get('completion_tokens', 0):,} completion"),
        ("cost", f"${usage.get('cost', 0):.4f} actual" + data.estimated),
        ("dataset", f"{m.get('train', 0):,} train, {m.get('test', 0):,} test, seed {m.get('seed', '?')}"),
    ]
    if data.store and data.store.runs:
        spent = sum(r["finished_at"] - r["started_at"] for r in data.store.runs if r["finished_at"])
        items.append(("time", f"{spent:,.1f} s over {len(data.store.runs)} run(s)"))
    if "validation" in m:
        items.append(("validation", "ok" if m["validation"].get("ok") else f"{m['validation'].get('errors')} errors"))
    return items


def _estimated_cost(data: ReportData) -> str:
    if data.spec is None:
        return ""
    from promptbake.plan.estimate import estimate

    models = data.manifest.get("teacher", {}).get("models") or [data.spec.teacher.model]
    if not models[0] and data.spec.teacher.kind != "local":
        return ""
    from promptbake.teacher.config import model_name

    model = models[0] or model_name(data.spec.teacher)
    guess = estimate(data.spec, model, data.spec.teacher.kind)
    return f", ${guess.cost:.4f} estimated before the run" if guess.price_known or guess.cost == 0 else (
        f", estimate unknown (no price for {model})")


def _runs(data: ReportData) -> list[list[str]]:
    if data.store is None:
        return []

    def when(t: float | None) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"

    return [[r["command"], when(r["started_at"]), f"{r['finished_at'] - r['started_at']:.1f} s"
             if r["finished_at"] else "-", r["status"]] for r in data.store.runs]


def _distributions(data: ReportData, classified: Classified) -> dict[str, Any]:
    """Tokens, answer lengths and judge scores of the kept examples (of a uniform sample of each
    category's, past ``DIST_SAMPLE`` examples; totals scaled to the whole), and the similarity of
    the near duplicates dropped."""
    from promptbake.output import plots
    from promptbake.teacher.tokens import count_messages, count_tokens, encoding_for

    models = data.manifest.get("teacher", {}).get("models") or [None]
    model = models[0]
    prompt_tokens, answer_tokens = [], []
    totals = [0.0, 0.0]
    lengths: dict[str, list[float]] = defaultdict(list)
    scores: dict[str, list[float]] = defaultdict(list)
    sample = classified.kept
    for category, examples in sample.items.items():
        scale = sample.seen[category] / len(examples)
        for example in examples:
            messages = example.messages
            answer = last_assistant(messages)
            end = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
            prompt_tokens.append(count_messages(messages[:end], model))
            answer_tokens.append(count_tokens(answer, model))
            totals[0] += prompt_tokens[-1] * scale
            totals[1] += answer_tokens[-1] * scale
            lengths[category].append(len(answer))
            score = _judge_score(example.scores)
            if score is not None:
                scores[category].append(score)
    out: dict[str, Any] = {"encoding": encoding_for(model).name, "tokens": None, "lengths": None, "token_stats": [],
                           "scores": None, "similarity": None,
                           "sampled": _sampled(sample) if sample.sampled else ""}
    if prompt_tokens:
        out["tokens"] = plots.histograms("tokens", {"prompt": prompt_tokens, "answer": answer_tokens},
                                         f"tokens per example ({out['encoding']})")
        out["lengths"] = plots.boxes("lengths", dict(sorted(lengths.items())), "answer length (characters)")
        out["token_stats"] = [
            (name, min(v), statistics.median(v), max(v), round(total))
            for name, v, total in (("prompt", prompt_tokens, totals[0]), ("answer", answer_tokens, totals[1]))
        ]
    if scores:
        out["scores"] = plots.boxes("judge", dict(sorted(scores.items())), "judge score")
    similar = classified.similarity.items.get("", [])
    if similar:
        out["similarity"] = plots.histograms("similarity", {"near-duplicate pairs": similar},
                                             "estimated Jaccard similarity of the dropped example to the one kept")
    out["exact"], out["near"], out["near_drawn"] = classified.exact, classified.similarity.seen[""], len(similar)
    return out


def _sampled(sample: Reservoir[Example]) -> str:
    return (f"from a uniform sample of {sample.read():,} of the {sum(sample.seen.values()):,} kept examples "
            f"(at most {sample.size:,} of a category)")


def _diversity(classified: Classified) -> tuple[list[dict[str, Any]], Any, list[tuple[str, int]]]:
    from promptbake.output import plots

    sample = classified.kept
    answers = {name: [last_assistant(e.messages) for e in examples] for name, examples in sample.items.items()}
    table: list[dict[str, Any]] = []
    for name in sorted(answers):
        prompts = [_prompt(e.messages) for e in sample.items[name]]
        table.append({
            "category": name, "n": sample.seen[name], "read": len(answers[name]),
            "answer_d1": distinct_n(answers[name], 1), "answer_d2": distinct_n(answers[name], 2),
            "prompt_d2": distinct_n(prompts, 2),
            "openings": [(text, n) for text, n in openings(answers[name]).most_common(3) if n > 1],
        })
    if not table:
        return table, None, []
    plot = plots.grouped_bars("diversity", [t["category"] for t in table], {
        "answers distinct-1": [t["answer_d1"] for t in table],
        "answers distinct-2": [t["answer_d2"] for t in table],
        "prompts distinct-2": [t["prompt_d2"] for t in table],
    }, "distinct n-grams ÷ all n-grams (1 = nothing repeats)", xlim=(0, 1))
    everywhere = [(t, n) for t, n in openings(a for v in answers.values() for a in v).most_common(10) if n > 1]
    return table, plot, everywhere


def _sizes(manifest: dict[str, Any]) -> tuple[list[str], list[list[Any]], Markup | None]:
    """Each nested subset's examples per category, and the full train split's, side by side."""
    from promptbake.output import plots

    if not manifest.get("sizes"):
        return [], [], None
    train = {name: c.get("train", 0) for name, c in manifest.get("categories", {}).items()}
    subsets = {f"train.{n}": counts for n, counts in manifest["sizes"].items()} | {"train": train}
    names = sorted({c for counts in subsets.values() for c in counts})
    table = [[c, *(counts.get(c, 0) for counts in subsets.values())] for c in names]
    totals = [sum(counts.values()) for counts in subsets.values()]
    shares = {c: [100 * counts.get(c, 0) / total if total else 0 for counts, total in
                  zip(subsets.values(), totals, strict=True)] for c in names}
    plot = plots.stacked_bars("sizes", list(subsets), shares, "share of the subset per category (%)")
    return ["category", *subsets], [*table, ["all", *totals]], plot


def _funnel(header: list[str], rows: list[list[Any]]) -> Markup | None:
    """Per category: kept, and what each stage dropped, as one stacked bar."""
    from promptbake.output import plots

    rows = [r for r in rows if r[0] != "all"]
    if not rows:
        return None
    stages = [c for c in header[1:] if c not in ("requested", "rows", "kept", "train", "test")]
    stacks = {"kept": [r[header.index("kept")] for r in rows]} if "kept" in header else {}
    stacks.update({s: [r[header.index(s)] for r in rows] for s in stages if any(r[header.index(s)] for r in rows)})
    return plots.stacked_bars("funnel", [r[0] for r in rows], stacks, "examples", STAGE_COLORS)


def _quality(data: ReportData, classified: Classified, flags: _Flags) -> Any:
    """The quality panel over the sample each category's figures read (every example, below
    ``DIST_SAMPLE``), its counts scaled to the whole category."""
    from promptbake.output.quality_panel import Flagged, quality_panel

    kept: dict[str, Flagged] = {}
    for category, examples in classified.kept.items.items():
        kept[category] = Flagged(classified.kept.seen[category])
        for example in examples:
            kept[category].add(flags(example))
    dropped = Flagged(classified.dropped.seen[""])
    for example in classified.dropped.items.get("", []):
        dropped.add(flags(example))
    panel = quality_panel(kept, dropped, data.store.cut_off if data.store else None,
                          data.store.rejections if data.store else None)
    if classified.kept.sampled or classified.dropped.sampled:
        panel.sampled = (f"flags read on a uniform sample of each category's examples (at most "
                         f"{classified.kept.size:,} kept of a category, {classified.dropped.size:,} dropped), "
                         "the counts scaled to all of them")
    return panel


def _attempt_errors(data: ReportData) -> list[tuple[str, int]]:
    """Failed attempts by kind, each rejection with its reasons: "rejected 18" says why."""
    if data.store is None:
        return []
    rows: list[tuple[str, int]] = []
    for kind, count in data.store.attempt_errors.items():
        rows.append((kind, count))
        if kind == "rejected":
            rows += [(f"  rejected: {reason}", n) for reason, n in data.store.rejections]
    return rows


def dataset_context(data: ReportData, sample: int = SAMPLE) -> dict[str, Any]:
    """The page's context from one pass over the dataset (and the store's examples): what it holds
    is bounded by ``sample``, ``DIST_SAMPLE`` and ``CELL_ROWS``, not by the number of examples."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="promptbake-report-") as folder:
        classified = _classify(data, sample, Path(folder))
    flags = _Flags()
    rows, sample_note = _rows(classified, sample, flags)
    cells = _cells(data)
    category_columns, category_rows = _category_table(data)
    diversity, diversity_plot, common_openings = _diversity(classified)
    size_columns, size_rows, size_plot = _sizes(data.manifest)
    failed_requests = Counter((f["step"], (f["error"] or "")[:120]) for f in data.store.failures) if data.store else {}
    return {
        "kind": "dataset",
        "title": f"promptbake report: {data.manifest.get('spec', data.directory.name)}",
        "source": str(data.directory),
        "notes": data.notes + [f"warning: {w}" for w in data.manifest.get("warnings", [])],
        "glance": _glance(data),
        "runs": _runs(data),
        "rounds": data.store.rounds if data.store else [],
        "attempt_errors": _attempt_errors(data),
        "quality": _quality(data, classified, flags),
        "flag_options": [(key, label) for key, label, _ in _heuristics()],
        "failed_requests": sorted(failed_requests.items(), key=lambda kv: -kv[1]),
        "spec_text": data.store.spec_text if data.store else _spec_text(data.spec),
        "category_columns": category_columns, "category_rows": category_rows,
        "funnel": _funnel(category_columns, category_rows),
        "cells": cells,
        "dist": _distributions(data, classified),
        "diversity": diversity, "diversity_plot": diversity_plot, "common_openings": common_openings,
        "diversity_sampled": _sampled(classified.kept) if classified.kept.sampled else "",
        "opening_words": OPENING_WORDS,
        "size_columns": size_columns, "size_rows": size_rows, "size_plot": size_plot,
        "conversations": classified.conversations.view(),
        "rows": rows, "sample_note": sample_note,
        "row_categories": sorted({r.category for r in rows}),
        "statuses": ["train", "test", "dropped"],
    }


def _heuristics() -> tuple[tuple[str, str, str], ...]:
    from promptbake.curate.quality import HEURISTICS

    return HEURISTICS


def _spec_text(spec: Spec | None) -> str | None:
    if spec is None:
        return None
    from promptbake.store.saved_specs import spec_text

    return spec_text(spec)


# --- eval files -------------------------------------------------------------------------------


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    return row["settings"] if isinstance(row.get("settings"), dict) else {}


def eval_context(path: str | Path, sample: int = SAMPLE) -> dict[str, Any]:
    """Pass rate and mean score per category; for a sweep, both against each swept setting."""
    from promptbake.output import plots
    from promptbake.output.eval_results import CategoryScore, load_eval, setting_label

    path = Path(path)
    pooled = load_eval(path)  # validates every line, names a bad one
    rows = [row for _, row in read_jsonl(path, "eval")]
    settings = {setting_label(_settings(row)): _settings(row) for row in rows}
    swept = [k for k in dict.fromkeys(k for s in settings.values() for k in s)
             if len({json.dumps(s.get(k)) for s in settings.values()}) > 1
             and all(isinstance(s.get(k), int | float) for s in settings.values())]
    by_setting: dict[tuple[str, str], CategoryScore] = {}
    by_value: dict[str, dict[str, dict[float, CategoryScore]]] = {name: {} for name in swept}
    for row in rows:
        for category in (row["category"], "all"):
            by_setting.setdefault((category, setting_label(_settings(row))), CategoryScore(category)).add(
                row.get("pass"), row.get("score"))
            for name in swept:
                by_value[name].setdefault(category, {}).setdefault(
                    float(row["settings"][name]), CategoryScore(category)).add(row.get("pass"), row.get("score"))
    metric = "pass" if any(s.with_pass for s in pooled.values()) else "score"
    metric_name = "pass rate" if metric == "pass" else "mean score"
    categories = list(pooled)
    bars = plots.grouped_bars("eval", categories, {
        "pass rate": [pooled[c].pass_rate for c in categories],
        "mean score": [pooled[c].mean_score for c in categories],
    }, "pass rate / mean score (0-1)", xlim=(0, 1))
    panels = {name: {category: [(x, s.value(metric)) for x, s in points.items() if s.value(metric) is not None]
                     for category, points in series.items()} for name, series in by_value.items()}
    table: list[list[Any]] = [[category, label, s.n, s.pass_rate, s.mean_score]
                              for (category, label), s in by_setting.items()
                              if category != "all" or len(categories) > 1]
    table.sort(key=lambda r: (r[0] == "all", r[0], list(settings).index(r[1])))
    best: dict[str, tuple[str, float]] = {}
    for category, label, _, pass_rate, mean in table:
        value = pass_rate if metric == "pass" else mean
        if value is not None and (category not in best or value > best[category][1]):
            best[category] = (label, value)
    sample_rows = []
    for row in rows:
        status = ("error" if row.get("output") is None and row.get("error") else
                  "unscored" if row.get("pass") is None else "pass" if row["pass"] else "fail")
        reason = "; ".join(str(x) for x in [row.get("error"), *(row.get("failures") or []),
                                            row.get("judge_reasoning")] if x)
        score = row.get("score")
        sample_rows.append(Row(status, row["category"], setting_label(_settings(row)),
                               "" if score is None else f"score {score}", str(row.get("output") or ""), reason))
    return {
        "kind": "eval", "title": f"promptbake eval report: {path.name}", "source": str(path),
        "notes": [], "metric_name": metric_name, "n": len(rows),
        "pooled": [[c, s.n, s.pass_rate, s.mean_score] for c, s in pooled.items()],
        "bars": bars, "sweep": plots.lines("sweep", panels, metric_name) if panels else None,
        "swept": swept, "setting_rows": table, "best": best if len(settings) > 1 else {},
        "rows": sample_rows[:sample], "sample_note": f"showing the first {sample} of {len(rows)} answers"
        if len(rows) > sample else "", "row_categories": sorted({r.category for r in sample_rows}),
        "statuses": ["pass", "fail", "unscored", "error"],
    }


# --- writing ----------------------------------------------------------------------------------


def render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    # every text the page prints shows its invisible characters (⟨U+200B⟩), attributes included,
    # so the table's filters still match; markup (the plots) is printed as it is
    env = Environment(loader=PackageLoader("promptbake.output", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, finalize=_shown)
    env.filters["num"] = _num
    return env.get_template(f"{context['kind']}.html.j2").render(**context)


def _shown(value: Any) -> Any:
    return visible(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def _num(value: Any, digits: int = 2) -> Markup | str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _write(page: Callable[[], str], out: Path, source: Path) -> Path:
    """Draw the page and write it to ``out``. The report is written after the data and only reads
    it: whatever goes wrong while drawing (a plot matplotlib cannot draw, a bug) is an
    ``OutputError`` saying the data is untouched, never a traceback that reads like a lost run."""
    from promptbake.output.atomic import write_text_atomic

    try:
        text = page()
    except PromptbakeError:
        raise
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise OutputError(f"{out}: the report could not be drawn ({reason[:300]}); {source} is untouched "
                          "and complete") from exc
    write_text_atomic(out, text)  # an unwritable path is an OutputError naming it
    return out


def write_report(directory: str | Path, out: str | Path | None = None, *, store: str | Path | None = None,
                 spec: Spec | str | Path | None = None, sample: int = SAMPLE, sections: Sequence[Markup] = ()) -> Path:
    """``DIR/report.html`` (or ``out``) for the dataset built in ``directory``; ``sections`` are
    HTML sections made elsewhere (people's ratings), added after the report's own."""
    def page() -> str:  # reading is drawing: a pass over the files, so a bug in it is the report's
        return render({**dataset_context(load_dataset(directory, store, spec), sample), "sections": list(sections)})

    return _write(page, Path(out) if out else Path(directory) / REPORT, Path(directory))


def write_eval_report(path: str | Path, out: str | Path | None = None, *, sample: int = SAMPLE,
                      sections: Sequence[Markup] = ()) -> Path:
    """``EVAL.html`` (or ``out``) for an eval results file, with ``sections`` as for a dataset."""
    return _write(lambda: render({**eval_context(path, sample), "sections": list(sections)}),
                  Path(out) if out else Path(path).with_suffix(".html"), Path(path))
