"""The pipeline: ``generate`` (rounds into the store) and ``run`` (expand → generate → build).

Each is a coroutine (``*_async``, for callers inside an event loop) with a blocking twin that is
safe in a notebook cell (``workflows.sync``); ``promptbake.run`` and the CLI sit on top."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import InputError, StoreError
from promptbake.plan.expand import Expander
from promptbake.plan.preflight import check_templates
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.store.db import Store
from promptbake.store.saved_specs import spec_text
from promptbake.teacher.config import Teacher, merge, open_teacher
from promptbake.teacher.generate import GenerateOptions, GenerateReport, Generation, StepReport, check_run
from promptbake.teacher.link import Link
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
    store_path: str = ""
    missing: dict[str, int] | None = None  # per short cell after the top-up rounds (None: not measured)
    stalled: str | None = None  # why the top-up rounds ended early

    def shortfall(self) -> str | None:
        """What the run did not get, in one line; None when it got everything the spec asked for.
        With top-up rounds that is the cells' counts; without, every planned request answered."""
        if self.missing is not None:
            if not self.missing:
                return None
            return f"{len(self.missing)} cells are short of their count by {sum(self.missing.values())} examples"
        failed, pending = self.totals.get("failed", 0), self.totals.get("pending", 0)
        if not failed and not pending:
            return None
        return f"{failed} requests failed and {pending} are pending"


def shortfall(spec: Spec, expander: Expander, store: Store, existing: Iterable[Example] = ()
              ) -> tuple[dict[str, int], float]:
    """Per cell, how many accepted examples (parsed, through every quality gate, distinct, and
    distinct from ``existing``) are still missing; and the share of rendered examples the quality
    gates have let through so far."""
    from promptbake.curate.dedupe import dedupe
    from promptbake.curate.examples import ExampleRenderer
    from promptbake.curate.gates import Gates

    gates = Gates(spec, store)
    passed = 0
    have: dict[str, int] = {}

    def counted(examples: Iterable[Example]) -> Iterator[Example]:
        nonlocal passed
        for example in examples:
            passed += 1
            yield example

    def keep(example: Example) -> None:  # examples are counted as they pass, not held: a run makes millions
        key = example.provenance["cell_key"]
        have[key] = have.get(key, 0) + 1

    dedupe(counted(gates.passing(ExampleRenderer(spec, expander.templates).examples(store))), spec.dedupe, existing,
           keep=keep)
    missing = {c.key: c.count - have.get(c.key, 0) for c in expander.cells() if have.get(c.key, 0) < c.count}
    # items whose user line a filter dropped before the next step are turned down by the gates too
    early = sum(1 for d in store.fanout_drops(spec.name) if d.reason is not None)
    dropped = len(gates.dropped) + early
    return missing, passed / max(passed + dropped, 1)


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
    existing: Iterable[Example] = (),
) -> RunReport:
    """Run every round the store already knows of (resuming), then, with ``topup``, more rounds
    for cells that dedupe or parse failures left short, up to ``spec.max_rounds``. ``existing``:
    examples the data must not repeat (what repeats one is short, and asked for again).

    Raises ``TeacherError`` when the teacher cannot be used at all or a step of round 0 failed
    entirely; a run that merely fell short returns, with ``RunReport.shortfall()`` saying so."""
    options = options or GenerateOptions()
    config = merge(spec.teacher, teacher)
    if options.batch is not None and config.kind == "local":
        raise InputError("--batch needs a remote server with the Batch API; the local teacher has none (run "
                         "without --batch, or use `promptbake batch export` for vLLM's run_batch)")
    notes = check_run(spec, config, options.max_cost)
    if config.kind == "local":
        from promptbake.teacher.local import local_layout

        notes.extend(local_layout(config.threads).notes)
    expander = Expander(spec)
    check_templates(spec, expander)  # a template typo is refused before the store, the teacher or a request
    with Store(store_path) as store, open_teacher(config) as (endpoint, config):
        run_id = store.start_run(spec.name, spec.spec_hash(), command)
        generation = Generation(spec, store, expander, endpoint, config, options)
        save_run_context(spec, store, expander, cells=not generation.streams)  # streamed cells are saved as planned
        generation.report.notes.extend(notes)
        report = RunReport(generation.report, store_path=str(store_path))
        status = "failed"
        try:
            async with Link(endpoint, config) as link:  # one client and limiter for every step and round
                known = sorted({0, *store.rounds(spec.name)})
                for round_ in known:
                    await generation.run_round(round_, link)
                if topup:
                    await _top_up(spec, expander, store, generation, report, known[-1], link, list(existing))
            status = "done"
        finally:
            report.totals = store.totals(spec.name)
            try:
                store.finish_run(run_id, status, report.totals)
            except StoreError:
                if status == "done":
                    raise
                # the run is already stopping on an error, which says what happened (a full disk
                # that refused an answer refuses this row too): that error is the one to tell
    return report


