"""Build: stored answers → deduplicated, count-exact, balanced, split fine-tuning files.

Order matters and is fixed: render examples in lineage order → dedupe (before splitting, so no
near-duplicate pair straddles train and test) → keep each cell's ``count`` → balance → seeded,
stratified split → write every format atomically → metadata sidecar, manifest → validate.

Memory stays flat in the number of examples: each kept example waits in a scratch file beside the
output while a small handle stands for it (``curate/spill.py``), writers read the examples back one
at a time, and ``dropped.jsonl``'s dedupe lines wait on disk too. A million examples add a few
hundred bytes each (bench/build_memory.py), besides dedupe's own index.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from promptbake import fastjson
from promptbake.curate.balance import balance
from promptbake.curate.dedupe import Dropped, dedupe
from promptbake.curate.examples import ExampleRenderer
from promptbake.curate.gates import Gates
from promptbake.curate.sizes import nested_subsets
from promptbake.curate.spill import Kept, Scratch, Spill
from promptbake.curate.split import SplitResult, assign, group_key
from promptbake.errors import InputError
from promptbake.ids import file_sha256
from promptbake.output.atomic import ensure_dir, write_jsonl_atomic, write_text_atomic
from promptbake.output.export import read_manifest, write_format
from promptbake.output.formats import WriteReport, write_split
from promptbake.output.jsonl import read_jsonl
from promptbake.plan.expand import KEEP_CELLS, Expander
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.store.db import Store

CANONICAL = "openai-chat"  # DIR/train.jsonl and DIR/test.jsonl; other formats go to DIR/<format>/
SPLITS = "splits.jsonl"  # every example id ever built into DIR, its group and its side


@dataclass
class BuildReport:
    out_dir: Path
    train: int
    test: int
    categories: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    writes: list[WriteReport] = field(default_factory=list)
    validation: Any = None
    manifest: dict[str, Any] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)  # cell key → examples it lacks: what the run did not get
    repeated: set[str] = field(default_factory=set)  # short cells that lost an example as a repeat of ``existing``

    def format(self, table: bool = True) -> str:
        """The per-category table (unless ``table`` is false: ``-q``), then the one-line totals,
        refused writes and warnings."""
        wide = max([8, *map(len, self.categories)])  # whole names: categories often differ only at the end
        lines = [
            f"{'category':<{wide}} {'rows':>6} {'checks':>6} {'filter':>6} {'judge':>6} {'exact':>6} {'near':>6} "
            f"{'surplus':>7} {'kept':>6} {'train':>6} {'test':>5}"
        ]
        for name, c in self.categories.items():
            lines.append(
                f"{name:<{wide}} {c['rows']:>6} {c['rejected_by_checks']:>6} {c['filtered']:>6} {c['judged_out']:>6} "
                f"{c['exact_dupes']:>6} {c['near_dupes']:>6} {c['surplus']:>7} {c['kept']:>6} {c['train']:>6} "
                f"{c['test']:>5}"
            )
        if not table:
            lines = []
        lines.append(f"train: {self.train}, test: {self.test} → {self.out_dir}")
        lines.extend(w.summary() for w in self.writes if w.refused)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


_HEX_KEY = re.compile(r"[0-9a-f]{16}")  # a cell key as ids.stable_hash writes it


def _packed(key: str) -> int | str:
    """A cell key as a dict key: as an int when it is 16 hex digits (36 bytes instead of 65, once
    per cell of a million-row table), as it is otherwise (an int never equals a str)."""
    return int(key, 16) if _HEX_KEY.fullmatch(key) else key


def _unpacked(key: int | str) -> str:
    return f"{key:016x}" if isinstance(key, int) else key


class _Counts:
    """Each cell keeps its first ``count`` distinct examples (``take``); ``finish`` says which cells
    fall short.

    A grid small enough to keep in memory (``KEEP_CELLS``) is walked whole. A bigger one (10^7
    cells: minutes and gigabytes to walk) looks up only the cells its examples belong to, and
    counts the cells and examples still missing from the grid's totals; the shortfall by category
    then lists the cells that have examples, and says how many have none yet. Per cell it holds an
    int (what the cell still takes) and, while the cell is short, its category's shared name: a
    table of a million rows is a million cells."""

    def __init__(self, expander: Expander) -> None:
        self.expander = expander
        self.cells, self.wanted_total = expander.totals()
        self.whole = self.cells <= KEEP_CELLS
        self.left: dict[int | str, int] = {}  # cell key (_packed) -> examples it still takes
        self.category: dict[int | str, str] = {}  # cell key (_packed) -> its category, while it still takes some
        self.counted = 0  # cells looked up that want examples
        self.taken = 0
        self.surplus: Counter[str] = Counter()
        if self.whole:
            for cell in expander.cells():
                self.left[_packed(cell.key)] = cell.count
                self.category[_packed(cell.key)] = cell.category

    def take(self, example: Example) -> bool:
        """Whether ``example`` is one its cell still takes (else it counts as surplus)."""
        full = example.provenance.get("cell_key", "")
        key = _packed(full)
        left = self.left.get(key)
        if left is None and not self.whole:
            cell = self.expander.cell_of(example.cell)
            left = cell.count if cell is not None and cell.key == full else 0
            self.left[key] = left
            if left:
                self.counted += 1
                self.category[key] = sys.intern(cell.category) if cell is not None else ""
        if not left:
            self.surplus[example.category] += 1
            return False
        self.left[key] = left - 1
        if left == 1:
            del self.category[key]
        self.taken += 1
        return True

    def finish(self) -> tuple[list[str], dict[str, int]]:
        """(warnings, cell key -> examples it lacks)."""
        short = {_unpacked(key): left for key, left in self.left.items() if left}
        untouched = 0 if self.whole else self.cells - self.counted
        warnings = []
        if short or untouched:
            by_category: Counter[str] = Counter()
            for key, missing in short.items():
                by_category[self.category[_packed(key)]] += missing
            detail = ", ".join(f"{cat}: {n}" for cat, n in sorted(by_category.items()))
            if untouched:
                detail = f"{detail}; and {untouched} cells with no example yet" if detail else \
                    f"{untouched} cells with no example yet"
            missing_total = sum(short.values()) if self.whole else self.wanted_total - self.taken
            warnings.append(f"{len(short) + untouched} cells are short of their count by {missing_total} examples "
                            f"({detail})")
        return warnings, short


def _noting_cells(examples: Iterable[Example], cells: dict[str, str] | None) -> Iterable[Example]:
    """``examples`` unchanged, each one's cell noted in ``cells`` (when given) on the way."""
    for example in examples:
        if cells is not None:
            cells[example.id] = example.provenance.get("cell_key", "")
        yield example


