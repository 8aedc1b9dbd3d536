"""Hosted fine-tuning providers behind one small interface: upload a file, create a job, follow it.

Each provider is reached through its own maintained SDK: ``openai``, ``together`` 3.x and
``fireworks-ai`` 1.x (generated from the providers' API specs, covering files or datasets and
supervised fine-tuning jobs). They bring multipart uploads, pagination and retries of 408/409/429
and 5xx answers with backoff that follows ``retry-after``, so none of that is written here. The
two others are optional dependencies (``promptbake[together]``, ``promptbake[fireworks]``),
imported when first used. Every SDK takes a base URL (``--base-url``, or ``OPENAI_BASE_URL``,
``TOGETHER_BASE_URL``, ``FIREWORKS_BASE_URL``), which is how the tests point them at a loopback
stand-in.

What each provider says about a job is reduced to a :class:`JobView` with one vocabulary of states
(:data:`STATES`), and every SDK error becomes a :class:`TrainingError` with the key scrubbed out.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from promptbake.errors import InputError, TrainingError
from promptbake.teacher.client import KeyScrubber

# queued (waiting for hardware), validating (the provider reads the file), running, cancelling, and
# the three ends; a state this module does not know is kept as running, with the raw word shown
STATES = ("queued", "validating", "running", "cancelling", "succeeded", "failed", "cancelled")

PROVIDERS = ("openai", "together", "fireworks")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "together": "https://api.together.ai",
    "fireworks": "https://api.fireworks.ai",
}
_ENV = {"openai": "OPENAI", "together": "TOGETHER", "fireworks": "FIREWORKS"}


@dataclass
class JobView:
    """A job as the provider describes it now, in this module's words."""

    id: str
    state: str
    raw_status: str
    fine_tuned_model: str | None = None
    error: str | None = None
    trained_tokens: int | None = None


@dataclass(frozen=True)
class JobRequest:
    """What a job is asked to do; ``name`` is ours and deterministic, so a job whose id was never
    recorded (the process was killed as the create returned) can be found again."""

    name: str
    model: str
    training_file: str
    validation_file: str | None
    epochs: int
    suffix: str | None


