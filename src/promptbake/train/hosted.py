"""Train the student on a hosted provider: check, price, upload, launch, follow, record.

``train_hosted`` takes a built dataset directory (its latest ``train.vN``) and, in this order:

1. writes the training file (and, with ``validation``, the test split as a validation file) in
   ``openai-chat``, which every provider here reads, through the project's exporter, under
   ``DIR/hosted/<provider>/``: the exact bytes that will be uploaded;
2. checks them against the provider's published rules (``output/targets.py``, enforced by
   ``output/validate.py``; Together's own SDK check as well) and refuses, naming the rule and the
   first offending line, before anything is uploaded;
3. prices the job: billed tokens × epochs × the training price (``targets.py``'s table, or the
   caller's ``price``); an unknown price is refused under ``max_cost``;
4. uploads and creates the job, recording each name before the call and each id the moment the
   provider returns it (``store/train_jobs.py``, in ``DIR/promptbake.db``);
5. follows the job until it ends and writes ``DIR/train.json`` with the fine-tuned model id.

Running it again re-attaches: recorded uploads and jobs are reused, and one whose id was lost (the
process was killed between the provider's answer and the store's commit) is found at the provider
by its name, so nothing is uploaded or launched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from promptbake.errors import BudgetExceeded, InputError, TrainingError, ValidationFailed
from promptbake.output.atomic import write_text_atomic
from promptbake.output.export import read_dataset, train_file, write_format
from promptbake.output.targets import get_target
from promptbake.output.training_cost import default_epochs, listed_price
from promptbake.output.validate import ValidationReport, overlapping_lines, validate_file
from promptbake.store.db import Store
from promptbake.store.train_jobs import TrainJob, TrainLedger
from promptbake.train.providers import Connection, JobRequest, JobView, Provider, connect, provider_class

UPLOAD_FORMAT = "openai-chat"  # read by OpenAI, Together and Fireworks alike; keeps per-message weight
TRAIN_JSON = "train.json"
POLL_FIRST = 0.25  # seconds before the first status check; doubles up to ``poll``

OPENAI_LAST_DAY = date(2027, 1, 6)
OPENAI_NOTICE = (
    "OpenAI fine-tuning is legacy: self-serve fine-tuning accepts no new jobs after 2027-01-06 (none "
    "since 2026-05-07 for organisations that never fine-tuned); fine-tuned models keep serving until "
    "their base model retires. The same dataset trains on --provider together or fireworks."
)

Echo = Callable[[str], None]


@dataclass
class TrainEstimate:
    """What the job will bill, with its parts, so the user sees how the total was reached."""

    examples: int
    tokens_per_epoch: int
    epochs: int
    validation_tokens: int  # evaluation tokens the provider bills (Together: per eval)
    usd_per_1m: float | None
    price_source: str
    token_note: str | None = None  # the counts are approximate for this model's tokenizer

    @property
    def billed_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs + self.validation_tokens

    @property
    def cost(self) -> float | None:
        return None if self.usd_per_1m is None else self.billed_tokens * self.usd_per_1m / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        return {"examples": self.examples, "tokens_per_epoch": self.tokens_per_epoch, "epochs": self.epochs,
                "validation_tokens": self.validation_tokens, "billed_tokens": self.billed_tokens,
                "usd_per_1m": self.usd_per_1m, "price_source": self.price_source, "cost": self.cost}

    def format(self, note: bool = True) -> str:
        """One line (and ``token_note`` on the next, unless ``note`` is False)."""
        extra = f" + {self.validation_tokens:,} validation" if self.validation_tokens else ""
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        head = (f"{self.examples:,} examples: {self.tokens_per_epoch:,} tokens per epoch x {epochs}"
                f"{extra} = {self.billed_tokens:,} billed tokens")
        if self.cost is None:
            price = f"estimated cost unknown ({self.price_source}; give --price USD_PER_1M)"
        else:
            price = f"estimated cost ${self.cost:,.2f} at ${self.usd_per_1m:,.2f} per 1M tokens ({self.price_source})"
        tail = f"\n{self.token_note}" if self.token_note and note else ""
        return f"{head}; {price}{tail}"


@dataclass
class TrainPlan:
    """Everything decided before anything is uploaded: the files, their check, the price."""

    directory: Path
    connection: Connection
    model: str
    train_source: str  # the dataset's training file (train.jsonl, train.v2.jsonl...)
    train_path: Path  # the file to upload
    train_name: str  # its upload name: promptbake-<dataset>-train-<content hash>
    validation_path: Path | None
    validation_name: str | None
    report: ValidationReport
    estimate: TrainEstimate
    settings: dict[str, Any]
    key: str  # the same command on the same data gives the same key: a re-run re-attaches
    warnings: list[str] = field(default_factory=list)


@dataclass
class HostedTrainResult:
    """What ``train_hosted`` did: the plan, the recorded job (None on a dry run) and how it got it."""

    plan: TrainPlan
    job: TrainJob | None = None
    uploaded: int = 0  # files this call uploaded
    reattached: bool = False  # the job (or its uploads) came from an earlier run
    created: bool = False  # this call launched the job

    def format(self) -> str:
        job = self.job
        if job is None:
            return (f"dry run: nothing uploaded; the files it would upload are in "
                    f"{self.plan.train_path.parent}")
        how = "launched" if self.created else "re-attached to"
        line = f"{how} {job.provider} job {job.job_id}: {job.status}"
        if job.status == "succeeded":
            line += f"; fine-tuned model {job.fine_tuned_model} (in {self.plan.directory / TRAIN_JSON})"
        elif not job.finished:
            line += (f"; `promptbake train status {self.plan.directory}` to follow it, or run this command "
                     "again to wait for it")
        return f"{line} ({self.uploaded} files uploaded)"


# --- planning: nothing leaves the machine ----------------------------------------------------


def _slug(text: str) -> str:
    """Lowercase letters, digits and hyphens: every provider's id alphabet (Fireworks' is the
    narrowest)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")[:20] or "dataset"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refusal(report: ValidationReport, label: str, provider: str) -> ValidationFailed:
    """The first rule the file breaks (file-wide ones first), naming the line it breaks it on."""
    key = min(report.errors, key=lambda k: (report.errors[k][0] if report.errors[k] else 0, k))
    lines = report.errors[key]
    where = f"{label}:{lines[0]}" if lines else label
    more = report.error_count() - 1
    tail = f" (and {more} more: promptbake validate {report.path} --target {provider})" if more else ""
    return ValidationFailed(f"{where}: {provider} would refuse this file: {key}: {report.details.get(key, '')}{tail}")


