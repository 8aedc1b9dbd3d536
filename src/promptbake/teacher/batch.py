"""Batch mode: a step's requests through the provider's Batch API instead of the online pool.

Half the price on OpenAI, answers within 24 hours. Everything around it stays as in online mode:
the same planned requests, cache keys and store. Pending requests are written as input files
(identical requests once, custom_id = cache key), uploaded, turned into batches, polled with
backoff and collected: each output line becomes a stored answer (or a failure with its reason)
through the same :func:`result_row` → ``Store.record`` path the pool uses. Failures worth
retrying go into the next batch pass, or through the online pool with ``retry="online"``.

The store records each file id and batch id the moment the provider returns it
(:mod:`promptbake.store.batches`), so a killed run re-attaches on the next start and nothing is
uploaded or paid for twice.

The provider calls use the openai SDK: a few calls per batch, so its per-request CPU cost (the
reason the online path does not use it) does not matter, and it brings multipart uploads and
retries of the control calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from promptbake.errors import AuthError, InputError, ResponseRejected, TeacherError
from promptbake.store.batches import TERMINAL, BatchFile, BatchLedger, Item
from promptbake.store.db import ResultRow, Store
from promptbake.teacher.batchfile import MAX_BYTES, MAX_LINES, InputFile, LineResult, input_line, parse_line
from promptbake.teacher.client import AttemptError, ChatResult, Endpoint, read_result
from promptbake.teacher.generate import Progress, StepJob, _checker, result_row, send_to_store
from promptbake.teacher.pool import Attempt, Outcome, PoolStats, _JobRun, worst_cost
from promptbake.teacher.pricing import PriceTable

if TYPE_CHECKING:
    from promptbake.specification.models import Step
    from promptbake.teacher.generate import Generation
    from promptbake.teacher.link import Link

POLL_FIRST = 0.25  # seconds before the first status check; doubles up to BatchOptions.poll_max


@dataclass
class BatchOptions:
    """``--batch`` and its flags: ``run(..., batch=BatchOptions())`` sends every step through the
    provider's Batch API, ``max_lines`` requests per input file at most, failures worth retrying
    into another batch (``retry="batch"``) or the online pool (``"online"``), checking the batches'
    status at most ``poll_max`` seconds apart."""

    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    retry: Literal["batch", "online"] = "batch"  # where failures worth retrying go after a pass
    poll_max: float = 60.0  # longest wait between two status checks

    def __post_init__(self) -> None:
        if not 1 <= self.max_lines <= MAX_LINES:
            raise InputError(f"--batch-max-lines must be between 1 and {MAX_LINES:,} (the provider's limit)")


@dataclass
class BatchTotals:
    """What batch mode did in one run, for the summary."""

    uploaded: int = 0
    created: int = 0
    reattached: int = 0
    submitted: int = 0  # requests (lines) sent in new batches
    retried_online: int = 0
    cost: float = 0.0  # paid at batch prices
    online_cost: float = 0.0  # what the same answers would have cost online

    def format(self) -> str:
        saved = f" (${self.online_cost:.4f} at online prices)" if self.online_cost > self.cost else ""
        online = f", {self.retried_online} retried online" if self.retried_online else ""
        return (f"batch: {self.uploaded} files uploaded, {self.created} batches created, {self.reattached} "
                f"re-attached, {self.submitted:,} requests submitted{online}; ${self.cost:.4f} at batch prices{saved}")


@dataclass
class Scope:
    """The step and round being run, and how its answers are checked."""

    spec_name: str
    step_index: int
    round: int
    check: Callable[[ChatResult], Any]
    reseed: bool


class UploadRefused(TeacherError):
    """The provider answered the upload with an error: no file exists at its end."""


class BatchApi:
    """Files and batches at an OpenAI-compatible provider, as plain dicts; errors become the
    project's exceptions with the API key scrubbed out."""

    def __init__(self, endpoint: Endpoint, timeout: float = 120.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client: Any = None
        self._headers: dict[str, Any] = {}

    async def __aenter__(self) -> BatchApi:
        import openai

        # the SDK insists on a credential; a keyless server (vLLM, a stand-in) gets no header at all
        self._client = openai.AsyncOpenAI(api_key=self.endpoint.api_key or "none", base_url=self.endpoint.base_url,
                                          default_headers=self.endpoint.headers or None, max_retries=5,
                                          timeout=self.timeout)
        self._headers = {} if self.endpoint.api_key else {"Authorization": openai.Omit()}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    def _scrub(self, text: str) -> str:
        return scrub(text, self.endpoint.api_key)

    @contextlib.contextmanager
    def _errors(self, what: str, hint: str = "", refused: type[TeacherError] = TeacherError) -> Iterator[None]:
        """Translate SDK errors; an HTTP error answer raises ``refused`` (the server said no, so
        nothing happened), a lost connection the plain TeacherError (it may have happened)."""
        import openai

        where = self.endpoint.base_url
        error: type[TeacherError] = refused
        try:
            yield
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise AuthError(f"{what}: the server at {where} refused the credentials "
                            f"(HTTP {exc.status_code}); check the API key variable") from None
        except openai.NotFoundError as exc:
            message = (f"{what}: {where} answered 404 ({_message(exc)}); a server without the Batch API can "
                       "still run the files: see `promptbake batch export`")
        except openai.APIStatusError as exc:
            message = f"{what}: HTTP {exc.status_code} from {where}: {_message(exc)}{hint}"
        except openai.APIError as exc:  # connection errors and timeouts, after the SDK's retries
            message, error = f"{what}: cannot reach {where}: {exc}", TeacherError
        else:
            return
        raise error(self._scrub(message)) from None

    async def upload(self, name: str, handle: IO[bytes], lines: int, size: int) -> str:
        hint = (f" (the file had {lines:,} requests, {size / 1e6:.1f} MB: lower --batch-max-lines if the provider's "
                "limits are below 50,000 requests / 200 MB)")
        with self._errors("uploading a batch input file", hint, UploadRefused):
            uploaded = await self._client.files.create(file=(name, handle, "application/jsonl"), purpose="batch",
                                                       extra_headers=self._headers)
        return str(uploaded.id)

    async def find_upload(self, name: str) -> str | None:
        """The id of an earlier upload named ``name`` (killed before its id was recorded)."""
        with self._errors("listing uploaded files"):
            async for item in self._client.files.list(purpose="batch", extra_headers=self._headers):
                if item.filename == name:
                    return str(item.id)
        return None

    async def create(self, file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        with self._errors("creating a batch"):
            batch = await self._client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                      completion_window="24h", metadata=metadata,
                                                      extra_headers=self._headers)
        return dict(batch.model_dump())

    async def find_batch(self, file_id: str, since: float) -> dict[str, Any] | None:
        """The batch made of ``file_id`` (killed before its id was recorded); the listing is newest
        first, so it stops at batches older than the file."""
        with self._errors("listing batches"):
            async for batch in self._client.batches.list(limit=100, extra_headers=self._headers):
                if batch.input_file_id == file_id:
                    return dict(batch.model_dump())
                if batch.created_at < since - 60:
                    break
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._errors(f"checking batch {batch_id}"):
            batch = await self._client.batches.retrieve(batch_id, extra_headers=self._headers)
        return dict(batch.model_dump())

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        with self._errors(f"cancelling batch {batch_id}"):
            batch = await self._client.batches.cancel(batch_id, extra_headers=self._headers)
        return dict(batch.model_dump())

    async def lines(self, file_id: str) -> AsyncIterator[str]:
        """A result file's lines, streamed: an output file can be larger than its 200 MB input."""
        with self._errors(f"downloading results file {file_id}"):
            async with self._client.files.with_streaming_response.content(file_id,
                                                                          extra_headers=self._headers) as response:
                async for text in response.iter_lines():
                    if text.strip():
                        yield text


def scrub(text: str, key: str | None) -> str:
    """The text with the API key blotted out: providers may echo what they were sent."""
    return text.replace(key, "***") if key else text


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner["message"]).split())[:300]
    return " ".join(str(getattr(exc, "message", exc)).split())[:300]