@dataclass(frozen=True)
class Connection:
    """Where a provider is and how to authenticate: the key is read from ``api_key_env`` at
    connect time and never stored."""

    provider: str
    base_url: str
    api_key_env: str
    account: str | None = None  # Fireworks: the account that owns datasets and jobs

    @classmethod
    def resolve(cls, provider: str, base_url: str | None = None, api_key_env: str | None = None,
                account: str | None = None) -> Connection:
        """The provider's settings with their defaults: ``--base-url`` else ``<PROVIDER>_BASE_URL``
        else the public API; ``<PROVIDER>_API_KEY``; Fireworks' ``FIREWORKS_ACCOUNT_ID``."""
        if provider not in PROVIDERS:
            raise InputError(f"--provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        prefix = _ENV[provider]
        url = base_url or os.environ.get(f"{prefix}_BASE_URL") or DEFAULT_BASE_URLS[provider]
        if provider != "fireworks":
            account = None  # only Fireworks names an account in its paths
        elif not (account := account or os.environ.get("FIREWORKS_ACCOUNT_ID")):
            raise InputError("fireworks needs an account id: --account ID or FIREWORKS_ACCOUNT_ID")
        return cls(provider, url.rstrip("/"), api_key_env or f"{prefix}_API_KEY", account)

    def key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise InputError(f"{self.provider} needs an API key: set {self.api_key_env} (or name another "
                             "variable with --api-key-env)")
        return key


def provider_class(name: str) -> type[Provider]:
    kinds: dict[str, type[Provider]] = {"openai": OpenAIProvider, "together": TogetherProvider,
                                        "fireworks": FireworksProvider}
    return kinds[name]


def connect(connection: Connection) -> Provider:
    """The provider object for a connection (enter it with ``async with``)."""
    return provider_class(connection.provider)(connection)


class Provider(abc.ABC):
    """One provider's files and jobs. ``async with`` opens its SDK client."""

    name: ClassVar[str]
    package: ClassVar[str]  # the SDK's import name
    install: ClassVar[str]  # what installs it
    max_suffix: ClassVar[int | None] = None  # longest model-name suffix the provider takes
    raw_states: ClassVar[dict[str, str]]

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.key = connection.key()
        self.scrub = KeyScrubber(self.key)  # the key, and any 8-character prefix or suffix of it
        self.client: Any = None

    async def __aenter__(self) -> Provider:
        self.client = self._client(self._sdk())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    def _sdk(self) -> Any:
        import importlib

        try:
            return importlib.import_module(self.package)
        except ImportError:
            raise InputError(f"--provider {self.name} needs its SDK: pip install {self.install}") from None

    @abc.abstractmethod
    def _client(self, sdk: Any) -> Any:
        """The SDK's async client, pointed at ``connection.base_url`` with ``self.key``."""

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """SDK errors as one scrubbed line: 401/403 name the key variable, 429 says the SDK's
        retries ran out, an unreachable server says so; ``ValueError`` is the SDK refusing our
        arguments before sending anything."""
        sdk = self._sdk()
        where = self.connection.base_url
        try:
            yield
        except sdk.APIStatusError as exc:
            status = exc.status_code
            if status in (401, 403):
                message = (f"{what}: {self.name} at {where} refused the credentials (HTTP {status}); "
                           f"check {self.connection.api_key_env}")
            elif status == 429:
                message = (f"{what}: {self.name} is rate limiting (HTTP 429) and still was after the SDK's "
                           f"retries: {_said(exc)}; nothing is lost, run the command again later")
            else:
                message = f"{what}: HTTP {status} from {self.name} at {where}: {_said(exc)}"
            raise TrainingError(self.scrub(message)) from None
        except sdk.APIError as exc:  # connection errors and timeouts, after the SDK's retries
            raise TrainingError(self.scrub(f"{what}: cannot reach {self.name} at {where}: {exc}")) from None
        except ValueError as exc:
            raise InputError(self.scrub(f"{what}: {self.name} refuses the request: {exc}")) from None

    def view(self, job_id: str, raw: str, **facts: Any) -> JobView:
        return JobView(job_id, self.raw_states.get(raw, "running"), raw, **facts)

    @abc.abstractmethod
    async def find_upload(self, name: str) -> str | None:
        """The id of an earlier upload named ``name`` that finished, or None."""

    @abc.abstractmethod
    async def upload(self, path: Path, name: str) -> str:
        """Upload the JSONL file ``path`` under ``name`` (``name.jsonl`` where the provider wants a
        file name); returns the id a job names it by."""

    @abc.abstractmethod
    async def find_job(self, request: JobRequest, since: float, taken: set[str]) -> JobView | None:
        """The job made for ``request`` by a run killed before it recorded the id: created after
        ``since`` (a minute's clock skew allowed) and not one of the ids in ``taken``."""

    @abc.abstractmethod
    async def create_job(self, request: JobRequest) -> JobView:
        """Launch a supervised fine-tuning job."""

    @abc.abstractmethod
    async def retrieve(self, job_id: str) -> JobView:
        """The job as the provider sees it now."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobView:
        """Ask the provider to stop the job; returns it as it is afterwards."""


def _said(exc: Any) -> str:
    """What the provider said, on one line: ``{"error": {"message"}}`` (OpenAI, Together) or
    ``{"message"}`` (Fireworks), else the SDK's own text."""
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else body
    text = inner.get("message") if isinstance(inner, dict) else inner
    return " ".join(str(text or exc).split())[:300]


def _seconds(value: Any) -> float:
    """A creation time as Unix seconds, whether the SDK gives a number or a datetime."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value or 0)


class OpenAIProvider(Provider):
    """``/v1/files`` (purpose ``fine-tune``) and ``/v1/fine_tuning/jobs``."""

    name, package, install = "openai", "openai", "openai"
    max_suffix = 64
    raw_states: ClassVar[dict[str, str]] = {
        "validating_files": "validating", "queued": "queued", "running": "running",
        "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled",
    }

    def _client(self, sdk: Any) -> Any:
        return sdk.AsyncOpenAI(api_key=self.key, base_url=self.connection.base_url, max_retries=5, timeout=300)

    def _job(self, job: Any) -> JobView:
        error = job.error.message if job.error is not None and job.error.message else None
        return self.view(job.id, job.status, fine_tuned_model=job.fine_tuned_model, error=error,
                         trained_tokens=job.trained_tokens)

    async def find_upload(self, name: str) -> str | None:
        with self.errors("listing uploaded files"):
            async for item in self.client.files.list(purpose="fine-tune"):
                if item.filename == f"{name}.jsonl":
                    return str(item.id)
        return None

    async def upload(self, path: Path, name: str) -> str:
        with self.errors(f"uploading {path.name}"), path.open("rb") as handle:
            uploaded = await self.client.files.create(file=(f"{name}.jsonl", handle, "application/jsonl"),
                                                      purpose="fine-tune")
        return str(uploaded.id)

    async def find_job(self, request: JobRequest, since: float, taken: set[str]) -> JobView | None:
        with self.errors("listing fine-tuning jobs"):
            async for job in self.client.fine_tuning.jobs.list(limit=100):
                if job.training_file == request.training_file and job.id not in taken \
                        and (job.metadata or {}).get("promptbake") == request.name:
                    return self._job(job)
                if job.created_at < since - 60:  # newest first: older jobs cannot be ours
                    break
        return None

    async def create_job(self, request: JobRequest) -> JobView:
        import openai

        with self.errors("creating the fine-tuning job"):
            job = await self.client.fine_tuning.jobs.create(
                model=request.model, training_file=request.training_file,
                validation_file=request.validation_file or openai.omit, suffix=request.suffix or openai.omit,
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": request.epochs}}},
                metadata={"promptbake": request.name},
            )
        return self._job(job)

    async def retrieve(self, job_id: str) -> JobView:
        with self.errors(f"checking job {job_id}"):
            return self._job(await self.client.fine_tuning.jobs.retrieve(job_id))

    async def cancel(self, job_id: str) -> JobView:
        with self.errors(f"cancelling job {job_id}"):
            return self._job(await self.client.fine_tuning.jobs.cancel(job_id))


class TogetherProvider(Provider):
    """``/v1/files`` (the SDK's checksum-named upload through a presigned URL) and
    ``/v1/fine-tunes``. The SDK's ``create`` asks the provider for the model's limits and its own
    price estimate before it launches."""

    name, package, install = "together", "together", "'promptbake[together]'"
    max_suffix = 40
    raw_states: ClassVar[dict[str, str]] = {
        "pending": "queued", "queued": "queued", "running": "running", "compressing": "running",
        "uploading": "running", "cancel_requested": "cancelling", "cancelled": "cancelled",
        "error": "failed", "user_error": "failed", "completed": "succeeded",
    }

    def _client(self, sdk: Any) -> Any:
        return sdk.AsyncTogether(api_key=self.key, base_url=self.connection.base_url, max_retries=5, timeout=300)

    def _job(self, job: Any) -> JobView:
        status = str(getattr(job.status, "value", job.status) or "pending")
        model = getattr(job, "output_name", None) or getattr(job, "x_model_output_name", None)
        errors = [e.message for e in job.events or [] if getattr(e, "level", None) == "error" and e.message]
        return self.view(job.id, status, fine_tuned_model=model, error=errors[-1] if errors else None,
                         trained_tokens=getattr(job, "token_count", None))

    async def find_upload(self, name: str) -> str | None:
        with self.errors("listing uploaded files"):
            files = await self.client.files.list()
        for item in files.data or []:
            if item.filename == f"{name}.jsonl":
                return str(item.id)
        return None

    async def upload(self, path: Path, name: str) -> str:
        # the SDK names the upload after the file: give it one called ``name``
        with tempfile.TemporaryDirectory(prefix="promptbake-") as tmp:
            named = Path(tmp) / f"{name}.jsonl"
            shutil.copyfile(path, named)
            with self.errors(f"uploading {path.name}"):
                uploaded = await self.client.files.upload(file=named, purpose="fine-tune", check=False)
        return str(uploaded.id)

    async def find_job(self, request: JobRequest, since: float, taken: set[str]) -> JobView | None:
        with self.errors("listing fine-tuning jobs"):
            jobs = await self.client.fine_tuning.list()
        for job in jobs.data or []:
            if job.training_file == request.training_file and job.id not in taken \
                    and _seconds(job.created_at) >= since - 60:
                return self._job(job)
        return None

    async def create_job(self, request: JobRequest) -> JobView:
        with self.errors("creating the fine-tuning job"):
            job = await self.client.fine_tuning.create(
                training_file=request.training_file, model=request.model, n_epochs=request.epochs,
                validation_file=request.validation_file or "", n_evals=1 if request.validation_file else 0,
                suffix=request.suffix, train_on_inputs="auto",
            )
        return self._job(job)

    async def retrieve(self, job_id: str) -> JobView:
        with self.errors(f"checking job {job_id}"):
            return self._job(await self.client.fine_tuning.retrieve(job_id))

    async def cancel(self, job_id: str) -> JobView:
        with self.errors(f"cancelling job {job_id}"):
            await self.client.fine_tuning.cancel(job_id)
        return await self.retrieve(job_id)


class FireworksProvider(Provider):
    """Datasets (``POST .../datasets`` then ``:upload``) and ``supervisedFineTuningJobs``, both
    under ``/v1/accounts/{account}``. Their ids are chosen by the caller, so ours are the upload
    name and the job name: a lost id is found by asking for it."""

    name, package, install = "fireworks", "fireworks", "'promptbake[fireworks]'"
    raw_states: ClassVar[dict[str, str]] = {
        "JOB_STATE_UNSPECIFIED": "queued", "JOB_STATE_CREATING": "queued", "JOB_STATE_PENDING": "queued",
        "JOB_STATE_CREATING_INPUT_DATASET": "queued", "JOB_STATE_RE_QUEUEING": "queued", "JOB_STATE_IDLE": "queued",
        "JOB_STATE_PAUSED": "queued", "JOB_STATE_VALIDATING": "validating", "JOB_STATE_RUNNING": "running",
        "JOB_STATE_WRITING_RESULTS": "running", "JOB_STATE_CANCELLING": "cancelling",
        "JOB_STATE_COMPLETED": "succeeded", "JOB_STATE_EARLY_STOPPED": "succeeded", "JOB_STATE_FAILED": "failed",
        "JOB_STATE_EXPIRED": "failed", "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_DELETING": "cancelled",
        "JOB_STATE_DELETING_CLEANING_UP": "cancelled",
    }

    def _client(self, sdk: Any) -> Any:
        return sdk.AsyncFireworks(api_key=self.key, account_id=self.connection.account,
                                  base_url=self.connection.base_url, max_retries=5, timeout=300)

    def _dataset(self, name: str) -> str:
        return f"accounts/{self.connection.account}/datasets/{name}"

    def _job(self, job: Any) -> JobView:
        job_id = str(job.name or "").rsplit("/", 1)[-1]
        state = str(job.state or "JOB_STATE_UNSPECIFIED")
        model = job.output_model or (f"accounts/{self.connection.account}/models/{job_id}"
                                     if self.raw_states.get(state) == "succeeded" else None)
        status = getattr(job, "status", None)
        error = status.message if status is not None and getattr(status, "code", "OK") not in (None, "OK") else None
        return self.view(job_id, state, fine_tuned_model=model, error=error or None)

    async def find_upload(self, name: str) -> str | None:
        sdk = self._sdk()
        with self.errors(f"checking dataset {name}"):
            try:
                dataset = await self.client.datasets.get(name)
            except sdk.NotFoundError:
                return None
        return self._dataset(name) if dataset.state == "READY" else None

    async def upload(self, path: Path, name: str) -> str:
        sdk = self._sdk()
        with self.errors(f"creating dataset {name}"), contextlib.suppress(sdk.ConflictError):  # made by a killed run
            await self.client.datasets.create(dataset_id=name, dataset={"userUploaded": {}})
        with self.errors(f"uploading {path.name}"), path.open("rb") as handle:
            await self.client.datasets.upload(name, file=(f"{name}.jsonl", handle, "application/jsonl"))
        return self._dataset(name)

    async def find_job(self, request: JobRequest, since: float, taken: set[str]) -> JobView | None:
        sdk = self._sdk()
        with self.errors(f"checking job {request.name}"):
            try:
                job = await self.client.supervised_fine_tuning_jobs.get(request.name)
            except sdk.NotFoundError:
                return None
        view = self._job(job)
        return None if view.id in taken else view

    async def create_job(self, request: JobRequest) -> JobView:
        with self.errors("creating the fine-tuning job"):
            job = await self.client.supervised_fine_tuning_jobs.create(
                dataset=request.training_file, base_model=request.model, epochs=request.epochs,
                supervised_fine_tuning_job_id=request.name, display_name=request.suffix or request.name,
                **({"evaluation_dataset": request.validation_file} if request.validation_file else {}),
            )
        return self._job(job)

    async def retrieve(self, job_id: str) -> JobView:
        with self.errors(f"checking job {job_id}"):
            return self._job(await self.client.supervised_fine_tuning_jobs.get(job_id))

    async def cancel(self, job_id: str) -> JobView:
        with self.errors(f"cancelling job {job_id}"):
            await self.client.supervised_fine_tuning_jobs.cancel(job_id, body={})
        return await self.retrieve(job_id)
