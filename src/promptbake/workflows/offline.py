"""Offline batch files: a spec run step by step through files instead of a server.

``export`` plans what the store is ready for and writes the pending requests of the next step as
Batch API input files; a GPU fleet runs them with vLLM's ``run_batch`` (or they go through any
provider's batch UI); ``import`` stores the output lines as answers, exactly as batch mode would.
The next ``export`` then writes the step after (the judges' verdicts included: a judge is a step),
then top-up rounds, until nothing is pending and ``build`` can run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from promptbake.errors import InputError
from promptbake.output.atomic import atomic_writer
from promptbake.plan.conversation import planned_steps
from promptbake.plan.expand import Expander
from promptbake.plan.routing import label
from promptbake.specification.models import Spec, Step
from promptbake.store.batches import Holder, exhausted, holders
from promptbake.store.db import ResultRow, Store
from promptbake.store.saved_specs import spec_from_store
from promptbake.teacher.batch import item_job, line_outcome
from promptbake.teacher.batchfile import MAX_BYTES, MAX_LINES, InputFile, LineResult, input_line, read_lines
from promptbake.teacher.client import Endpoint
from promptbake.teacher.config import Teacher, merge
from promptbake.teacher.generate import GenerateOptions, Generation
from promptbake.teacher.jobs import checker, result_row
from promptbake.teacher.pricing import PriceTable
from promptbake.workflows.pipeline import ask_for, save_run_context, shortfall


@dataclass
class ExportReport:
    """What ``export_batch`` wrote: ``step`` of ``round`` (None once nothing is left to generate),
    its pending ``requests``, and the input ``files`` holding each distinct one once."""

    spec_name: str
    store: str
    round: int | None = None
    step: str | None = None
    requests: int = 0  # pending requests of the step
    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, lines): identical requests once

    def format(self) -> str:
        if self.step is None:
            return (f"{self.spec_name}: nothing left to generate; build the dataset with "
                    f"`promptbake build {self.store} --out DIR`")
        lines = sum(n for _, n in self.files)
        written = "\n".join(f"  {path} ({n:,} requests)" for path, n in self.files)
        return (f"round {self.round} step {self.step}: {self.requests:,} pending requests, {lines:,} distinct, in "
                f"{len(self.files)} batch input files:\n{written}\nrun them (e.g. python -m vllm.entrypoints.openai."
                f"run_batch -i IN -o OUT --model M), then `promptbake batch import {self.store} OUT...`")


def export_batch_files(spec: Spec, store_path: str | Path, out_dir: str | Path,
                       teacher: Teacher | None = None, *, max_lines: int = MAX_LINES,
                       max_bytes: int = MAX_BYTES) -> ExportReport:
    """Write the next step's pending requests as batch input files in ``out_dir``."""
    config = merge(spec.teacher, teacher)
    expander = Expander(spec)
    report = ExportReport(spec.name, str(store_path))
    with Store(store_path) as store:
        save_run_context(spec, store, expander)
        generation = Generation(spec, store, expander, Endpoint(base_url="", model=label(config)), config,
                                GenerateOptions(progress=False))
        found = _next_step(spec, store, expander, generation, config.max_attempts)
        if found is None:
            return report
        round_, k, skip = found
        report.round, report.step = round_, generation.planner.steps[k].name
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{spec.name}.round{round_}.{report.step}"
        for old in out.glob(f"{stem}.*.jsonl"):  # an earlier export of this step, maybe split differently
            old.unlink()
        seen: set[str] = set()

        def lines() -> Iterator[bytes]:
            for request in store.pending(spec.name, k):
                if request.round != round_ or request.id in skip:
                    continue
                report.requests += 1
                if request.cache_key not in seen:
                    seen.add(request.cache_key)
                    yield input_line(request.cache_key, request.body)

        report.files = write_input_files(lines(), out, stem, max_lines, max_bytes)
    return report


def _next_step(spec: Spec, store: Store, expander: Expander, generation: Generation,
               max_attempts: int) -> tuple[int, int, set[str]] | None:
    """(round, step, ids to leave out) of the first step with requests still to send, planning
    as it goes; past the last round, a top-up round for cells left short, as ``run`` does."""
    rounds = sorted({0, *store.rounds(spec.name)})
    for round_ in rounds:
        for k in range(len(generation.planner.steps)):  # the spec's steps, then its judges
            found = _plan(spec, store, generation, round_, k, max_attempts)
            if found is not None:
                return found
    round_ = rounds[-1]
    if round_ >= spec.max_rounds:
        return None
    missing, pass_rate = shortfall(spec, expander, store)
    if not missing:
        return None
    store.set_wants(spec.name, round_ + 1, ask_for(missing, pass_rate))
    return _plan(spec, store, generation, round_ + 1, 0, max_attempts)


