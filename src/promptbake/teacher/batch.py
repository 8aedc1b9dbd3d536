"""Batch mode: a step's requests through the provider's Batch API instead of the online pool.

Half the price on OpenAI, answers within 24 hours. Everything around it stays as in online mode:
the same planned requests, cache keys and store, and the same rules of :mod:`promptbake.teacher.jobs`
for what a request becomes when sent (the planned model, the output cap under ``--max-cost``, a
new seed after a rejected answer) and what an answer becomes (its usage or its worst case, marked
estimated; the row the store keeps). Pending requests are written as input files (identical
requests once, custom_id = cache key), uploaded, turned into batches, polled with backoff and
collected. Failures worth retrying go into the next batch pass, or through the online pool with
``retry="online"``.

With several endpoints (``teacher.endpoints``, ``--base-url`` given more than once) each request
goes to an endpoint that serves its model, the step's files spread over them by weight, each
uploaded with that endpoint's own key.

The store records each file id and batch id the moment the provider returns it
(:mod:`promptbake.store.batches`), so a killed run re-attaches on the next start and nothing is
uploaded or paid for twice; it also keeps each request's batch attempts, so a request the provider
refuses for good is not uploaded again by every run.

The provider calls use the openai SDK: a few calls per batch, so its per-request CPU cost (the
reason the online path does not use it) does not matter, and it brings multipart uploads and
retries of the control calls. Everything the provider returns passes through the key scrubber
(the key and any piece of it) before anything reads or stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from promptbake.errors import AuthError, DataFileError, InputError, ResponseRejected, TeacherError
from promptbake.store.batches import TERMINAL, BatchFile, BatchLedger, Item, Tries
from promptbake.store.db import ResultRow, Store
from promptbake.teacher.batchfile import (
    MAX_BYTES,
    MAX_LINES,
    InputFile,
    LineResult,
    input_line,
    parse_line,
    unreadable,
)
from promptbake.teacher.client import AttemptError, ChatResult, Endpoint, KeyScrubber, read_result
from promptbake.teacher.config import check_base_url
from promptbake.teacher.jobs import (
    Attempt,
    Outcome,
    StepJob,
    attempt_body,
    bounded,
    charge,
    checker,
    result_row,
    worst_cost,
)
from promptbake.teacher.online import send_to_store
from promptbake.teacher.pool import FailureLog, Notice, PoolStats
from promptbake.teacher.pricing import PriceTable
from promptbake.teacher.progress import Progress

if TYPE_CHECKING:
    from promptbake.specification.models import Step, TeacherConfig
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
    unreadable: int = 0  # lines of providers' output files that could not be read
    cost: float = 0.0  # paid at batch prices
    online_cost: float = 0.0  # what the same answers would have cost online

    def format(self) -> str:
        saved = f" (${self.online_cost:.4f} at online prices)" if self.online_cost > self.cost else ""
        online = f", {self.retried_online} retried online" if self.retried_online else ""
        bad = f", {self.unreadable} unreadable output lines" if self.unreadable else ""
        return (f"batch: {self.uploaded} files uploaded, {self.created} batches created, {self.reattached} "
                f"re-attached, {self.submitted:,} requests submitted{online}{bad}; ${self.cost:.4f} at batch "
                f"prices{saved}")


@dataclass
class Scope:
    """The step and round being run."""

    spec_name: str
    step_index: int
    round: int
    step: Step


@dataclass(frozen=True)
class Target:
    """An endpoint batch files go to. ``model`` is the one it serves (None: whatever it is asked);
    ``key_env`` names the variable its key came from, recorded with each file so that `batch
    status` and `batch cancel` ask its provider with the same key."""

    endpoint: Endpoint
    key_env: str
    model: str | None = None
    weight: float = 1.0

    def serves(self, model: str) -> bool:
        return self.model is None or self.model == model


def targets(link: Link) -> list[Target]:
    """Where a run's batch files may go: the run's endpoint, or each endpoint of its fleet with
    its own key. A key variable an endpoint names explicitly must be set: a request sent without
    its key would only come back refused, after the upload."""
    config = link.config
    if not config.endpoints:
        return [Target(link.endpoint, config.api_key_env)]
    found = []
    for i, spec in enumerate(config.endpoints):
        env = spec.api_key_env or config.api_key_env
        key = os.environ.get(env) or None
        if key is None and spec.api_key_env:
            raise InputError(f"teacher.endpoints[{i}].api_key_env: {env} is not set (the key for {spec.base_url})")
        check_base_url(spec.base_url)
        endpoint = Endpoint(base_url=spec.base_url.rstrip("/"), model=spec.model or "", api_key=key)
        found.append(Target(endpoint, env, spec.model, spec.weight))
    return found


def scrubber(keys: Iterable[str | None]) -> Callable[[str], str]:
    """Removes every one of ``keys``, and any prefix or suffix piece of it (see KeyScrubber)."""
    scrubbers = [KeyScrubber(key) for key in keys if key]

    def scrub(text: str) -> str:
        for one in scrubbers:
            text = one(text)
        return text

    return scrub


class UploadRefused(TeacherError):
    """The provider answered the upload with an error: no file exists at its end."""


class BatchApi:
    """Files and batches at an OpenAI-compatible provider, as plain dicts; errors become the
    project's exceptions. Everything the provider says (its answers, its errors, a failed batch's
    reasons) is scrubbed of the keys before anyone reads it."""

    def __init__(self, endpoint: Endpoint, timeout: float = 120.0,
                 scrub: Callable[[str], str] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.scrub = scrub or scrubber([endpoint.api_key])
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

    def _clean(self, obj: Any) -> dict[str, Any]:
        """An SDK object as a dict, scrubbed (a failed batch's errors may quote the request)."""
        data = obj.model_dump(mode="json")
        return dict(json.loads(self.scrub(json.dumps(data))))

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
            message = (f"{what}: {where} answered 404 ({self._message(exc)}); a server without the Batch API can "
                       "still run the files: see `promptbake batch export`")
        except openai.APIStatusError as exc:
            message = f"{what}: HTTP {exc.status_code} from {where}: {self._message(exc)}{hint}"
        except openai.APIError as exc:  # connection errors and timeouts, after the SDK's retries
            message, error = f"{what}: cannot reach {where}: {self.scrub(str(exc))}", TeacherError
        else:
            return
        raise error(message) from None

    def _message(self, exc: Any) -> str:
        """The provider's words, scrubbed before they are cut (a cut could leave a piece)."""
        body = getattr(exc, "body", None)
        inner = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(inner, dict) and inner.get("message"):
            text = str(inner["message"])
        else:
            text = str(getattr(exc, "message", exc))
        return " ".join(self.scrub(text).split())[:300]

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
        return self._clean(batch)

    async def find_batch(self, file_id: str, since: float) -> dict[str, Any] | None:
        """The batch made of ``file_id`` (killed before its id was recorded); the listing is newest
        first, so it stops at batches older than the file."""
        with self._errors("listing batches"):
            async for batch in self._client.batches.list(limit=100, extra_headers=self._headers):
                if batch.input_file_id == file_id:
                    return self._clean(batch)
                if batch.created_at < since - 60:
                    break
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._errors(f"checking batch {batch_id}"):
            batch = await self._client.batches.retrieve(batch_id, extra_headers=self._headers)
        return self._clean(batch)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        with self._errors(f"cancelling batch {batch_id}"):
            batch = await self._client.batches.cancel(batch_id, extra_headers=self._headers)
        return self._clean(batch)

    async def lines(self, file_id: str) -> AsyncIterator[str]:
        """A result file's lines, streamed (an output file can be larger than its 200 MB input),
        scrubbed: a provider may echo a key in an answer or an error."""
        with self._errors(f"downloading results file {file_id}"):
            async with self._client.files.with_streaming_response.content(file_id,
                                                                          extra_headers=self._headers) as response:
                async for text in response.iter_lines():
                    if text.strip():
                        yield self.scrub(text)


async def send_step_batches(store: Store, link: Link, scope: Scope, options: BatchOptions, totals: BatchTotals,
                            pending: Callable[[], Iterable[StepJob]], *, first: Iterable[StepJob] | None = None,
                            progress: Progress, show_progress: bool = True, max_cost: float | None,
                            on_outcome: Callable[[Outcome], None], failures: FailureLog | None = None,
                            notice: Notice | None = None) -> PoolStats:
    """One step of one round through batches, like ``send_to_store`` through the pool: the jobs of
    ``first`` (a streamed step, planned as it is sent) or else ``pending()``, then ``pending()``
    again for each further pass. Failures go to ``failures``, as the pool's do."""
    run = BatchRun(store, link.config, targets(link), scope, options, progress=progress, max_cost=max_cost,
                   on_outcome=on_outcome, totals=totals, failures=failures, notice=notice)
    try:
        stats = await run.run(pending, first)
    finally:
        progress.close()
    if run.online_retry:
        stats = _add(stats, await send_to_store(
            store, link, run.online_retry,
            progress=Progress(show_progress, len(run.online_retry), f"{scope.step.name} online retries"),
            max_cost=None if max_cost is None else max_cost - stats.cost, on_outcome=on_outcome,
            failures=failures, notice=notice))
        store.serve_from_cache(scope.spec_name, scope.step_index)
    return stats


def _add(a: PoolStats, b: PoolStats) -> PoolStats:
    for name in ("done", "failed", "abandoned", "attempts", "retries", "throttled", "prompt_tokens",
                 "completion_tokens", "cost", "estimated", "estimated_cost", "elapsed"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    a.stopped_for_budget = a.stopped_for_budget or b.stopped_for_budget
    a.endpoints = {**a.endpoints, **b.endpoints}  # only the online retries ran on endpoints
    return a


class BatchRun:
    """One step's passes: re-attach to open batches, then submit, wait and collect until every
    request has an answer, failed for good, or used its ``max_attempts`` (one per pass, counted
    over every run)."""

    def __init__(self, store: Store, config: TeacherConfig, targets: list[Target], scope: Scope,
                 options: BatchOptions, *, progress: Progress, max_cost: float | None,
                 on_outcome: Callable[[Outcome], None], totals: BatchTotals, failures: FailureLog | None = None,
                 notice: Notice | None = None) -> None:
        self.store = store
        self.targets = targets
        self.max_attempts = config.max_attempts
        self.timeout = config.timeout
        self.prices = PriceTable(config.prices)
        self.scope = scope
        self.check = checker(scope.step)
        self.options = options
        self.progress = progress
        self.max_cost = max_cost
        self.on_outcome = on_outcome
        self.totals = totals
        self.failures = failures if failures is not None else FailureLog()
        self.notice = notice
        self.scrub = scrubber(t.endpoint.api_key for t in targets)
        self.stats = PoolStats()
        self.online_retry: list[StepJob] = []
        self.ledger = BatchLedger(store)
        self.tries: dict[str, Tries] = self.ledger.tries(scope.spec_name, scope.step_index)
        self.earlier = {cid for cid, t in self.tries.items() if self._spent(t)}  # left out by earlier runs
        self.tried: set[str] = set()  # custom_ids that went into a batch of this run
        self.left_out: dict[str, str] = {}  # custom_id → why earlier runs' batches left it out of this one
        self._said = False
        self._apis: dict[str, BatchApi] = {}

    def _spent(self, tries: Tries | None) -> bool:
        return tries is not None and (tries.final or tries.tries >= self.max_attempts)

    async def run(self, pending: Callable[[], Iterable[StepJob]], first: Iterable[StepJob] | None = None) -> PoolStats:
        started = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            for target in self.targets:
                self._apis[target.endpoint.base_url] = await stack.enter_async_context(
                    BatchApi(target.endpoint, self.timeout, self.scrub))
            files = await self._reattach()
            passes = 0
            while True:
                if not files:
                    if passes and self.options.retry == "online":
                        self.online_retry = self._retryable(pending())
                        self.totals.retried_online += len(self.online_retry)
                        break
                    jobs, first = (pending() if first is None else first), None  # a stream is planned once
                    files = await self._submit(jobs)
                    if not files:
                        break
                await self._wait(files)
                files = []
                passes += 1
        self.stats.elapsed = time.perf_counter() - started
        return self.stats

    def _api(self, file: BatchFile) -> BatchApi:
        api = self._apis.get(file.base_url)
        if api is None:
            raise TeacherError(f"batches of this step are open at {file.base_url}; re-run with --base-url "
                               f"{file.base_url} to collect them (or `promptbake batch cancel` them)")
        return api

    # submit ----------------------------------------------------------------------------------
    async def _reattach(self) -> list[BatchFile]:
        """Open files of this step from an earlier run: finish what it left half done."""
        files = []
        for file in self.ledger.open_files(self.scope.spec_name, self.scope.step_index, self.scope.round):
            api = self._api(file)
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

    async def _submit(self, jobs: Iterable[StepJob]) -> list[BatchFile]:
        """Write the requests still to be tried into files within the limits and the budget,
        spread over the endpoints that serve their model, and submit each file as it fills."""
        files: list[BatchFile] = []
        placed: dict[str, InputFile | BatchFile] = {}
        filling: dict[int, InputFile] = {}  # target → the file being filled for it
        load = [0.0] * len(self.targets)
        reserved = 0.0
        with contextlib.ExitStack() as stack:
            for job in jobs:
                cid = job.cache_key
                tries = self.tries.get(cid)
                if self._spent(tries):  # failed for good, or out of attempts
                    if cid in self.earlier:
                        self.left_out[cid] = (tries.error if tries is not None else None) or "out of attempts"
                    continue
                where = placed.get(cid)
                if isinstance(where, InputFile):
                    where.items.append((cid, job.id, None))
                    continue
                if where is not None:  # its file is already submitted: the answer serves this one too
                    self.ledger.add_items(where, [(cid, job.id, None)])
                    continue
                sent = bounded(job) if self.max_cost is not None else job  # the cap the summary promises
                worst = worst_cost(self.prices.batch_cost, sent)
                if self.max_cost is not None and self.stats.cost + reserved + worst > self.max_cost:
                    self.stats.stopped_for_budget = not files and not filling
                    break
                line = input_line(cid, attempt_body(sent, tries.rejections if tries else 0))
                if len(line) > self.options.max_bytes:
                    raise InputError(f"request {job.id} is {len(line):,} bytes, more than a batch file may hold")
                t = self._route(sent, load)
                current = filling.get(t)
                if current is not None and not current.fits(line):
                    files.append(await self._send(self.targets[t], filling.pop(t)))
                    current = None
                if current is None:
                    handle = stack.enter_context(tempfile.TemporaryFile())
                    current = filling[t] = InputFile(handle, self.options.max_lines, self.options.max_bytes)
                current.add(line, worst)
                current.items.append((cid, job.id, sent.body.get("max_tokens") if sent is not job else None))
                placed[cid] = current
                reserved += worst
            for t, current in filling.items():
                files.append(await self._send(self.targets[t], current))
        if self.left_out and not self._said:
            self._said = True
            (reason, n), = Counter(self.left_out.values()).most_common(1)
            if self.notice is not None:
                self.notice(f"batch: {len(self.left_out)} requests of step {self.scope.step.name} are not sent again: "
                            f"earlier batches failed them for good or used their --max-attempts {self.max_attempts} "
                            f"(most common, {n} ×: {reason}); run without --batch to try them online")
        return files

    def _route(self, job: StepJob, load: list[float]) -> int:
        """The endpoint for ``job``: of those serving its planned model, the least loaded by weight."""
        model = str(job.body.get("model", ""))
        serving = [i for i, t in enumerate(self.targets) if t.serves(model)]
        if not serving:
            where = ", ".join(f"{t.endpoint.base_url} ({t.model})" for t in self.targets)
            raise InputError(f"step {self.scope.step.name} asks for model {model!r}, which none of the endpoints "
                             f"serves: {where}")
        t = min(serving, key=lambda i: (load[i] + 1) / self.targets[i].weight)
        load[t] += 1
        return t

    async def _send(self, target: Target, built: InputFile) -> BatchFile:
        """Record, upload, create: each id is committed as soon as the provider returns it."""
        scope = self.scope
        api = self._apis[target.endpoint.base_url]
        file = self.ledger.add_file(scope.spec_name, scope.step_index, scope.round, target.endpoint.base_url,
                                    target.key_env, built.lines, built.size, built.reserved, built.items)
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
            tries = self.tries.get(cid)
            if cid in self.tried and not self._spent(tries) and cid not in seen:
                seen.add(cid)
                retry.append(job)
        return retry

    # wait and collect ------------------------------------------------------------------------
    async def _wait(self, files: list[BatchFile]) -> None:
        """Poll the open batches with backoff, collecting each as soon as it ends."""
        delay = min(POLL_FIRST, self.options.poll_max)
        waiting = list(files)
        while True:
            for file in list(waiting):
                api = self._api(file)
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
        transaction: a kill halfway leaves it open, to be collected again, never twice. A line
        that cannot be read costs only its own request (retried), never the file's other answers."""
        items = self.ledger.items(file)
        age = (time.time() - file.created_at) * 1000
        rows: list[ResultRow] = []
        outcomes: list[tuple[Outcome, bool]] = []
        touched: dict[str, Tries] = {}
        lost: list[str] = []  # unreadable lines no request could be told from

        def take(line: LineResult) -> None:
            group = items.pop(line.custom_id, None)
            if group is None:  # not ours, or a second line for the same request
                return
            cid = line.custom_id
            tries = self.tries.setdefault(cid, Tries())
            previous = tries.error
            tries.tries += 1
            self.tried.add(cid)
            answer = line_outcome(item_job(group[0]), line, tries.tries, self.check, self.prices, age)
            self.totals.cost += answer.cost
            self.totals.online_cost += answer.online_cost
            tries.rejections += answer.rejected
            outcome, retry = answer.outcome, answer.retryable
            if not outcome.ok:
                tries.error = line.error or outcome.error
                if retry and line.code == "batch_failed" and previous == tries.error:
                    retry = False  # refused twice in the same words: the provider will refuse it again
                    outcome.error = (f"{outcome.error} (twice in a row: the provider refuses the batch the same "
                                     "way, so it is not sent again)")
                tries.final = outcome.final = not retry
                touched[cid] = tries
                if retry and tries.tries >= self.max_attempts:
                    outcome.error = f"gave up after {tries.tries} batch attempts: {outcome.error}"
            rows.append(result_row(outcome))
            if not outcome.ok:  # identical requests share the failure; an answer reaches them from the cache
                rows.extend(ResultRow(item.request_id, cid, False, [], outcome.error) for item in group[1:])
            outcomes.append((outcome, outcome.ok or not retry or tries.tries >= self.max_attempts))

        for file_id in (file.output_file_id, file.error_file_id):
            if file_id:
                number = 0
                async for text in api.lines(file_id):
                    number += 1
                    where = f"line {number} of {file_id} (batch {file.batch_id})"
                    try:
                        take(parse_line(text, where))
                    except DataFileError as exc:
                        self.totals.unreadable += 1
                        found = unreadable(text, exc)
                        if found is None:
                            lost.append(str(exc))
                        else:
                            take(found)
                        if self.notice is not None:
                            self.notice(f"batch: {exc}; the other answers are stored, its request is sent again")
        why = f"not answered: the batch ended {file.status}" + (f" ({file.errors})" if file.errors else "")
        if lost:
            why += f"; its output had {len(lost)} unreadable lines ({lost[0]})"
        code = "batch_failed" if file.status == "failed" else "not_run"
        for cid in list(items):
            take(LineResult(cid, None, error=why, code=code))
        with self.store.transaction():
            self.store.record(rows)
            self.ledger.save_tries(touched)
            self.ledger.mark_collected(file)
        self.store.serve_from_cache(self.scope.spec_name, self.scope.step_index)
        for outcome, final in outcomes:
            self._account(outcome, final)

    def _account(self, outcome: Outcome, final: bool) -> None:
        stats = self.stats
        for attempt in outcome.attempts:
            stats.attempts += 1
            stats.prompt_tokens += attempt.prompt_tokens
            stats.completion_tokens += attempt.completion_tokens
            stats.cost += attempt.cost
            stats.throttled += attempt.status == 429
            if attempt.estimated:
                stats.estimated += 1
                stats.estimated_cost += attempt.cost
        if not final:
            stats.retries += 1
            return
        if outcome.ok:
            stats.done += 1
        else:
            stats.failed += 1
            self.failures.add(outcome.reason)
        self.on_outcome(outcome)


def item_job(item: Item) -> StepJob:
    """A request of a batch file as the job that was sent, as far as its cost goes: the planned
    model, the output caps it went out with, its token estimate (see ``jobs.charge``)."""
    return StepJob(id=item.request_id, body={"model": item.model, **item.limits}, est_tokens=item.est_tokens,
                   cache_key=item.custom_id)


@dataclass
class LineOutcome:
    outcome: Outcome
    retryable: bool  # a failure another attempt may fix
    rejected: bool = False  # answered, but the step could not use the answer
    cost: float = 0.0  # at batch prices
    online_cost: float = 0.0  # the same tokens at online prices


def line_outcome(job: StepJob, line: LineResult, number: int, check: Callable[[ChatResult], Any],
                 prices: PriceTable, age_ms: float = 0.0) -> LineOutcome:
    """One output line as the pool would have reported the attempt, ready for ``result_row``: an
    answer costs its usage, or (none usable) the worst case ``job`` could have cost, marked
    estimated, as online (``jobs.charge``)."""
    model = str(job.body.get("model", ""))
    if not line.ok:
        kind = f"http_{line.status}" if line.status else (line.code or "batch_error")
        attempt = Attempt(number, line.status, kind, line.error, age_ms)
        return LineOutcome(Outcome(job, False, None, None, [attempt], line.error, kind=kind), line.retryable)
    try:
        result = read_result(line.body or {}, job.body, None, f"the batch answer for {model}")
    except (AttemptError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        error = f"unparseable answer: {str(line.body)[:120]!r}"
        attempt = Attempt(number, 200, "bad_body", error, age_ms)
        return LineOutcome(Outcome(job, False, None, None, [attempt], error, kind="bad_body"), True)
    bill = charge(prices.batch_cost, job, result)
    online = charge(prices.cost, job, result).cost
    attempt = Attempt(number, 200, None, None, age_ms, bill.prompt_tokens, bill.completion_tokens, bill.cost,
                      estimated=bill.estimated)
    try:
        parsed = check(result)
    except ResponseRejected as exc:
        attempt.error_kind, attempt.error = "rejected", str(exc)
        attempt.raw = exc.raw or "\n\n".join(result.contents)
        return LineOutcome(Outcome(job, False, result, None, [attempt], str(exc), kind="rejected"), True, True,
                           bill.cost, online)
    return LineOutcome(Outcome(job, True, result, parsed, [attempt], None), False, False, bill.cost, online)


def _endpoint_for(file: BatchFile, api_key_env: str) -> Endpoint:
    """The provider of ``file``, with the key it was sent with (an older store: ``api_key_env``)."""
    return Endpoint(base_url=file.base_url, model="", api_key=os.environ.get(file.api_key_env or api_key_env) or None)


async def _refresh(files: list[BatchFile], api_key_env: str, act: str) -> list[tuple[BatchFile, dict[str, Any]]]:
    """Ask each open batch's provider about it (``act``: "retrieve" or "cancel")."""
    answers = []
    for place in sorted({(f.base_url, f.api_key_env or api_key_env) for f in files}):
        mine = [f for f in files if (f.base_url, f.api_key_env or api_key_env) == place]
        async with BatchApi(_endpoint_for(mine[0], api_key_env)) as api:
            for file in mine:
                if file.batch_id and file.status not in TERMINAL:
                    call = api.cancel if act == "cancel" else api.retrieve
                    answers.append((file, await call(file.batch_id)))
    return answers


async def batch_status(store_path: str | Path, *, refresh: bool = True,
                       api_key_env: str = "OPENAI_API_KEY") -> list[BatchFile]:
    """Every batch file of a store, the open ones as their provider sees them now (read-only:
    works while a run holds the store). Each provider is asked with the key variable its files
    were sent with; ``api_key_env`` serves files of older stores, which did not record it."""
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