def _history(out: Path) -> list[dict[str, Any]]:
    """The sides recorded by earlier builds of ``out``: ``splits.jsonl``, else (a directory built
    before it existed) the ``split`` of each line of ``metadata.jsonl``."""
    for name in (SPLITS, "metadata.jsonl"):
        path = out / name
        if path.exists():
            return [row for _, row in read_jsonl(path, "split record") if "split" in row and "id" in row]
    return []


def previous_sides(out: Path) -> dict[str, str]:
    """Example id and group key → the side an earlier build of ``out`` gave it (test wins)."""
    sides: dict[str, str] = {}
    for row in _history(out):
        for key in (row["id"], row.get("group")):
            if key is not None and sides.get(key) != "test":
                sides[key] = row["split"]
    return sides


def _merge_history(path: Path, sides: SplitResult[Kept]) -> Iterator[dict[str, Any]]:
    """Earlier records (examples not in this build keep theirs) with this build's in their places,
    then this build's new ones, in its order; with no earlier record (``metadata.jsonl`` was just
    rewritten), this build's in the sidecar's order: train, then test. Streamed: an earlier file
    is read a line at a time, and only this build's examples are indexed."""
    splits = (("train", sides.train), ("test", sides.test))
    if not path.exists():
        for side, rows in splits:
            for h in rows:
                yield {"id": h.id, "group": h.group, "split": side}
        return
    ours = {h.id: (h, side) for side, rows in splits for h in rows}
    for _, row in read_jsonl(path, "split record"):
        if "split" in row and "id" in row:
            mine = ours.pop(row["id"], None)
            yield row if mine is None else {"id": mine[0].id, "group": mine[0].group, "split": mine[1]}
    for record in sides.assignment:
        if record["id"] in ours:
            yield record


def split_seed(out: Path, spec: Spec, seed: int | None = None) -> int:
    """The seed that splits ``spec``'s data into ``out`` (``seed``, else ``split.seed``), refused
    when it is not the one that placed the examples ``out`` already holds: they keep their sides (a
    test example never moves to train), so another seed would place only the new ones while the
    manifest claimed it decided the split. ``run`` asks before anything is paid for."""
    wanted = spec.split.seed if seed is None else seed
    if not any((out / name).exists() for name in (SPLITS, "metadata.jsonl")):
        return wanted
    recorded = read_manifest(out).get("seed")
    if recorded is not None and recorded != wanted:
        source = "--seed" if seed is not None else "split.seed"
        raise InputError(f"{out}: an earlier build split it with seed {recorded} and its examples keep their sides, "
                         f"so seed {wanted} ({source}) would place only new ones; build into a new directory for a "
                         f"split by seed {wanted}, or keep seed {recorded}")
    return wanted


