"""The Python API: everything the ``promptbake`` command does, as functions returning objects.

Each call that talks to a model has a coroutine form (``run_async``) for code already inside an
event loop, and a blocking form (``run``) that also works in a notebook cell, where a loop is
already running. The CLI is a thin layer over exactly these functions, so a flag and a keyword
argument always mean the same thing. Heavy modules are imported when a function is first called,
which keeps ``import promptbake`` fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from promptbake.workflows.sync import synchronous, threaded

if TYPE_CHECKING:
    from promptbake.output.dataset import Dataset
    from promptbake.output.export import ExportResult
    from promptbake.output.validate import ValidationReport
    from promptbake.plan.estimate import Estimate
    from promptbake.rate import RateResults
    from promptbake.specification.models import Spec
    from promptbake.store.batches import BatchFile
    from promptbake.store.train_jobs import TrainJob
    from promptbake.teacher.batch import BatchOptions
    from promptbake.teacher.config import Teacher
    from promptbake.teacher.generate import GenerateOptions
    from promptbake.teacher.local import LocalTeacher
    from promptbake.train.gguf import GgufType
    from promptbake.train.hosted import HostedTrainResult
    from promptbake.train.record import TrainResult
    from promptbake.workflows.evaluate import EvalReport
    from promptbake.workflows.offline import ExportReport, ImportReport
    from promptbake.workflows.pipeline import RunReport
    from promptbake.workflows.study import StudyOptions, StudyPlan, StudyReport

PathLike: TypeAlias = "str | Path"
SpecSource: TypeAlias = "Spec | Mapping[str, Any] | str | Path"  # a file, a dict or a Spec
DEFAULT_STORE = "promptbake.db"


def load_spec(source: SpecSource) -> Spec:
    """A validated spec from a YAML file, a dict with the same keys (a spec built in Python), or a
    ``Spec`` (returned as is). Errors name the file, line and field, as ``SpecError``."""
    from promptbake.specification.models import Spec, spec_from_dict
    from promptbake.specification.models import load_spec as load_file

    if isinstance(source, Spec):
        return source
    if isinstance(source, Mapping):
        return spec_from_dict(source)
    return load_file(source)


def default_out(spec: Spec) -> Path:
    """Where ``run`` and ``distill`` write when no ``out`` is given: ``out/<spec name>``, so the
    store (the cache and resume point) is found again by the next call with the same spec."""
    return Path("out") / spec.name


def _options(max_cost: float | None, no_cache: bool, progress: bool,
             batch: BatchOptions | None = None) -> GenerateOptions:
    from promptbake.teacher.generate import GenerateOptions

    return GenerateOptions(no_cache=no_cache, max_cost=max_cost, progress=progress, batch=batch)


def estimate(spec: SpecSource, model: str | None = None) -> Estimate:
    """What a spec will cost before anything is sent: cells, requests per step, tokens and USD,
    priced for ``model`` (default: the spec's teacher model)."""
    from promptbake.plan.estimate import estimate as plan_estimate

    return plan_estimate(load_spec(spec), model)


def expand(spec: SpecSource, out: PathLike, model: str | None = None) -> int:
    """Write the first step's requests (stable ids, cell values, category, body) as JSONL to
    ``out``; returns how many were written."""
    from promptbake.output.atomic import write_jsonl_atomic
    from promptbake.plan.expand import Expander
    from promptbake.plan.planner import Planner
    from promptbake.plan.preflight import check_templates
    from promptbake.plan.routing import with_model

    spec = load_spec(spec)
    expander = Expander(spec)
    check_templates(spec, expander)
    planner = Planner(spec, expander.templates, with_model(spec.teacher, model))
    rows = (
        {"id": r.id, "step": r.step, "cell": r.vars, "category": r.category, "cache_key": r.cache_key, "body": r.body}
        for r in planner.first_step(expander.cells(), 0)
    )
    return write_jsonl_atomic(out, rows)


async def generate_async(
    spec: SpecSource,
    store: PathLike = DEFAULT_STORE,
    *,
    teacher: Teacher | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
    batch: BatchOptions | None = None,
) -> RunReport:
    """Run the spec's steps against the teacher into the SQLite ``store``; calling it again
    resumes, paying only for requests without a stored answer. ``max_cost`` (USD) stops cleanly
    before the budget would be exceeded (``BudgetExceeded``, everything paid for is stored).
    ``batch`` sends the steps through the provider's Batch API instead of the online pool."""
    from promptbake.workflows import pipeline

    return await pipeline.generate_async(load_spec(spec), store, teacher,
                                         _options(max_cost, no_cache, progress, batch))


generate = synchronous(generate_async)


async def run_async(
    spec: SpecSource,
    out: PathLike | None = None,
    *,
    teacher: Teacher | None = None,
    store: PathLike | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
    formats: Sequence[str] | None = None,
    seed: int | None = None,
    sizes: Sequence[int] = (),
    batch: BatchOptions | None = None,
) -> Dataset:
    """expand → generate (with top-up rounds for exact counts) → build, into ``out`` (default
    ``out/<spec name>``, store ``OUT/promptbake.db``); returns the built ``Dataset``. Calling it
    again resumes. ``formats`` adds trainer formats beside ``train.jsonl``; ``seed`` overrides the
    spec's split seed; ``sizes`` also writes nested, stratified train subsets ``train.N.jsonl``."""
    from promptbake.output.dataset import Dataset
    from promptbake.workflows import pipeline

    loaded = load_spec(spec)
    directory = Path(out) if out is not None else default_out(loaded)
    store_path = Path(store) if store is not None else pipeline.default_store(directory)
    report = await pipeline.run_async(loaded, directory, store_path, teacher,
                                      _options(max_cost, no_cache, progress, batch),
                                      formats=list(formats) if formats else None, seed=seed, sizes=sizes)
    return Dataset.load(directory, report=report, store=store_path)


run = synchronous(run_async)


def build(
    source: SpecSource,
    out: PathLike,
    *,
    store: PathLike | None = None,
    spec_name: str | None = None,
    formats: Sequence[str] | None = None,
    seed: int | None = None,
    sizes: Sequence[int] = (),
) -> Dataset:
    """Stored answers → deduplicated, balanced, split files in ``out``; no model is called.
    ``source`` is a spec (file, dict or ``Spec``; its answers are read from ``store``, default
    ``OUT/promptbake.db`` as ``run`` keeps it, else ``promptbake.db``) or a store file, which knows
    the spec it was generated with (``spec_name`` picks one when it holds several)."""
    from promptbake.curate.builder import build as run_build
    from promptbake.errors import StoreError
    from promptbake.output.dataset import Dataset
    from promptbake.store.db import Store
    from promptbake.store.saved_specs import spec_from_store
    from promptbake.workflows.pipeline import build_store

    if isinstance(source, str | os.PathLike) and Path(source).suffix not in (".yaml", ".yml"):
        spec, store_path = spec_from_store(source, spec_name), Path(source)
    else:
        spec, store_path = load_spec(source), Path(store) if store is not None else build_store(out)
    if not store_path.exists():
        raise StoreError(f"{store_path}: no such store (nor {Path(out) / 'promptbake.db'}); "
                         "run `promptbake generate` or `promptbake run` first, or name it with --store")
    with Store(store_path, lock=False) as opened:
        report = run_build(spec, opened, out, formats=list(formats) if formats else None, seed=seed, sizes=sizes)
    return Dataset.load(out, report=report, store=store_path)


build_async = threaded(build)


async def distill_async(
    prompt: PathLike,
    inputs: PathLike | None = None,
    out: PathLike | None = None,
    *,
    teacher: Teacher | None = None,
    generate_inputs: int | None = None,
    describe: str | None = None,
    axes: Mapping[str, Sequence[str]] | Sequence[str] = (),
    input_field: str = "input",
    baked_system: str | None = None,
    check_schema: PathLike | None = None,
    check_regex: str | None = None,
    max_length: int | None = None,
    structured: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
    name: str | None = None,
    price_model: str | None = None,
    ft_price_factor: float | None = None,
    epochs: int | None = None,
    store: PathLike | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
    formats: Sequence[str] | None = None,
    seed: int | None = None,
) -> Dataset:
    """Bake the long ``prompt`` (a Jinja template file) into short examples: ``inputs`` (JSONL,
    CSV or text; or ``generate_inputs`` N asked of the teacher from ``describe`` and ``axes``,
    ``{"tone": ["calm", "angry"]}`` or ``["tone=calm,angry"]``)
    answered under it, kept with only ``baked_system``. The prompt's own few-shot examples are kept
    out of the data; ``manifest.distill`` and ``report`` give the tokens saved and the break-even."""
    from promptbake.output.dataset import Dataset
    from promptbake.workflows import distill as distillation

    spec = distillation.distill_spec(
        prompt, inputs, baked_system=baked_system,
        checks=distillation.answer_checks(check_schema, check_regex, max_length),
        generate_inputs=generate_inputs, describe=describe, axes=_axes(axes),
        input_field=input_field, name=name, max_tokens=max_tokens, temperature=temperature, structured=structured,
    )
    directory = Path(out) if out is not None else default_out(spec)
    result = await distillation.distill_async(
        spec, directory, store, teacher, _options(max_cost, no_cache, progress),
        formats=list(formats) if formats else None, seed=seed, price_model=price_model, ft_factor=ft_price_factor,
        epochs=epochs,
    )
    return Dataset.load(directory, report=result, store=Path(store) if store is not None else None)


distill = synchronous(distill_async)


def _axes(axes: Mapping[str, Sequence[str]] | Sequence[str]) -> dict[str, list[str]]:
    """``{"tone": ["calm", "angry"]}``, or the ``--axis`` form ``["tone=calm,angry"]``."""
    from promptbake.workflows.distill import parse_axis

    if isinstance(axes, Mapping):
        return {name: list(values) for name, values in axes.items()}
    return dict(map(parse_axis, axes))


async def evaluate_async(
    data: PathLike,
    out: PathLike,
    *,
    teacher: Teacher,
    spec: SpecSource | None = None,
    metadata: PathLike | None = None,
    checks: Mapping[str, Any] | None = None,
    criteria: str | None = None,
    pass_score: int | None = None,
    judge: Teacher | None = None,
    sweep: Sequence[str] | Mapping[str, Sequence[int | float]] = (),
    store: PathLike | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
    model_version: str | None = None,
) -> EvalReport:
    """Run the model ``teacher`` names (a fine-tune, a local model) on the test split ``data`` and
    score every answer per category; per-example results go to ``out`` (JSONL), the store to
    ``out`` with a ``.db`` suffix (calling again resumes).

    ``checks`` takes the keys ``json``, ``schema`` (a dict or a schema file), ``regex``,
    ``max_length`` and ``exact``, laid over the spec's ``eval`` block (or ``example.checks``);
    ``criteria`` is a rubric that ``judge`` (over the spec's teacher) scores 1-5. ``sweep`` is a
    grid of sampling settings, e.g. ``{"temperature": [0, 0.7]}``. ``model_version`` keys the
    answers instead of the server's URL, so a retrained model under the same name answers anew."""
    from promptbake.curate.checks import read_schema
    from promptbake.specification.models import TeacherConfig
    from promptbake.teacher.config import merge
    from promptbake.workflows.evaluate import Scoring, judge_config, run_eval_async

    loaded = load_spec(spec) if spec is not None else None
    flags = dict(checks or {})
    if isinstance(flags.get("schema"), str | os.PathLike):
        flags["schema"] = read_schema(flags["schema"])
    scoring = Scoring.build(loaded, flags, criteria, pass_score)
    judge_model = judge_config(loaded, judge) if scoring.criteria else None
    return await run_eval_async(data, out, merge(TeacherConfig(), teacher), metadata=metadata, scoring=scoring,
                                sweeps=sweep, judge=judge_model, store_path=store, no_cache=no_cache,
                                max_cost=max_cost, progress=progress, model_version=model_version)


evaluate = synchronous(evaluate_async)


async def topup_async(
    spec: SpecSource,
    eval_file: PathLike | None = None,
    dataset: PathLike | None = None,
    *,
    study: PathLike | None = None,
    per_category: int = 10,
    threshold: float | None = None,
    bottom: int | None = None,
    rising: float | None = None,
    metric: str = "auto",
    teacher: Teacher | None = None,
    store: PathLike | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
) -> Dataset:
    """Generate ``per_category`` more examples for the categories an ``eval_file`` (ours, or any
    JSONL with ``category`` and ``pass`` or ``score``) shows weak: below ``threshold`` (default
    0.8) or the worst ``bottom``. They go into the next train version of ``dataset``
    (``train.v2.jsonl``...), deduplicated against train and test; ``test.jsonl`` never changes.

    With ``study`` (a ``study.jsonl``) instead of an eval file, the weak categories are those whose
    learning curve ends lowest (below ``threshold``, or the ``bottom`` lowest) or still rose by
    ``rising`` (default 0.05) between its last two sizes, by ``metric`` (any metric the study
    measured; ``auto``: the pass rate); ``dataset`` defaults to the study's. Running the study
    again then adds the new training version's size."""
    from promptbake.output.dataset import Dataset
    from promptbake.workflows.topup import topup_async as run_topup

    options = _options(max_cost, no_cache, progress)
    if (eval_file is None) == (study is None):
        from promptbake.errors import InputError

        raise InputError("give an eval file (--eval) or a study (--study), one of them")
    if study is not None:
        from promptbake.workflows.study import topup_from_study_async

        report = await topup_from_study_async(load_spec(spec), study, dataset,
                                              metric=None if metric == "auto" else metric, threshold=threshold,
                                              rising=rising, bottom=bottom, per_category=per_category,
                                              store_path=store, teacher=teacher, options=options)
        return Dataset.load(report.train_path.parent, report=report, store=Path(store) if store is not None else None)
    if dataset is None or eval_file is None:
        from promptbake.errors import InputError

        raise InputError("--dataset: the built dataset to top up is needed with --eval")
    if rising is not None:
        from promptbake.errors import InputError

        raise InputError("--rising reads a learning curve: it needs --study, not --eval")
    report = await run_topup(load_spec(spec), eval_file, dataset, per_category=per_category, threshold=threshold,
                             bottom=bottom, metric=metric, store_path=store, teacher=teacher,  # type: ignore[arg-type]
                             options=options)
    return Dataset.load(dataset, report=report, store=Path(store) if store is not None else None)


topup = synchronous(topup_async)


def validate(file: PathLike, *, model: str | None = None, target: str = "openai") -> ValidationReport:
    """Check a fine-tuning JSONL file the way ``target``'s trainer will (``model`` for its token
    limit and price); the report lists every rejected line and the billed training tokens."""
    from promptbake.output.validate import validate_file

    return validate_file(file, model=model, target=target)


def export(directory: PathLike, formats: str | Iterable[str], out: PathLike, *, system: str | None = None,
           train_version: int | None = None) -> ExportResult:
    """Write the built dataset ``directory`` in other trainers' formats under ``out/<format>/``:
    ``system`` for examples without one (else the student's chat template adds its default),
    ``train_version`` to pick a training version (default: the latest top-up). The result lists
    each file written and names the training file they came from."""
    from promptbake.output.export import ExportResult, train_file
    from promptbake.output.export import export as export_dataset

    files = export_dataset(directory, [formats] if isinstance(formats, str) else formats, out, system=system,
                           train_version=train_version)
    return ExportResult(files, train_file(Path(directory), train_version))


def report(source: PathLike, out: PathLike | None = None, *, kind: Literal["dataset", "eval", "study"] | None = None,
           store: PathLike | None = None, spec: SpecSource | None = None, sample: int | None = None,
           ratings: PathLike | None = None) -> Path:
    """Write one self-contained HTML page about a built dataset directory (counts, plots, kept and
    dropped examples; default ``DIR/report.html``), an eval results file (pass rates, sweeps;
    default: the file with an ``.html`` suffix) or a study's ``study.jsonl`` (learning curves);
    returns its path. ``kind`` says which ``source`` is when its type is not enough (default: a
    study file is recognised by its lines, another file is eval results). ``store`` (default
    ``DIR/promptbake.db`` when it exists) adds timings, failures and dropped texts; ``spec`` the
    requested counts when there is no store. ``sample`` caps the examples of each kind listed
    (default 1,000). ``ratings`` (a ``rate`` store) adds the people's ratings as a section to a
    dataset's or an eval's page."""
    from promptbake.output.curves import is_study_file
    from promptbake.output.report import SAMPLE, write_eval_report, write_report

    sample = SAMPLE if sample is None else sample
    if kind == "study" or (kind is None and Path(source).is_file() and is_study_file(source)):
        from promptbake.output.study_report import write_study_report

        return write_study_report(source, out, sample=sample)
    sections = [rate_results(ratings).section()] if ratings is not None else []
    if kind == "eval" or (kind is None and Path(source).is_file()):
        return write_eval_report(source, out, sample=sample, sections=sections)
    return write_report(source, out, store=store, spec=load_spec(spec) if spec is not None else None,
                        sample=sample, sections=sections)


async def rate_async(sources: Sequence[PathLike], out: PathLike, *, port: int = 8770, host: str | None = None,
                     raters_per_item: int | None = None, repeat_share: float | None = None, seed: int | None = None,
                     on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the blind side-by-side rating page for ``sources`` (eval files, built datasets; two or
    more, ``NAME=PATH`` to name one) until cancelled, storing each rating in ``out`` (a SQLite file,
    or a directory holding ``ratings.db``) as it is given. Started again, it resumes every rater
    where they were (``sources`` may then be empty). Each unit (an example and a pair of sources) is
    given to ``raters_per_item`` raters (default 1), and a ``repeat_share`` of a rater's units
    (default 0.1) comes back to them, sides swapped. It listens on 127.0.0.1, or on ``host``, which
    then needs a random token in the URL; ``on_ready`` receives the URL to open. A source that is
    a model folder ``train_local`` wrote is answered first on the test split of the built dataset
    among the sources, through ``evaluate`` (its answers land beside ``out``)."""
    from promptbake.rate.assign import open_study
    from promptbake.rate.server import serve
    from promptbake.rate.students import answer_students

    given = await answer_students([str(s) for s in sources], out)
    store = open_study(out, given, raters_per_item=raters_per_item, repeat_share=repeat_share, seed=seed)
    with store:
        await serve(store, host=host, port=port, on_ready=on_ready)


rate = synchronous(rate_async)


def rate_results(ratings: PathLike, *, rounds: int | None = None) -> RateResults:
    """The statistics of a ratings store: win rate of each pair with Wilson 95% intervals,
    Bradley–Terry strengths with ``rounds`` (default 1,000) bootstrap rounds when there are more
    than two sources, position bias, per-category results, inter-rater agreement, self-consistency
    and, where the eval files carried judge scores, judge–human agreement. ``.format()`` is the
    text ``promptbake rate --results`` prints, ``.to_json()`` its ``--json``, ``.section()`` the
    report's HTML section."""
    from promptbake.rate import RateResults

    return RateResults.load(ratings, rounds)


async def batch_status_async(store: PathLike, *, refresh: bool = True,
                             api_key_env: str = "OPENAI_API_KEY") -> list[BatchFile]:
    """Every Batch API job a ``store`` has sent (``generate(..., batch=BatchOptions())``): its
    step, status and request counts, the open ones as the provider sees them now (``refresh=False``:
    as the store last heard). Read-only, so it works while a run holds the store. Each provider is
    asked with the key variable its batches were sent with (``api_key_env``: for stores that did
    not record it)."""
    from promptbake.teacher.batch import batch_status as status

    return await status(store, refresh=refresh, api_key_env=api_key_env)


batch_status = synchronous(batch_status_async)


async def cancel_batches_async(store: PathLike, *, api_key_env: str = "OPENAI_API_KEY") -> list[BatchFile]:
    """Cancel the open Batch API jobs of ``store``; returns them with the provider's new status.
    The next run keeps what they completed and re-submits the rest."""
    from promptbake.teacher.batch import cancel_batches as cancel

    return await cancel(store, api_key_env=api_key_env)


cancel_batches = synchronous(cancel_batches_async)


def export_batch(spec: SpecSource, store: PathLike = DEFAULT_STORE, out: PathLike = "batch", *,
                 teacher: Teacher | None = None, max_lines: int | None = None) -> ExportReport:
    """Run a spec without a server: write the pending requests of its next step (planning rounds
    and top-ups as ``run`` does) as Batch API input files in ``out``, at most ``max_lines`` each
    (default: the provider limit, 50,000), for vLLM's ``run_batch`` or any provider's batch
    upload; ``teacher.model`` names the model in the requests. ``import_batch`` stores the
    answers; repeat until the report's ``step`` is None, then ``build``."""
    from promptbake.teacher.batchfile import MAX_LINES
    from promptbake.workflows.offline import export_batch_files

    return export_batch_files(load_spec(spec), store, out, teacher,
                              max_lines=MAX_LINES if max_lines is None else max_lines)


def import_batch(store: PathLike, files: PathLike | Iterable[PathLike]) -> ImportReport:
    """Store the answers in batch output ``files`` (vLLM ``run_batch -o``, or a provider's output
    or error file) as the answers of the requests ``export_batch`` wrote; an answer already stored
    is not stored twice, and a malformed line stores nothing of its file."""
    from promptbake.workflows.offline import import_batch_output

    return import_batch_output(store, [files] if isinstance(files, str | os.PathLike) else files)


def local_teacher(host: str = "127.0.0.1", port: int | None = None, *,
                  model: PathLike | None = None) -> LocalTeacher:
    """The embedded teacher (SmolLM2-135M on llama.cpp, needs ``promptbake[local]``) for other
    tools: ``with local_teacher() as server:`` serves an OpenAI-compatible API at
    ``server.base_url`` until the block ends. ``model`` serves a student ``train`` wrote (its
    folder) or any GGUF file instead, under a name carrying the file's hash (``server.model``).
    ``run(..., teacher=Teacher(kind="local"))`` starts and stops one by itself."""
    from promptbake.teacher.local import LocalTeacher

    return LocalTeacher(host=host, port=port, model=model)


def build_local_teacher(source: PathLike | None = None, *, force: bool = False,
                        echo: Callable[[str], None] | None = None) -> Path:
    """Build llama.cpp's ``llama-server`` for the local teacher, once (about 2 minutes; a no-op
    when it is built for this llama-cpp-python and CPU): the local teacher then runs one per core,
    each answering one request at a time, faster than on llama-cpp-python's own server.
    ``source`` is the installed llama-cpp-python's sdist, for machines without PyPI (another
    version is refused); ``echo`` receives progress lines. Returns the binary's path."""
    from promptbake.teacher.engine import build_llama_server

    return build_llama_server(source, force=force, echo=echo)


async def train_hosted_async(
    directory: PathLike,
    *,
    provider: Literal["openai", "together", "fireworks"],
    model: str,
    base_url: str | None = None,
    api_key_env: str | None = None,
    account: str | None = None,
    epochs: int | None = None,
    price: float | None = None,
    max_cost: float | None = None,
    validation: bool = False,
    suffix: str | None = None,
    dry_run: bool = False,
    wait: bool = True,
    poll: float = 60.0,
    new_job: bool = False,
    echo: Callable[[str], None] | None = None,
) -> HostedTrainResult:
    """Fine-tune ``model`` at ``provider`` on the built dataset ``directory`` (its latest
    ``train.vN``): check the file against the provider's published rules (``ValidationFailed``,
    naming the rule and line, before anything is uploaded), price it (billed tokens x ``epochs``
    x the table's price or ``price`` USD per 1M tokens; ``max_cost`` refuses an unknown or higher
    estimate), upload, launch and, with ``wait``, follow the job (status checks at most ``poll``
    seconds apart) until ``directory/train.json`` holds the fine-tuned model id. ``validation``
    uploads the test split as the validation file. Calling it again re-attaches to the recorded
    job; ``new_job`` launches another after a failed or cancelled one. ``dry_run`` stops after the
    check and the price. The key is read from ``api_key_env`` (default ``<PROVIDER>_API_KEY``), the
    server from ``base_url`` (default ``<PROVIDER>_BASE_URL``, else the public API); Fireworks needs
    ``account`` (or ``FIREWORKS_ACCOUNT_ID``). ``echo`` receives progress lines."""
    from promptbake.train.hosted import TrainOptions
    from promptbake.train.hosted import train_hosted_async as run
    from promptbake.train.providers import Connection

    options = TrainOptions(epochs=epochs, price=price, max_cost=max_cost, validation=validation, suffix=suffix,
                           dry_run=dry_run, wait=wait, poll=poll, new_job=new_job)
    return await run(directory, Connection.resolve(provider, base_url, api_key_env, account), model, options, echo)


train_hosted = synchronous(train_hosted_async)


async def train_status_async(directory: PathLike, *, refresh: bool = True) -> list[TrainJob]:
    """The hosted training jobs recorded for ``directory``, oldest first, the open ones as their
    provider sees them now (``refresh=False``: as the store last heard); one found succeeded writes
    ``directory/train.json``. Read-only on the store's lock, so it works while ``train`` waits."""
    from promptbake.train.hosted import train_status_async as status

    return await status(directory, refresh=refresh)


train_status = synchronous(train_status_async)


async def train_cancel_async(directory: PathLike) -> list[TrainJob]:
    """Cancel the open hosted training jobs of ``directory``; returns them as their provider then
    reports them."""
    from promptbake.train.hosted import train_cancel_async as cancel

    return await cancel(directory)


train_cancel = synchronous(train_cancel_async)


def train_local(
    dataset: PathLike,
    out: PathLike,
    *,
    method: Literal["sft", "dpo"] = "sft",
    student: PathLike | None = None,
    lora: bool = False,
    lora_r: int = 16,
    max_length: int = 512,
    epochs: float = 3.0,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int = 4,
    seed: int = 0,
    validation: float | int = 0.1,
    save_steps: int = 10,
    beta: float = 0.1,
    gguf: GgufType | None = "q8_0",
    restart: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune a student on this machine (needs ``promptbake[train]``) on the built dataset
    ``dataset`` (its latest training file; never ``test.jsonl``) into the model folder ``out``:
    safetensors, tokenizer and chat template, ``model.gguf`` for the local engine (``gguf=None``:
    none) and ``train.json``. ``student`` is a Hugging Face model folder (default: the embedded
    SmolLM2-135M-Instruct); ``method`` ``sft`` trains on the assistant turns, ``dpo`` on
    preference pairs; ``lora`` trains a LoRA adapter of rank ``lora_r`` and merges it.
    ``validation`` (a fraction or a count of the training file, stratified by category) gives the
    validation loss. The same call resumes from the last checkpoint after a crash or ``kill -9``,
    and trains nothing when ``out`` already holds this exact run (``restart`` trains anew). The
    model then answers through ``Teacher(local_model=out)`` and ``local_teacher(model=out)``.

    (Not ``promptbake.train``: that name is the package holding the training code.)"""
    from promptbake.train.local import TrainOptions, train

    options = TrainOptions(method=method, student=None if student is None else str(student), lora=lora,
                           lora_r=lora_r, max_length=max_length, epochs=epochs, max_steps=max_steps,
                           learning_rate=learning_rate, batch_size=batch_size, seed=seed, validation=validation,
                           save_steps=save_steps, beta=beta, gguf=gguf)
    return train(dataset, out, options, restart=restart, progress=progress, echo=echo)


def _study_options(sizes: Sequence[int], seeds: int, sweep: Sequence[str] | Mapping[str, Sequence[int | float]],
                   targets: Sequence[str] | Mapping[str, float] | None, student: PathLike | None,
                   trained: Mapping[Any, str] | Sequence[str] | None, training: Mapping[str, Any],
                   hosted: Mapping[str, Any]) -> StudyOptions:
    """The study's options; ``hosted`` holds ``provider`` and its keywords (``model``, the
    provider's ``provider_base_url``, ``provider_api_key_env``, ``account``, ``price``,
    ``new_job``, ``poll``), ``training`` the rest, ``epochs`` whole numbers with a provider."""
    from promptbake.output.curves import parse_targets
    from promptbake.workflows.study import HostedStudents, StudyOptions, parse_trained

    epochs = training.get("epochs")
    students = None
    if hosted.get("provider") is not None:
        from promptbake.errors import InputError
        from promptbake.train.providers import Connection

        if not hosted.get("model"):
            raise InputError("--provider needs --model BASE, the base model to fine-tune (size 0 answers as it)")
        if epochs is not None and not float(epochs).is_integer():
            raise InputError(f"--epochs {epochs}: a hosted job trains whole epochs")
        connection = Connection.resolve(hosted["provider"], hosted.get("provider_base_url"),
                                        hosted.get("provider_api_key_env"), hosted.get("account"))
        students = HostedStudents(connection=connection, model=str(hosted["model"]),
                                  epochs=None if epochs is None else int(epochs), price=hosted.get("price"),
                                  new_job=bool(hosted.get("new_job")), poll=float(hosted.get("poll") or 60.0))
    return StudyOptions(sizes=tuple(sizes), seeds=seeds, sweep=sweep,
                        targets=parse_targets(dict(targets) if isinstance(targets, Mapping) else list(targets or [])),
                        student=None if student is None else str(student), trained=parse_trained(trained),
                        hosted=students, **{**training, "epochs": 3.0 if epochs is None else float(epochs)})


async def study_async(
    spec: SpecSource,
    out: PathLike | None = None,
    *,
    sizes: Sequence[int],
    seeds: int = 1,
    dataset: PathLike | None = None,
    sweep: Sequence[str] | Mapping[str, Sequence[int | float]] = (),
    targets: Sequence[str] | Mapping[str, float] | None = None,
    student: PathLike | None = None,
    trained: Mapping[Any, str] | Sequence[str] | None = None,
    provider: Literal["openai", "together", "fireworks"] | None = None,
    model: str | None = None,
    provider_base_url: str | None = None,
    provider_api_key_env: str | None = None,
    account: str | None = None,
    price: float | None = None,
    new_job: bool = False,
    poll: float = 60.0,
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: int = 4,
    max_steps: int | None = None,
    max_length: int = 512,
    save_steps: int = 10,
    lora: bool = False,
    lora_r: int = 16,
    keep_weights: bool = False,
    teacher: Teacher | None = None,
    judge: Teacher | None = None,
    max_cost: float | None = None,
    no_cache: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> StudyReport:
    """How much data does the student need? Build (or reuse) the spec's dataset (``dataset``,
    default ``out/<spec name>`` as ``run`` builds it), train one student per size in ``sizes`` and
    seed in ``range(seeds)`` on nested, stratified subsets of its training split (size 0: the
    untrained student; needs ``promptbake[train,local]``), score each on the same test split with
    the spec's ``eval`` block (``sweep``: under each sampling setting), and add the teacher's own
    answers and the untrained student given the teacher's full prompt as reference rows.

    Writes ``out`` (default ``out/<spec name>-study``): ``study.jsonl`` (one line per model ×
    setting × category), ``study.html``, the students (``students/``, their GGUFs) and their
    answers (``evals/``, ``eval.db``). ``targets`` (``["keys=0.8"]`` or ``{"keys": 0.8}``) asks
    at which size each category reaches a value. ``trained`` names models trained elsewhere
    (``{25: "ft:..."}``, ``{(25, 1): ...}`` or ``["25=ft:...", "25/1=ft:..."]``, size 0 the base
    model), answered through ``teacher``'s server.

    ``provider`` (``openai``, ``together``, ``fireworks``) fine-tunes ``model`` there instead, one
    job per size and seed on its subset, through :func:`train_hosted`'s code (``epochs``: the
    provider's rule when None; ``price`` USD per 1M training tokens; ``provider_base_url``,
    ``provider_api_key_env`` and ``account`` as ``train_hosted``'s ``base_url``, ``api_key_env``
    and ``account``), launched together and followed (``poll``) until each ends; each fine-tune and
    ``model`` (size 0) then answer through ``teacher``'s server. ``max_cost`` also refuses, before
    anything is uploaded, jobs estimated above it together or at an unknown price. A failed job is
    in ``report.failed`` and the other students are studied; ``new_job`` launches it again.
    Calling again resumes and repeats nothing (no upload, no job, no request already answered)."""
    from promptbake.workflows.study import study_async as run_study

    options = _study_options(sizes, seeds, sweep, targets, student, trained, {
        "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "max_steps": max_steps,
        "max_length": max_length, "save_steps": save_steps, "lora": lora, "lora_r": lora_r,
        "keep_weights": keep_weights}, {
        "provider": provider, "model": model, "provider_base_url": provider_base_url,
        "provider_api_key_env": provider_api_key_env, "account": account, "price": price, "new_job": new_job,
        "poll": poll})
    return await run_study(load_spec(spec), out, dataset=dataset, options=options, teacher=teacher, judge=judge,
                           generate=_options(max_cost, no_cache, progress), progress=progress, echo=echo)


study = synchronous(study_async)


def study_plan(
    spec: SpecSource,
    out: PathLike | None = None,
    *,
    sizes: Sequence[int],
    seeds: int = 1,
    dataset: PathLike | None = None,
    sweep: Sequence[str] | Mapping[str, Sequence[int | float]] = (),
    student: PathLike | None = None,
    trained: Mapping[Any, str] | Sequence[str] | None = None,
    provider: Literal["openai", "together", "fireworks"] | None = None,
    model: str | None = None,
    provider_base_url: str | None = None,
    provider_api_key_env: str | None = None,
    account: str | None = None,
    price: float | None = None,
    new_job: bool = False,
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: int = 4,
    max_steps: int | None = None,
    max_length: int = 512,
    save_steps: int = 10,
    lora: bool = False,
    lora_r: int = 16,
    teacher: Teacher | None = None,
    max_cost: float | None = None,
) -> StudyPlan:
    """What ``study`` with the same arguments would do, before anything runs (``--dry-run``):
    the dataset to build, the students to train, the requests to send, and the time this machine
    would take (from the study's own earlier runs when it has any) or the hosted eval's cost; with
    ``provider``, each job's check and training price as :func:`train_hosted` with ``dry_run``
    gives them, nothing uploaded, and in ``plan.refused`` what ``max_cost`` would refuse."""
    from promptbake.workflows.study import plan_study

    options = _study_options(sizes, seeds, sweep, None, student, trained, {
        "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "max_steps": max_steps,
        "max_length": max_length, "save_steps": save_steps, "lora": lora, "lora_r": lora_r}, {
        "provider": provider, "model": model, "provider_base_url": provider_base_url,
        "provider_api_key_env": provider_api_key_env, "account": account, "price": price, "new_job": new_job})
    return plan_study(load_spec(spec), out, dataset=dataset, options=options, teacher=teacher, max_cost=max_cost)