def _plan(spec: Spec, store: Store, generation: Generation, round_: int, k: int,
          max_attempts: int) -> tuple[int, int, set[str]] | None:
    generation.plan(round_, k)
    store.serve_from_cache(spec.name, k)
    skip = exhausted(store, spec.name, k, max_attempts)
    if any(r.round == round_ and r.id not in skip for r in store.pending(spec.name, k)):
        return round_, k, skip
    return None


def write_input_files(lines: Iterable[bytes], directory: Path, stem: str, max_lines: int,
                      max_bytes: int) -> list[tuple[Path, int]]:
    """``stem.001.jsonl``, ``stem.002.jsonl``, ...: each within the limits, each written atomically."""
    written: list[tuple[Path, int]] = []
    current: InputFile | None = None
    with contextlib.ExitStack() as stack:  # on an error, the file being written is removed
        for line in lines:
            if current is not None and not current.fits(line):
                stack.close()  # the full file moves into place
                current = None
            if current is None:
                path = Path(directory) / f"{stem}.{len(written) + 1:03d}.jsonl"
                current = InputFile(stack.enter_context(atomic_writer(path)).buffer, max_lines, max_bytes)
                written.append((path, 0))
            current.add(line, 0.0)
            written[-1] = (written[-1][0], current.lines)
    return written


@dataclass
class ImportReport:
    """What ``import_batch`` stored, line by line of the output files."""

    store: str
    lines: int = 0
    ok: int = 0
    failed: int = 0
    already: int = 0  # answers the store had already: not stored twice
    unknown: int = 0  # custom_ids no current request has: another store's, or an older plan's
    cost: float = 0.0
    estimated: int = 0  # answers without usable usage, charged the worst case their request allowed
    estimated_cost: float = 0.0

    def format(self) -> str:
        extra = f", {self.already} already stored" if self.already else ""
        extra += f", {self.unknown} matching no request in {self.store}" if self.unknown else ""
        guess = (f" (${self.estimated_cost:.4f} of it estimated: {self.estimated} answers came without usage and "
                 "were charged their worst case)") if self.estimated else ""
        return (f"imported {self.lines:,} answers: {self.ok:,} ok, {self.failed:,} failed{extra}; "
                f"${self.cost:.4f} at batch prices{guess}; run `promptbake batch export` for the next step")


def import_batch_output(store_path: str | Path, paths: Iterable[str | Path]) -> ImportReport:
    """Store the answers of batch output files (vLLM ``run_batch`` or a provider's output or error
    file). Each file is stored in one transaction: a malformed line stores nothing of its file."""
    report = ImportReport(str(store_path))
    if not Path(store_path).exists():
        raise InputError(f"{store_path}: no such store; run `promptbake batch export` first")
    specs: dict[str, tuple[list[Step], PriceTable]] = {}
    with Store(store_path) as store:
        for path in paths:
            rows: list[ResultRow] = []
            touched: set[tuple[str, int]] = set()
            known = 0
            for line in read_lines(path):
                report.lines += 1
                waiting = holders(store, line.custom_id)
                if not waiting:
                    report.unknown += 1
                    continue
                known += 1
                pending = [h for h in waiting if h.status != "ok"]
                if not pending:
                    report.already += 1
                    continue
                rows.extend(_rows(line, pending, specs, store_path, report))
                touched.update((h.spec_name, h.step_index) for h in pending)
            if not known:
                raise InputError(f"{path}: none of its answers match a request in {store_path} (another store's "
                                 "output, or requests of an older spec version?)")
            with store.transaction():
                store.record(rows)
            for spec_name, k in sorted(touched):
                store.serve_from_cache(spec_name, k)
    return report


def _rows(line: LineResult, pending: list[Holder], specs: dict[str, tuple[list[Step], PriceTable]],
          store_path: str | Path, report: ImportReport) -> list[ResultRow]:
    first = pending[0]
    if first.spec_name not in specs:  # the spec's steps, then one per judge, as they were planned
        spec = spec_from_store(store_path, first.spec_name)
        specs[first.spec_name] = planned_steps(spec), PriceTable(spec.teacher.prices)
    steps, prices = specs[first.spec_name]
    answer = line_outcome(item_job(first.item), line, first.attempts + 1, checker(steps[first.step_index]), prices)
    outcome = answer.outcome
    report.cost += answer.cost
    for attempt in outcome.attempts:
        if attempt.estimated:
            report.estimated += 1
            report.estimated_cost += attempt.cost
    if outcome.ok:
        report.ok += 1
        return [result_row(outcome)]
    report.failed += 1
    return [result_row(outcome), *(ResultRow(h.item.request_id, line.custom_id, False, [], outcome.error)
                                   for h in pending[1:])]
