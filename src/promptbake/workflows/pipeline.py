"""The pipeline: ``generate`` (rounds into the store) and ``run`` (expand → generate → build).

Each is a coroutine (``*_async``, for callers inside an event loop) with a blocking twin that is
safe in a notebook cell (``workflows.sync``); ``promptbake.run`` and the CLI sit on top."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptbake.plan.expand import Expander
from promptbake.records import Example
from promptbake.spec.models import Spec
from promptbake.store.db import Store
from promptbake.teacher.config import Teacher, merge, open_teacher
from promptbake.teacher.generate import GenerateOptions, GenerateReport, Generation
from promptbake.workflows.sync import synchronous


@dataclass
class RoundReport:
    round: int
    short_cells: int
    missing: int


@dataclass
class RunReport:
    generate: GenerateReport
    rounds: list[RoundReport] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    build: Any = None


def shortfall(spec: Spec, expander: Expander, store: Store) -> tuple[dict[str, int], float]:
    """Per cell, how many accepted examples (parsed, through every quality gate, distinct) are
    still missing; and the share of rendered examples the quality gates have let through so far."""
    from promptbake.build.dedupe import dedupe
    from promptbake.build.examples import ExampleRenderer
    from promptbake.build.gates import Gates

    gates = Gates(spec, store)
    passed = list(gates.passing(ExampleRenderer(spec, expander.templates).examples(store)))
    kept = dedupe(passed, spec.dedupe).kept
    have: dict[str, int] = {}
    for example in kept:
        key = example.provenance["cell_key"]
        have[key] = have.get(key, 0) + 1
    missing = {c.key: c.count - have.get(c.key, 0) for c in expander.cells() if have.get(c.key, 0) < c.count}
    return missing, len(passed) / max(len(passed) + len(gates.dropped), 1)


def ask_for(missing: dict[str, int], pass_rate: float) -> dict[str, int]:
    """What a top-up round asks for: when the quality gates drop examples, enough extra for the
    rate they have let through so far (at most 10×), so a strict judge costs rounds only in step
    with its rate rather than refilling a shrinking remainder round after round."""
    factor = 1 / max(pass_rate, 0.1)
    return {key: math.ceil(n * factor) for key, n in missing.items()}


async def generate_async(
    spec: Spec,
    store_path: str | Path,
    teacher: Teacher | None = None,
    options: GenerateOptions | None = None,
    *,
    topup: bool = False,
    command: str = "generate",
) -> RunReport:
    """Run every round the store already knows of (resuming), then, with ``topup``, more rounds
    for cells that dedupe or parse failures left short, up to ``spec.max_rounds``."""
    options = options or GenerateOptions()
    config = merge(spec.teacher, teacher)
    expander = Expander(spec)
    with Store(store_path) as store, open_teacher(config) as (endpoint, config):
        run_id = store.start_run(spec.name, spec.spec_hash(), command)
        store.save_spec(spec.name, spec.spec_hash(), str(spec.path or ""), spec_text(spec))
        store.save_cells(spec.name, expander.cells())
        generation = Generation(spec, store, expander, endpoint, config, options)
        report = RunReport(generation.report)
        status = "failed"
        try:
            rounds = sorted({0, *store.rounds(spec.name)})
            for round_ in rounds:
                await generation.run_round(round_)
            round_ = rounds[-1]
            while topup and round_ < spec.max_rounds:
                missing, pass_rate = shortfall(spec, expander, store)
                report.rounds.append(RoundReport(round_, len(missing), sum(missing.values())))
                if not missing:
                    break
                round_ += 1
                store.set_wants(spec.name, round_, ask_for(missing, pass_rate))
                await generation.run_round(round_)
            status = "done"
        finally:
            report.totals = store.totals(spec.name)
            store.finish_run(run_id, status, report.totals)
    return report


generate = synchronous(generate_async)


async def run_async(
    spec: Spec,
    out_dir: str | Path,
    store_path: str | Path | None = None,
    teacher: Teacher | None = None,
    options: GenerateOptions | None = None,
    *,
    formats: list[str] | None = None,
    seed: int | None = None,
    existing: Iterable[Example] = (),
    command: str = "run",
    sizes: Iterable[int] = (),
) -> RunReport:
    """expand → generate (with top-up rounds for exact counts) → build, in one call.
    ``existing``: examples the built data must not repeat (see ``build.build``)."""
    from promptbake.build.builder import build

    store_path = store_path or Path(out_dir) / "promptbake.db"
    report = await generate_async(spec, store_path, teacher, options, topup=True, command=command)
    with Store(store_path) as store:
        report.build = build(spec, store, out_dir, formats=formats, seed=seed, existing=existing, sizes=sizes)
    return report


run = synchronous(run_async)


def spec_text(spec: Spec) -> str:
    """What the store keeps of a spec: its file as written, or (a spec built in code, such as a
    distillation) the validated model as YAML, so ``build STORE`` can always rebuild."""
    if spec.path is not None:
        return spec.path.read_text(encoding="utf-8")
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def spec_from_store(store_path: str | Path, name: str | None = None) -> Spec:
    """The spec a store was generated with (``build STORE``), re-read from the text it saved."""
    from promptbake.errors import StoreError
    from promptbake.spec.models import parse_spec

    if not Path(store_path).exists():
        raise StoreError(f"{store_path}: no such store")
    with Store(store_path, lock=False) as store:
        saved = [s for s in store.saved_specs() if name is None or s[0] == name]
    if not saved:
        raise StoreError(f"{store_path}: holds no spec{f' named {name!r}' if name else ''}; pass the spec file")
    spec_name, path, text = saved[0]
    return parse_spec(text, path or f"{store_path}:{spec_name}", Path(path) if path else None)