def _provider_check(provider: str, path: Path, label: str) -> str | None:
    """The provider SDK's own file check where it has one (Together's ``check_file``); returns a
    warning when the SDK is missing, raises when the check fails."""
    if provider != "together":
        return None
    try:
        from together.lib import check_file
    except ImportError:
        return ("the together SDK is not installed, so its own file check was skipped: "
                "pip install 'promptbake[together]'")
    found = check_file(path)
    if not found.get("is_check_passed"):
        line = found.get("line_number")
        where = f"{label}:{line}" if line else label
        message = " ".join(str(found.get("message")).split())
        raise ValidationFailed(f"{where}: together's file check refuses it: {message}")
    return None


def plan_training(directory: str | Path, connection: Connection, model: str, *, epochs: int | None = None,
                  price: float | None = None, validation: bool = False, suffix: str | None = None) -> TrainPlan:
    """Write the files to upload, check them against the provider's rules and price the job.

    Raises ``ValidationFailed`` (exit 2) naming the rule and the first offending line when the
    provider would refuse a file."""
    directory = Path(directory)
    provider = connection.provider
    longest = provider_class(provider).max_suffix
    if suffix and longest is not None and len(suffix) > longest:
        raise InputError(f"--suffix {suffix!r}: {provider} takes at most {longest} characters")
    data = read_dataset(directory)
    source = train_file(directory)
    if validation and not data.get("test"):
        raise InputError(f"{directory}: no test.jsonl to use as the validation file")
    splits = {"train": data["train"], **({"validation": data["test"]} if validation else {})}
    folder = directory / "hosted" / provider
    write_format(UPLOAD_FORMAT, splits, folder)
    train_path = folder / "train.jsonl"
    valid_path = folder / "validation.jsonl" if validation else None

    report = validate_file(train_path, model=model, target=provider)
    if not report.ok:
        raise _refusal(report, str(directory / source), provider)
    warnings = [w for w in [_provider_check(provider, train_path, str(directory / source))] if w]
    valid_tokens = 0
    if valid_path is not None:
        label = str(directory / "test.jsonl")
        valid_report = validate_file(valid_path, model=model, target=provider)
        valid_report.errors.pop("too_few_examples", None)  # the minimum is the training file's
        if not valid_report.ok:
            raise _refusal(valid_report, label, provider)
        _provider_check(provider, valid_path, label)
        overlap = overlapping_lines(train_path, valid_path)
        if overlap:
            raise ValidationFailed(f"{label}:{overlap[0]}: validation_overlaps_train: {len(overlap)} validation "
                                   f"examples are also in {source}; a validation file must not overlap training")
        # Together bills the validation file once per evaluation (one here); OpenAI does not bill it
        valid_tokens = valid_report.tokens_per_epoch if provider == "together" else 0

    target = get_target(provider)
    if epochs is None:
        epochs = default_epochs(report.n_examples) if target.openai_epochs else (target.default_epochs or 1)
    listed = listed_price(provider, model)
    if price is not None:
        usd, where = price, "--price"
    elif listed is not None:
        usd, where = listed, f"{provider}'s list price for {model}"
    else:
        usd, where = None, f"no {provider} training price for {model} in the table"
    note = next((n for n in report.notes if "approximate" in n or "token" in n.lower()), None)
    estimate = TrainEstimate(report.n_examples, report.tokens_per_epoch, epochs, valid_tokens, usd, where, note)

    settings = {"epochs": epochs, "suffix": suffix, "validation": validation}
    train_hash, valid_hash = _digest(train_path), _digest(valid_path) if valid_path else None
    identity = {"provider": provider, "base_url": connection.base_url, "account": connection.account,
                "model": model, **settings, "train": train_hash, "validation": valid_hash}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    name = f"promptbake-{_slug(directory.resolve().name)}"
    if provider == "openai":
        warnings.insert(0, OPENAI_NOTICE if date.today() <= OPENAI_LAST_DAY else
                        f"OpenAI accepts no new self-serve fine-tuning jobs since {OPENAI_LAST_DAY}: expect a "
                        "refusal unless your organisation has another arrangement. " + OPENAI_NOTICE)
    return TrainPlan(
        directory=directory, connection=connection, model=model, train_source=source, train_path=train_path,
        train_name=f"{name}-train-{train_hash[:16]}", validation_path=valid_path,
        validation_name=f"{name}-validation-{valid_hash[:16]}" if valid_hash else None,
        report=report, estimate=estimate, settings=settings, key=key, warnings=warnings,
    )