generate = synchronous(generate_async)


async def _top_up(spec: Spec, expander: Expander, store: Store, generation: Generation, report: RunReport,
                  round_: int, link: Link, existing: list[Example]) -> None:
    """Ask again for the cells still short, one round at a time, while rounds help: a round in
    which no short cell gained an example, and not for want of passing the quality gates, ends
    the loop, and ``report.stalled`` says why."""
    missing, pass_rate = shortfall(spec, expander, store, existing)
    while missing and round_ < spec.max_rounds:
        report.rounds.append(RoundReport(round_, len(missing), sum(missing.values())))
        round_ += 1
        store.set_wants(spec.name, round_, ask_for(missing, pass_rate))
        first = len(generation.report.steps)
        await generation.run_round(round_, link)
        before, gate_rate = missing, pass_rate
        missing, pass_rate = shortfall(spec, expander, store, existing)
        gained = any(missing.get(key, 0) < short for key, short in before.items())
        # answers turned down by the quality gates are chance (the next round may pass), while
        # duplicates and failures would come back the same: only those end the rounds early
        if not gained and pass_rate >= gate_rate:
            report.stalled = f"round {round_} added nothing ({_why(generation.report.steps[first:], generation)}); " \
                             "no further rounds"
            break
    report.rounds.append(RoundReport(round_, len(missing), sum(missing.values())))
    report.missing = missing


def _why(steps: list[StepReport], generation: Generation) -> str:
    planned = sum(s.planned for s in steps)
    ok = sum(s.ok + s.cached for s in steps)
    failed = sum(s.failed for s in steps)
    if not planned:
        return "nothing left to ask: the short cells' requests failed for a reason retrying cannot fix"
    if failed and not ok:
        n, reason = generation.report.failures.most_common(1)[0]
        return f"all {failed} of its requests failed; most common, {n} ×: {reason}"
    return f"its {ok} answers were all duplicates or failed the checks"


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
    refill_existing: bool = True,
) -> RunReport:
    """expand → generate (with top-up rounds for exact counts) → build, in one call.
    ``existing``: examples the built data must not repeat (see ``build.build``); with
    ``refill_existing`` the top-up rounds ask again for what repeated one (a generated input
    may come out different; an input from a file cannot). What the run got is what the build
    kept: a cell short there is short, whatever the rounds counted (exit 3 at the CLI)."""
    from promptbake.curate.builder import build, split_seed
    from promptbake.output.targets import target_for_teacher

    split_seed(Path(out_dir), spec, seed)  # a split the directory cannot take is refused before paying
    store_path = store_path or default_store(out_dir)
    existing = list(existing)
    report = await generate_async(spec, store_path, teacher, options, topup=True, command=command,
                                  existing=existing if refill_existing else ())
    config = merge(spec.teacher, teacher)
    with Store(store_path) as store:
        report.build = build(spec, store, out_dir, formats=formats, seed=seed, existing=existing, sizes=sizes,
                             target=target_for_teacher(config.kind, config.base_url))
    # a cell whose input (not a generated one) repeats an ``existing`` example cannot be refilled:
    # its drop is reported by the caller (distill: "inputs dropped as copies"), not a shortfall
    report.missing = {key: n for key, n in report.build.short.items()
                      if refill_existing or key not in report.build.repeated}
    return report


run = synchronous(run_async)


def default_store(out_dir: str | Path) -> Path:
    """The store ``run --out OUT`` keeps its answers in (and ``topup`` reads): OUT/promptbake.db."""
    return Path(out_dir) / "promptbake.db"


def build_store(out_dir: str | Path) -> Path:
    """The store ``build SPEC --out OUT`` reads when none is named: the one ``run --out OUT`` kept
    in OUT, else ``generate``'s default in the working directory."""
    run_store = default_store(out_dir)
    return run_store if run_store.exists() else Path("promptbake.db")


def save_run_context(spec: Spec, store: Store, expander: Expander, *, cells: bool = True) -> None:
    """What ``build STORE`` and later rounds need from the spec: its text and (unless a streamed
    grid saves them as it plans) its cells."""
    store.save_spec(spec.name, spec.spec_hash(), str(spec.path or ""), spec_text(spec))
    if cells:
        store.save_cells(spec.name, expander.cells())