async def send_step_batches(generation: Generation, k: int, round_: int, step: Step, link: Link, *,
                            progress: Progress, max_cost: float | None,
                            on_outcome: Callable[[Outcome], None]) -> PoolStats:
    """Generation's seam into batch mode: one step of one round, like ``send_to_store``."""
    config = generation.config
    options = generation.options.batch
    assert options is not None
    if generation.report.batch is None:
        generation.report.batch = BatchTotals()
    scope = Scope(generation.spec.name, k, round_, _checker(step), step.seed is not None)
    run = BatchRun(generation.store, generation.endpoint, config.max_attempts, PriceTable(config.prices), scope,
                   options, progress=progress, max_cost=max_cost, on_outcome=on_outcome,
                   totals=generation.report.batch, timeout=config.timeout)
    try:
        stats = await run.run(lambda: generation._jobs(k, round_, step))
    finally:
        progress.close()
    if run.online_retry:
        stats = _add(stats, await send_to_store(
            generation.store, link, run.online_retry,
            progress=Progress(generation.options.progress, len(run.online_retry), f"{step.name} online retries"),
            max_cost=None if max_cost is None else max_cost - stats.cost, on_outcome=on_outcome))
        generation.store.serve_from_cache(scope.spec_name, k)
    return stats


def _add(a: PoolStats, b: PoolStats) -> PoolStats:
    for name in ("done", "failed", "abandoned", "attempts", "retries", "throttled", "prompt_tokens",
                 "completion_tokens", "cost", "elapsed"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    a.stopped_for_budget = a.stopped_for_budget or b.stopped_for_budget
    a.endpoints = {**a.endpoints, **b.endpoints}  # only the online retries ran on endpoints
    return a


@dataclass
class BatchRun:
    """One step's passes: re-attach to open batches, then submit, wait and collect until every
    request has an answer, failed for good, or used its ``max_attempts`` (one per pass)."""

    store: Store
    endpoint: Endpoint
    max_attempts: int
    prices: PriceTable
    scope: Scope
    options: BatchOptions
    progress: Progress
    max_cost: float | None
    on_outcome: Callable[[Outcome], None]
    totals: BatchTotals
    timeout: float = 120.0
    stats: PoolStats = field(default_factory=PoolStats)
    online_retry: list[StepJob] = field(default_factory=list)
    tries: Counter[str] = field(default_factory=Counter)  # custom_id → batch attempts in this run
    rejections: Counter[str] = field(default_factory=Counter)
    final: set[str] = field(default_factory=set)  # custom_ids that failed for good in this run

    def __post_init__(self) -> None:
        self.ledger = BatchLedger(self.store)

    async def run(self, jobs: Callable[[], Iterable[StepJob]]) -> PoolStats:
        started = time.perf_counter()
        async with BatchApi(self.endpoint, self.timeout) as api:
            files = await self._reattach(api)
            passes = 0
            while True:
                if not files:
                    if passes and self.options.retry == "online":
                        self.online_retry = self._retryable(jobs())
                        self.totals.retried_online += len(self.online_retry)
                        break
                    files = await self._submit(api, jobs())
                    if not files:
                        break
                await self._wait(api, files)
                files = []
                passes += 1
        self.stats.elapsed = time.perf_counter() - started
        return self.stats

    # submit ----------------------------------------------------------------------------------
    async def _reattach(self, api: BatchApi) -> list[BatchFile]:
        """Open files of this step from an earlier run: finish what it left half done."""
        files = []
        for file in self.ledger.open_files(self.scope.spec_name, self.scope.step_index, self.scope.round):
            if file.base_url != self.endpoint.base_url:
                raise TeacherError(f"batches of this step are open at {file.base_url}; re-run with --base-url "
                                   f"{file.base_url} to collect them (or `promptbake batch cancel` them)")
            if file.batch_id is None:
                if file.file_id is None:
                    found = await api.find_upload(file.name)
                    if found is None:  # killed before the upload: nothing left the machine
                        self.ledger.forget(file)
                        continue
                    self.ledger.set_file_id(file, found)
                batch = await api.find_batch(str(file.file_id), file.created_at)
                if batch is None:
                    await self._create(api, file)
                else:
                    self.ledger.set_batch(file, batch)
            self.totals.reattached += 1
            files.append(file)
        return files

    async def _submit(self, api: BatchApi, jobs: Iterable[StepJob]) -> list[BatchFile]:
        """Write the requests still to be tried into files within the limits and the budget, and
        submit each as it fills."""
        files: list[BatchFile] = []
        placed: dict[str, InputFile | BatchFile] = {}
        reserved = 0.0
        with contextlib.ExitStack() as stack:
            current: InputFile | None = None
            for job in jobs:
                cid = job.cache_key
                if cid in self.final:  # failed for good, or out of attempts
                    continue
                where = placed.get(cid)
                if isinstance(where, InputFile):
                    where.items.append((cid, job.id))
                    continue
                if where is not None:  # its file is already submitted: the answer serves this one too
                    self.ledger.add_items(where, [(cid, job.id)])
                    continue
                worst = worst_cost(self.prices.batch_cost, job)
                if self.max_cost is not None and self.stats.cost + reserved + worst > self.max_cost:
                    self.stats.stopped_for_budget = not files and current is None
                    break
                line = input_line(cid, _JobRun(job, rejections=self.rejections[cid]).body)
                if len(line) > self.options.max_bytes:
                    raise InputError(f"request {job.id} is {len(line):,} bytes, more than a batch file may hold")
                if current is not None and not current.fits(line):
                    files.append(await self._send(api, current))
                    current = None
                if current is None:
                    handle = stack.enter_context(tempfile.TemporaryFile())
                    current = InputFile(handle, self.options.max_lines, self.options.max_bytes)
                current.add(line, worst)
                current.items.append((cid, job.id))
                placed[cid] = current
                reserved += worst
            if current is not None:
                files.append(await self._send(api, current))
        return files

    async def _send(self, api: BatchApi, built: InputFile) -> BatchFile:
        """Record, upload, create: each id is committed as soon as the provider returns it."""
        scope = self.scope
        file = self.ledger.add_file(scope.spec_name, scope.step_index, scope.round, self.endpoint.base_url,
                                    built.lines, built.size, built.reserved, built.items)
        built.handle.seek(0)
        try:
            file_id = await api.upload(file.name, built.handle, built.lines, built.size)
        except UploadRefused:
            self.ledger.forget(file)  # its requests stay pending, for a run with other limits
            raise
        self.ledger.set_file_id(file, file_id)
        self.totals.uploaded += 1
        self.totals.submitted += built.lines
        await self._create(api, file)
        return file

    async def _create(self, api: BatchApi, file: BatchFile) -> None:
        metadata = {"promptbake_file": file.name, "step": f"{file.spec_name}/{file.step_index}/{file.round}"}
        self.ledger.set_batch(file, await api.create(str(file.file_id), metadata))
        self.totals.created += 1

    def _retryable(self, jobs: Iterable[StepJob]) -> list[StepJob]:
        """One job per custom_id that failed in a batch of this run and may be tried again."""
        seen: set[str] = set()
        retry = []
        for job in jobs:
            cid = job.cache_key
            if self.tries[cid] and cid not in self.final and cid not in seen:
                seen.add(cid)
                retry.append(job)
        return retry

    # wait and collect ------------------------------------------------------------------------
    async def _wait(self, api: BatchApi, files: list[BatchFile]) -> None:
        """Poll the open batches with backoff, collecting each as soon as it ends."""
        delay = min(POLL_FIRST, self.options.poll_max)
        waiting = list(files)
        while True:
            for file in list(waiting):
                if file.status not in TERMINAL:
                    self.ledger.set_batch(file, await api.retrieve(str(file.batch_id)))
                if file.status in TERMINAL:
                    await self._collect(api, file)
                    waiting.remove(file)
            self._show(files)
            if not waiting:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.poll_max)

    def _show(self, files: list[BatchFile]) -> None:
        bar = self.progress.bar
        if bar is None:
            return
        statuses = Counter(f.status for f in files)
        bar.total = sum(f.lines for f in files)
        bar.n = sum(f.lines if f.collected_at else min(f.done, f.lines) for f in files)
        bar.set_postfix_str("batches: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
                            + f", ${self.stats.cost:.4f}, {self.stats.failed} failed", refresh=False)
        bar.refresh()

    async def _collect(self, api: BatchApi, file: BatchFile) -> None:
        """Store every answer and failure of a finished batch, and mark it collected, in one
        transaction: a kill halfway leaves it open, to be collected again, never twice."""
        items = self.ledger.items(file)
        age = (time.time() - file.created_at) * 1000
        rows: list[ResultRow] = []
        outcomes: list[tuple[Outcome, bool]] = []

        def take(line: LineResult) -> None:
            group = items.pop(line.custom_id, None)
            if group is None:  # not ours, or a second line for the same request
                return
            cid = line.custom_id
            self.tries[cid] += 1
            if line.error:
                line.error = scrub(line.error, self.endpoint.api_key)
            outcome, retry = self._outcome(group[0], line, age)
            final = outcome.ok or not retry or self.tries[cid] >= self.max_attempts
            if not outcome.ok and final:
                self.final.add(cid)
                if retry:
                    outcome.error = f"gave up after {self.tries[cid]} batch attempts: {outcome.error}"
            rows.append(result_row(outcome))
            if not outcome.ok:  # identical requests share the failure; an answer reaches them from the cache
                rows.extend(ResultRow(item.request_id, cid, False, [], outcome.error) for item in group[1:])
            outcomes.append((outcome, final))

        for file_id in (file.output_file_id, file.error_file_id):
            if file_id:
                number = 0
                async for text in api.lines(file_id):
                    number += 1
                    take(parse_line(text, f"{file_id}:{number}"))
        why = f"not answered: the batch ended {file.status}" + (f" ({file.errors})" if file.errors else "")
        for cid in list(items):
            take(LineResult(cid, None, error=why, code="not_run"))
        with self.store.transaction():
            self.store.record(rows)
            self.ledger.mark_collected(file)
        self.store.serve_from_cache(self.scope.spec_name, self.scope.step_index)
        for outcome, final in outcomes:
            self._account(outcome, final)

    def _outcome(self, item: Item, line: LineResult, age_ms: float) -> tuple[Outcome, bool]:
        answer = line_outcome(item, line, self.tries[item.custom_id], self.scope.check, self.prices, age_ms)
        self.totals.cost += answer.cost
        self.totals.online_cost += answer.online_cost
        if answer.rejected:
            self.rejections[item.custom_id] += 1
        return answer.outcome, answer.retryable

    def _account(self, outcome: Outcome, final: bool) -> None:
        stats = self.stats
        for attempt in outcome.attempts:
            stats.attempts += 1
            stats.prompt_tokens += attempt.prompt_tokens
            stats.completion_tokens += attempt.completion_tokens
            stats.cost += attempt.cost
            stats.throttled += attempt.status == 429
        if not final:
            stats.retries += 1
            return
        if outcome.ok:
            stats.done += 1
        else:
            stats.failed += 1
        self.on_outcome(outcome)