def check_budget(estimates: TrainEstimate | Sequence[TrainEstimate], max_cost: float | None) -> None:
    """Refuse a job (or several, launched together: their total) whose estimate is over
    ``max_cost``, or unknown while a limit is set."""
    if max_cost is None:
        return
    several = list(estimates) if isinstance(estimates, Sequence) else [estimates]
    unknown = next((e for e in several if e.cost is None), None)
    if unknown is not None:
        raise BudgetExceeded(f"--max-cost {max_cost}: the training price is unknown ({unknown.price_source}); "
                             "give --price USD_PER_1M (the provider's price per 1M training tokens) to launch")
    cost = sum(e.cost or 0.0 for e in several)
    if cost > max_cost:
        what = "the job is" if len(several) == 1 else f"the {len(several)} jobs are"
        raise BudgetExceeded(f"--max-cost {max_cost}: {what} estimated at ${cost:,.2f} "
                             f"({sum(e.billed_tokens for e in several):,} billed tokens); nothing was uploaded")


# --- launching and following -----------------------------------------------------------------


def store_path(directory: Path) -> Path:
    """The dataset's store, where ``run`` keeps its answers: DIR/promptbake.db."""
    from promptbake.workflows.pipeline import default_store

    return default_store(directory)


def _record(ledger: TrainLedger, job: TrainJob, view: JobView) -> bool:
    """Store what the provider says about the job; True when its state changed."""
    changed = (view.state, view.raw_status) != (job.status, job.raw_status)
    ledger.update(job, job_id=view.id, status=view.state, raw_status=view.raw_status,
                  fine_tuned_model=view.fine_tuned_model or job.fine_tuned_model, error=view.error,
                  trained_tokens=view.trained_tokens or job.trained_tokens)
    return changed


