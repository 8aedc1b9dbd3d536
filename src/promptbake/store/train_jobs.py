"""The store's record of hosted fine-tuning: what was uploaded where, and which job trains on it.

A fine-tuning job is paid for once it is created and runs for hours, far longer than a terminal
stays open. So, as for batch mode, each fact is committed the moment it exists: the row (with the
names the files will be uploaded under) before anything leaves the machine, each file id right
after its upload returns, the job id right after the create returns, then every status the
provider reports. A re-run reads the row and re-attaches instead of uploading or launching again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from typing import Any

from promptbake.store.db import Store

# a job in one of these will not change again (normalised states, see train/providers.py)
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class TrainJob:
    """One hosted fine-tuning attempt (a row of ``train_jobs``)."""

    id: int
    key: str  # what makes a re-run the same attempt: provider, server, model, data, settings
    provider: str
    base_url: str
    account: str | None
    api_key_env: str  # the variable's name, never its value
    base_model: str
    train_source: str  # the dataset's training file it was made from (train.jsonl, train.v2.jsonl...)
    settings: dict[str, Any]  # epochs, suffix, validation: what the job was asked for
    train_name: str  # the upload's name: finds the upload again if its id was never recorded
    train_file_id: str | None
    validation_name: str | None
    validation_file_id: str | None
    job_name: str  # our name for the job: finds it again if its id was never recorded
    job_id: str | None = None
    status: str = "local"  # local (nothing at the provider yet), then the job's normalised state
    raw_status: str | None = None  # the provider's own word for it
    fine_tuned_model: str | None = None
    error: str | None = None
    trained_tokens: int | None = None
    estimate: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


_COLUMNS = ", ".join(f.name for f in fields(TrainJob))
_JSON = ("settings", "estimate")


def _job(row: tuple[Any, ...]) -> TrainJob:
    values = dict(zip((f.name for f in fields(TrainJob)), row, strict=True))
    for name in _JSON:
        values[name] = json.loads(values[name]) if values[name] else None
    values["settings"] = values["settings"] or {}
    return TrainJob(**values)


class TrainLedger:
    """Reads and writes ``train_jobs`` through one store connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def add(self, job: TrainJob) -> TrainJob:
        """Record an attempt before anything is uploaded; returns it with its row id."""
        job.created_at = job.updated_at = time.time()
        names = [f.name for f in fields(TrainJob) if f.name != "id"]
        values = [json.dumps(getattr(job, n)) if n in _JSON else getattr(job, n) for n in names]
        with self.store.transaction():
            cur = self.db.execute(
                f"INSERT INTO train_jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
            )
        job.id = int(cur.lastrowid or 0)
        return job

    def update(self, job: TrainJob, **changes: Any) -> None:
        """Set fields of ``job`` and commit them at once (ids as soon as the provider returns them)."""
        for name, value in changes.items():
            setattr(job, name, value)
        job.updated_at = time.time()
        assignments = ", ".join(f"{name} = ?" for name in [*changes, "updated_at"])
        values = [json.dumps(v) if n in _JSON else v for n, v in changes.items()]
        with self.store.transaction():
            self.db.execute(f"UPDATE train_jobs SET {assignments} WHERE id = ?", (*values, job.updated_at, job.id))

    def latest(self, key: str) -> TrainJob | None:
        """The newest attempt with this key (a re-run of the same command finds it)."""
        row = self.db.execute(f"SELECT {_COLUMNS} FROM train_jobs WHERE key = ? ORDER BY id DESC LIMIT 1",
                              (key,)).fetchone()
        return _job(row) if row else None

    def all(self) -> list[TrainJob]:
        """Every attempt, oldest first."""
        return [_job(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM train_jobs ORDER BY id")]

    def known_upload(self, provider: str, base_url: str, account: str | None, name: str) -> str | None:
        """The file id an earlier attempt got for an upload of this name (the name is the content's
        hash), so a new job on the same data uploads nothing."""
        for column in ("train", "validation"):
            row = self.db.execute(
                f"SELECT {column}_file_id FROM train_jobs WHERE provider = ? AND base_url = ? "
                f"AND COALESCE(account, '') = ? AND {column}_name = ? AND {column}_file_id IS NOT NULL "
                "ORDER BY id DESC LIMIT 1",
                (provider, base_url, account or "", name),
            ).fetchone()
            if row:
                return str(row[0])
        return None

    def recorded_job_ids(self) -> set[str]:
        """Job ids already tied to an attempt: a search for a lost id must not claim one of these."""
        return {r[0] for r in self.db.execute("SELECT job_id FROM train_jobs WHERE job_id IS NOT NULL")}