_VERSION = re.compile(r"(?:train|metadata)\.v\d+\.jsonl")  # a top-up round's training file and sidecar


def _reconcile_topups(out: Path, previous: dict[str, Any], before: dict[str, str], spec_hash: str,
                      manifest: dict[str, Any], warnings: list[str]) -> None:
    """Keep the top-up versions (``train.v2.jsonl``...) only while they extend what was just built.

    A round appends to the train split it started from and copies the test split's metadata, under
    the spec of its day; a rebuild that changed either split or the spec leaves them describing
    other data (rows the new filters reject, a sidecar that no longer matches ``test.jsonl``). Then
    every ``train.vN``/``metadata.vN`` file is moved to ``topups/superseded.N/`` and the lineage
    starts again from ``train.jsonl``, with a warning and a manifest record saying so; nothing is
    deleted, and the store still holds every answer the rounds paid for."""
    superseded = list(previous.get("superseded_topups") or [])
    topups = previous.get("topups") or []
    changed = [name for name, digest in before.items()
               if not (out / name).exists() or file_sha256(out / name) != digest]
    changed += ["the spec"] if any(t.get("spec_hash") != spec_hash for t in topups) else []
    if topups and changed:
        n = len(superseded) + 1
        while (out / "topups" / f"superseded.{n}").exists():
            n += 1
        moved = out / "topups" / f"superseded.{n}"
        ensure_dir(moved)
        stale = sorted(p.name for p in out.iterdir() if _VERSION.fullmatch(p.name))
        for name in stale:
            os.replace(out / name, moved / name)
        why = f"{' and '.join(changed)} changed"
        rounds = f"top-up rounds 1-{len(topups)}" if len(topups) > 1 else "top-up round 1"
        superseded.append({"directory": f"topups/superseded.{n}", "files": stale, "reason": why, "topups": topups})
        warnings.append(f"{why} since {rounds}: {', '.join(stale) or 'its files'} no longer extend this build and "
                        f"moved to {moved}; train.jsonl is the training set again (run topup again to add to it)")
        topups = []
    if topups:  # train.v2.jsonl, ... still extend this build: their record stays with them
        manifest["topups"] = topups
    if superseded:
        manifest["superseded_topups"] = superseded