def write_train_json(directory: Path, job: TrainJob) -> Path:
    """``DIR/train.json``: the fine-tuned model (``model``, what ``eval --model`` takes) and where
    it came from."""
    path = directory / TRAIN_JSON
    data = {
        "model": job.fine_tuned_model, "provider": job.provider, "base_model": job.base_model,
        "job_id": job.job_id, "train_file": job.train_source, "base_url": job.base_url,
        "trained_tokens": job.trained_tokens, "estimated_cost_usd": (job.estimate or {}).get("cost"),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


class _Launch:
    """One ``train`` call's work at the provider, on the recorded attempt ``job``."""

    def __init__(self, api: Provider, ledger: TrainLedger, result: HostedTrainResult, say: Echo) -> None:
        self.api, self.ledger, self.result, self.say = api, ledger, result, say
        self.plan = result.plan
        assert result.job is not None
        self.job: TrainJob = result.job

    async def uploads(self) -> None:
        """Each file once: an id recorded here or by an earlier attempt is reused; an upload a
        killed run made but never recorded is found at the provider by its name."""
        job, plan = self.job, self.plan
        files = [("train", plan.train_path, job.train_name)]
        if plan.validation_path is not None and job.validation_name:
            files.append(("validation", plan.validation_path, job.validation_name))
        for which, path, name in files:
            if getattr(job, f"{which}_file_id"):
                continue
            conn = plan.connection
            file_id = self.ledger.known_upload(conn.provider, conn.base_url, conn.account, name)
            if file_id is None and self.result.reattached:
                file_id = await self.api.find_upload(name)
            if file_id is None:
                self.say(f"uploading {path} as {name}")
                file_id = await self.api.upload(path, name)
                self.result.uploaded += 1
            self.ledger.update(job, **{f"{which}_file_id": file_id})
        if job.status == "local":
            self.ledger.update(job, status="uploaded")

    async def launch(self) -> None:
        """Create the job unless one exists for this attempt (recorded, or found at the provider)."""
        job = self.job
        if job.job_id is not None:
            return
        request = JobRequest(job.job_name, job.base_model, str(job.train_file_id), job.validation_file_id,
                             int(job.settings["epochs"]), job.settings.get("suffix"))
        view = None
        if self.result.reattached:
            view = await self.api.find_job(request, job.created_at, self.ledger.recorded_job_ids())
        if view is None:
            view = await self.api.create_job(request)
            self.result.created = True
        _record(self.ledger, job, view)
        self.say(f"{job.provider} job {job.job_id}: {job.status}")

    async def follow(self, poll: float) -> None:
        """Check the job with growing pauses (up to ``poll`` seconds) until it ends."""
        job = self.job
        delay = min(POLL_FIRST, poll)
        while not job.finished:
            await asyncio.sleep(delay)
            delay = min(delay * 2, poll)
            if _record(self.ledger, job, await self.api.retrieve(str(job.job_id))):
                raw = f" ({job.raw_status})" if job.raw_status != job.status else ""
                self.say(f"{job.provider} job {job.job_id}: {job.status}{raw}")


def _new_attempt(plan: TrainPlan) -> TrainJob:
    conn = plan.connection
    return TrainJob(
        id=0, key=plan.key, provider=conn.provider, base_url=conn.base_url, account=conn.account,
        api_key_env=conn.api_key_env, base_model=plan.model, train_source=plan.train_source,
        settings=plan.settings, train_name=plan.train_name, train_file_id=None,
        validation_name=plan.validation_name, validation_file_id=None,
        job_name=f"promptbake-{uuid.uuid4().hex[:24]}", estimate=plan.estimate.to_dict(),
    )


def _ended(job: TrainJob) -> TrainingError:
    return TrainingError(f"{job.provider} job {job.job_id} {job.status}: {job.error or 'the provider gave no reason'}"
                         " (run again with --new-job to launch another on the same uploads)")


@dataclass
class TrainOptions:
    """How ``train_hosted`` runs, beyond where and what: ``promptbake train``'s flags."""

    epochs: int | None = None  # None: the provider's default (OpenAI's rule, else 1)
    price: float | None = None  # USD per 1M training tokens, over the table's
    max_cost: float | None = None  # refuse an estimate above it, or an unknown one
    validation: bool = False  # upload the test split as the validation file
    suffix: str | None = None
    dry_run: bool = False  # check and price only
    wait: bool = True  # follow the job until it ends
    poll: float = 60.0  # longest pause between two status checks
    new_job: bool = False  # launch again after a failed or cancelled job


def announce(plan: TrainPlan, say: Echo) -> None:
    """The plan's warnings, check and price, as ``train`` prints them before it uploads."""
    for warning in plan.warnings:
        say(f"warning: {warning}")
    say(f"{plan.train_path}: no format errors for {plan.connection.provider}; {plan.estimate.format()}")


async def train_hosted_async(directory: str | Path, connection: Connection, model: str,
                             options: TrainOptions | None = None, echo: Echo | None = None) -> HostedTrainResult:
    """Check, price, upload, launch and (with ``options.wait``) follow a fine-tuning job; see the
    module. ``echo`` receives progress lines."""
    o = options or TrainOptions()
    say = echo or (lambda _: None)
    plan = plan_training(directory, connection, model, epochs=o.epochs, price=o.price, validation=o.validation,
                         suffix=o.suffix)
    announce(plan, say)
    if o.dry_run:
        check_budget(plan.estimate, o.max_cost)
        return HostedTrainResult(plan)
    return await run_plan(plan, o, say)


def recorded_job(directory: Path, key: str) -> TrainJob | None:
    """The newest attempt recorded in ``directory``'s store for a plan's ``key`` (None: none),
    read without the store's lock."""
    path = store_path(directory)
    if not path.is_file():
        return None
    with Store(path, lock=False) as store:
        return TrainLedger(store).latest(key)


def launches(job: TrainJob | None, new_job: bool) -> bool:
    """Whether training would launch (and pay for) a job, given the attempt recorded for its key:
    none, one never launched, or (``new_job``) one that failed or was cancelled."""
    return job is None or job.job_id is None or (new_job and job.status in ("failed", "cancelled"))


async def run_plan(plan: TrainPlan, o: TrainOptions, say: Echo) -> HostedTrainResult:
    """Upload, launch and (with ``o.wait``) follow the job of a checked and priced plan,
    re-attaching to the attempt recorded for its key."""
    result = HostedTrainResult(plan)
    with Store(store_path(plan.directory)) as store:
        ledger = TrainLedger(store)
        job = ledger.latest(plan.key)
        if job is not None and job.status in ("failed", "cancelled"):
            if not o.new_job:
                raise _ended(job)
            job = None
        if launches(job, o.new_job):
            check_budget(plan.estimate, o.max_cost)  # a job already launched is paid for: no limit to apply
        result.reattached = job is not None
        result.job = job or ledger.add(_new_attempt(plan))
        if job is not None:
            when = datetime.fromtimestamp(job.created_at, UTC)
            say(f"re-attaching to the {job.provider} job recorded on {when:%Y-%m-%d %H:%M} UTC "
                f"({job.job_id or 'not launched yet'})")
        async with connect(plan.connection) as api:
            launch = _Launch(api, ledger, result, say)
            await launch.uploads()
            await launch.launch()
            if o.wait:
                await launch.follow(o.poll)
        if result.job.status == "succeeded":
            write_train_json(plan.directory, result.job)
        elif result.job.status in ("failed", "cancelled"):
            raise _ended(result.job)
    return result


@dataclass
class JobSet:
    """Several jobs at one provider, one per plan (``study --provider``: a student per size and
    seed), under one budget: every file is checked and the total priced before anything is
    uploaded (:meth:`check`), all are launched before any is waited for (:meth:`launch`), then each
    is followed until it ends (:meth:`follow`). A job that fails is kept as its error and the
    others go on; one recorded as succeeded costs no call to the provider."""

    plans: dict[Any, TrainPlan]
    options: TrainOptions
    say: Echo
    jobs: dict[Any, TrainJob] = field(default_factory=dict)
    errors: dict[Any, TrainingError] = field(default_factory=dict)
    found: set[Any] = field(default_factory=set)  # recorded as succeeded before this run
    uploaded: int = 0
    created: int = 0

    def recorded(self) -> dict[Any, TrainJob | None]:
        return {k: recorded_job(plan.directory, plan.key) for k, plan in self.plans.items()}

    def to_launch(self) -> list[Any]:
        """The plans whose training would launch a job (and pay for it)."""
        return [k for k, job in self.recorded().items() if launches(job, self.options.new_job)]

    def check(self) -> None:
        """Refuse the whole set, before any upload, when the jobs to launch are estimated above
        ``max_cost`` together, or any at an unknown price while a limit is set."""
        check_budget([self.plans[k].estimate for k in self.to_launch()], self.options.max_cost)

    async def launch(self) -> None:
        for k, job in self.recorded().items():
            if job is not None and job.status == "succeeded":
                self.jobs[k] = job
                self.found.add(k)
            elif job is not None and job.finished and not self.options.new_job:
                self.errors[k] = _ended(job)
            else:
                await self._run(k, replace(self.options, wait=False, max_cost=None))  # checked as a whole

    async def follow(self) -> None:
        for k, job in list(self.jobs.items()):
            if not job.finished:
                await self._run(k, replace(self.options, wait=True, new_job=False, max_cost=None))

    async def _run(self, k: Any, options: TrainOptions) -> None:
        try:
            result = await run_plan(self.plans[k], options, self.say)
        except TrainingError as exc:
            self.jobs.pop(k, None)
            self.errors[k] = exc
            return
        assert result.job is not None
        self.jobs[k] = result.job
        self.uploaded += result.uploaded
        self.created += result.created


# --- status and cancel -----------------------------------------------------------------------


def _existing_store(directory: Path) -> Path:
    path = store_path(directory)
    if not path.exists():
        raise InputError(f"{directory}: no training recorded here (no {path.name}); run `promptbake train` first")
    return path


async def _each_provider(jobs: list[TrainJob], act: Callable[[Provider, TrainJob], Any]) -> None:
    """Run ``act`` on each job with one open client per provider connection."""
    async with contextlib.AsyncExitStack() as stack:
        apis: dict[Connection, Provider] = {}
        for job in jobs:
            conn = Connection(job.provider, job.base_url, job.api_key_env, job.account)
            if conn not in apis:
                apis[conn] = await stack.enter_async_context(connect(conn))
            await act(apis[conn], job)


async def train_status_async(directory: str | Path, *, refresh: bool = True) -> list[TrainJob]:
    """Every training attempt recorded for ``directory``, oldest first; with ``refresh`` the open
    jobs as their provider sees them now (a job found succeeded writes ``train.json``). Does not
    take the store's lock, so it works while ``train`` is waiting."""
    directory = Path(directory)
    with Store(_existing_store(directory), lock=False) as store:
        ledger = TrainLedger(store)
        jobs = ledger.all()

        async def check(api: Provider, job: TrainJob) -> None:
            _record(ledger, job, await api.retrieve(str(job.job_id)))
            if job.status == "succeeded":
                write_train_json(directory, job)

        if refresh:
            await _each_provider([j for j in jobs if j.job_id and not j.finished], check)
    return jobs


async def train_cancel_async(directory: str | Path) -> list[TrainJob]:
    """Cancel every open training job of ``directory``; returns them as their provider then says.
    An attempt killed before its job id was recorded is looked up at the provider first; one that
    never launched is marked cancelled, so the next ``train`` does not launch it."""
    directory = Path(directory)
    with Store(_existing_store(directory), lock=False) as store:
        ledger = TrainLedger(store)
        open_jobs = [j for j in ledger.all() if not j.finished]

        async def stop(api: Provider, job: TrainJob) -> None:
            if job.job_id is None and job.train_file_id:
                request = JobRequest(job.job_name, job.base_model, job.train_file_id, job.validation_file_id,
                                     int(job.settings["epochs"]), job.settings.get("suffix"))
                found = await api.find_job(request, job.created_at, ledger.recorded_job_ids())
                if found is not None:
                    _record(ledger, job, found)
            if job.job_id is None:
                ledger.update(job, status="cancelled", error="cancelled before a job was launched")
            elif not job.finished:
                _record(ledger, job, await api.cancel(job.job_id))

        await _each_provider(open_jobs, stop)
    return open_jobs