@dataclass
class LineOutcome:
    outcome: Outcome
    retryable: bool  # a failure another attempt may fix
    rejected: bool = False  # answered, but the step could not use the answer
    cost: float = 0.0  # at batch prices
    online_cost: float = 0.0  # the same tokens at online prices


def line_outcome(item: Item, line: LineResult, number: int, check: Callable[[ChatResult], Any],
                 prices: PriceTable, age_ms: float = 0.0) -> LineOutcome:
    """One output line as the pool would have reported the attempt, ready for ``result_row``."""
    job = StepJob(id=item.request_id, body={"model": item.model}, est_tokens=0, cache_key=item.custom_id)
    if not line.ok:
        kind = f"http_{line.status}" if line.status else (line.code or "batch_error")
        attempt = Attempt(number, line.status, kind, line.error, age_ms)
        return LineOutcome(Outcome(job, False, None, None, [attempt], line.error), line.retryable)
    try:
        result = read_result(line.body or {}, job.body, None, f"the batch answer for {item.model}")
    except (AttemptError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        error = f"unparseable answer: {str(line.body)[:120]!r}"
        return LineOutcome(Outcome(job, False, None, None, [Attempt(number, 200, "bad_body", error, age_ms)], error),
                           True)
    model = item.model or result.model
    cost = prices.batch_cost(model, result.prompt_tokens, result.completion_tokens)
    online = prices.cost(model, result.prompt_tokens, result.completion_tokens)
    attempt = Attempt(number, 200, None, None, age_ms, result.prompt_tokens, result.completion_tokens, cost)
    try:
        parsed = check(result)
    except ResponseRejected as exc:
        attempt.error_kind, attempt.error = "rejected", str(exc)
        attempt.raw = exc.raw or "\n\n".join(result.contents)
        return LineOutcome(Outcome(job, False, result, None, [attempt], str(exc)), True, True, cost, online)
    return LineOutcome(Outcome(job, True, result, parsed, [attempt], None), False, False, cost, online)


def _endpoint_for(base_url: str, api_key_env: str) -> Endpoint:
    import os

    return Endpoint(base_url=base_url, model="", api_key=os.environ.get(api_key_env) or None)


async def _refresh(files: list[BatchFile], api_key_env: str, act: str) -> list[tuple[BatchFile, dict[str, Any]]]:
    """Ask each open batch's provider about it (``act``: "retrieve" or "cancel")."""
    answers = []
    for base_url in sorted({f.base_url for f in files}):
        async with BatchApi(_endpoint_for(base_url, api_key_env)) as api:
            for file in files:
                if file.base_url == base_url and file.batch_id and file.status not in TERMINAL:
                    call = api.cancel if act == "cancel" else api.retrieve
                    answers.append((file, await call(file.batch_id)))
    return answers


async def batch_status(store_path: str | Path, *, refresh: bool = True,
                       api_key_env: str = "OPENAI_API_KEY") -> list[BatchFile]:
    """Every batch file of a store, the open ones as their provider sees them now (read-only:
    works while a run holds the store)."""
    _must_exist(store_path)
    with Store(store_path, lock=False) as store:
        files = BatchLedger(store).all_files()
    if refresh:
        for file, batch in await _refresh([f for f in files if f.collected_at is None], api_key_env, "retrieve"):
            file.status, file.counts = batch["status"], batch.get("request_counts") or file.counts
    return files


async def cancel_batches(store_path: str | Path, *, api_key_env: str = "OPENAI_API_KEY") -> list[BatchFile]:
    """Cancel every open batch of a store; the next run keeps what they completed and re-submits
    the rest. Takes the store's lock: a run in progress would re-submit at once."""
    _must_exist(store_path)
    with Store(store_path) as store:
        ledger = BatchLedger(store)
        cancelled = []
        for file, batch in await _refresh(ledger.open_files(), api_key_env, "cancel"):
            ledger.set_batch(file, batch)
            cancelled.append(file)
    return cancelled


def _must_exist(store_path: str | Path) -> None:
    if not Path(store_path).exists():
        raise InputError(f"{store_path}: no such store")