def build(
    spec: Spec,
    store: Store,
    out_dir: str | Path,
    *,
    formats: list[str] | None = None,
    seed: int | None = None,
    validate: bool = True,
    existing: Iterable[Example] = (),
    sizes: Iterable[int] = (),
    target: str | None = None,
) -> BuildReport:
    """``existing``: examples the data must not repeat (distillation passes the long prompt's own
    few-shot examples); what equals or nearly equals one is dropped like a duplicate of it.
    ``sizes``: also write nested, stratified train subsets ``train.N.jsonl`` (see ``sizes.py``).
    ``target``: whose rules ``train.jsonl`` is validated against (default: from the spec's teacher)."""
    out = Path(out_dir)
    split_config = spec.split.model_copy(update={"seed": split_seed(out, spec, seed)})
    ensure_dir(out)
    previous = read_manifest(out)
    before = {name: file_sha256(out / name) for name in ("train.jsonl", "test.jsonl") if (out / name).exists()}
    expander = Expander(spec)
    renderer = ExampleRenderer(spec, expander.templates)
    # items a fan-out repeated were dropped before the next step paid for them: exact duplicates too;
    # and so were those whose user line a filter drops: filtered too
    fanout = store.fanout_drops(spec.name)
    early = [Dropped(f"{d.request_id}:{d.item_index}", d.category, "exact", d.duplicate_of or "", 1.0)
             for d in fanout if d.reason is None]
    gates = Gates(spec, store)
    gates.drop_early((f"{d.request_id}:{d.item_index}", d.category, d.reason) for d in fanout if d.reason is not None)
    existing = list(existing)
    repeats = {e.id for e in existing}
    cells: dict[str, str] = {}  # example id → cell, to find the cells an ``existing`` repeat left short
    repeated: set[str] = set()
    counts = _Counts(expander)
    accepted: list[Kept] = []
    history = out / SPLITS
    with Spill(out / "build.spill") as spill, Scratch(out / "dropped.spill") as dedupe_drops:

        def keep(example: Example) -> None:
            if counts.take(example):
                accepted.append(Kept(example.id, sys.intern(example.category),
                                     group_key(example, split_config.group), spill.put(example)))

        def drop(dropped: Dropped) -> None:
            if dropped.duplicate_of in repeats and dropped.id in cells:
                repeated.add(cells[dropped.id])
            dedupe_drops.append(fastjson.dumps(dropped.as_dict()))

        deduped = dedupe(_noting_cells(gates.passing(renderer.examples(store)), cells if existing else None),
                         spec.dedupe, existing, keep=keep, drop=drop)
        warnings, short = counts.finish()
        balanced = balance(accepted, spec.balance, split_config.seed)
        warnings.extend(balanced.warnings)
        sides = assign(balanced.kept, split_config, previous_sides(out), key=attrgetter("group"))
        train, test = sides.train, sides.test
        warnings.extend(sides.warnings)
        subsets, size_warnings = nested_subsets(train, sizes)
        warnings.extend(size_warnings)

        writes = []
        formats = formats or spec.output.formats
        for fmt in dict.fromkeys([CANONICAL, *formats]):
            writes += write_format(fmt, {"train": spill.examples(train), "test": spill.examples(test)},
                                   out if fmt == CANONICAL else out / fmt, spec.output, strict=False)
        for n, rows in subsets.items():
            writes.append(write_split(spill.examples(rows), CANONICAL, out / f"train.{n}.jsonl", spec.output))
        write_jsonl_atomic(
            out / "metadata.jsonl",
            ({**ex.metadata(), "split": name} for name, rows in (("train", train), ("test", test))
             for ex in spill.examples(rows)),
        )
        write_jsonl_atomic(history, _merge_history(history, sides))
        write_jsonl_atomic(out / "dropped.jsonl", itertools.chain(
            (d.as_dict() for d in early), (d.as_dict() for d in gates.dropped),
            (fastjson.loads(line) for line in dedupe_drops.lines())))

    categories = _category_table(deduped, Counter(d.category for d in early), gates.counts, counts.surplus,
                                 balanced.kept, train, test)
    totals = store.totals(spec.name)
    manifest = {
        "spec": spec.name,
        "spec_hash": spec.spec_hash(),
        "seed": split_config.seed,
        "teacher": {"kind": spec.teacher.kind, "models": store.models(spec.name)},
        "formats": list(dict.fromkeys([CANONICAL, *formats])),
        "train": len(train),
        "test": len(test),
        "categories": categories,
        "dedupe": spec.dedupe.model_dump(),
        "balance": spec.balance.model_dump(),
        "filters": spec.filters.model_dump(),
        "judge": [j.model_dump(exclude_none=True) for j in spec.judge],
        "usage": {
            k: totals[k] for k in ("requests", "ok", "failed", "attempts", "prompt_tokens", "completion_tokens", "cost")
        },
        "warnings": warnings,
    }
    if subsets:
        manifest["sizes"] = {str(n): dict(sorted(Counter(e.category for e in rows).items()))
                             for n, rows in subsets.items()}
    _reconcile_topups(out, previous, before, manifest["spec_hash"], manifest, warnings)
    report = BuildReport(out, len(train), len(test), categories, warnings, writes, manifest=manifest, short=short,
                         repeated=repeated & set(short))
    if validate:
        from promptbake.output.targets import target_for_teacher
        from promptbake.output.validate import validate_file

        target = target or target_for_teacher(spec.teacher.kind, spec.teacher.base_url)
        report.validation = validate_file(out / "train.jsonl", target=target)
        manifest["validation"] = {"ok": report.validation.ok, "errors": report.validation.error_count(),
                                  "target": target}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return report


def _category_table(
    deduped: Any,
    early: Counter[str],
    gated: dict[str, Counter[str]],
    surplus: Counter[str],
    kept: list[Kept],
    train: list[Kept],
    test: list[Kept],
) -> dict[str, dict[str, int]]:
    after_balance = Counter(e.category for e in kept)
    in_train = Counter(e.category for e in train)
    in_test = Counter(e.category for e in test)
    def gate_columns(name: str) -> dict[str, int]:
        drops = gated.get(name, Counter())
        return {"rejected_by_checks": drops["checks"], "filtered": drops["filters"], "judged_out": drops["judge"]}

    return {
        name: {
            "rows": c.before + sum(gated.get(name, Counter()).values()) + early[name],
            **gate_columns(name),
            "exact_dupes": c.exact + early[name],
            "near_dupes": c.near,
            "surplus": surplus[name],
            "kept": after_balance[name],
            "train": in_train[name],
            "test": in_test[name],
        }
        for name, c in sorted(deduped.counts.items())
    } | {
        name: {
            "rows": sum(gated.get(name, Counter()).values()) + early[name],
            **gate_columns(name),
            "exact_dupes": early[name],
            "near_dupes": 0,
            "surplus": 0,
            "kept": 0,
            "train": 0,
            "test": 0,
        }
        for name in sorted(set(gated) | set(early))
        if name not in deduped.counts
    }
