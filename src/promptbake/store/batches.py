"""The store's record of batch mode: which input files were uploaded and which batches created.

A batch is paid for once it is created, and it lives at the provider for up to a day, far longer
than a laptop stays awake. So every id is committed the moment the provider returns it: a row is
written (with its requests) before the upload, gets its file id right after the upload and its
batch id right after the create. A re-run reads the open rows and re-attaches instead of
uploading or creating again. How often each request was tried in a batch, and how its last try
failed, is kept too (``batch_tries``): a request the provider refused for good, or that used its
attempts, is not uploaded again by the next run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from promptbake.store.db import Store

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
SentItem = tuple[str, str, int | None]  # custom_id, request_id, the max_tokens added under --max-cost


@dataclass
class BatchFile:
    """One input file and the batch made of it (a row of ``batch_files``)."""

    id: int
    spec_name: str
    step_index: int
    round: int
    base_url: str
    name: str  # the upload's file name: finds the upload again if its id was never recorded
    lines: int
    bytes: int
    reserved: float  # worst-case cost at batch prices, held against --max-cost while open
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "local"
    counts: dict[str, int] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: str | None = None
    created_at: float = 0.0
    collected_at: float | None = None
    api_key_env: str | None = None  # the variable its provider's key came from (None: an older store)

    @property
    def done(self) -> int:
        counts = self.counts or {}
        return int(counts.get("completed", 0)) + int(counts.get("failed", 0))


@dataclass
class Item:
    """A request in a batch file: ``custom_id`` is its cache key, shared by identical requests.
    ``model``, ``est_tokens`` and ``limits`` (the body's ``n`` and output caps, as sent) are what
    its worst case, and so the charge for an answer without usage, is computed from."""

    custom_id: str
    request_id: str
    model: str
    est_tokens: int = 0
    limits: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tries:
    """A custom_id's batch attempts over every run: how many, how many answers the step's checks
    rejected (the next attempt's seed), and whether and how the last one failed."""

    tries: int = 0
    rejections: int = 0
    final: bool = False  # failed for a reason sending it again cannot fix
    error: str | None = None


_COLUMNS = (
    "id, spec_name, step_index, round, base_url, name, lines, bytes, reserved, file_id, batch_id, status, "
    "counts, output_file_id, error_file_id, errors, created_at, collected_at, api_key_env"
)
# a request's worst case, from its stored row ``r`` (the top-level fields are never packed into blobs)
_LIMITS = ("COALESCE(json_extract(r.body, '$.model'), ''), COALESCE(r.est_tokens, 0), json_extract(r.body, '$.n'), "
           "json_extract(r.body, '$.max_tokens'), json_extract(r.body, '$.max_completion_tokens')")


def _limits(n: Any, max_tokens: Any, max_completion_tokens: Any, sent_max_tokens: Any = None) -> dict[str, Any]:
    limits = {"n": n, "max_tokens": max_tokens if max_tokens is not None else sent_max_tokens,
              "max_completion_tokens": max_completion_tokens}
    return {k: v for k, v in limits.items() if v is not None}


def _file(row: tuple[Any, ...]) -> BatchFile:
    values = list(row)
    values[12] = json.loads(values[12]) if values[12] else None
    return BatchFile(*values)


class BatchLedger:
    """Reads and writes ``batch_files``/``batch_items`` through the run's one store connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def add_file(self, spec_name: str, step_index: int, round_: int, base_url: str, api_key_env: str, lines: int,
                 size: int, reserved: float, items: Iterable[SentItem]) -> BatchFile:
        """Record a file and its items before anything is uploaded."""
        now = time.time()
        name = f"promptbake-{spec_name[:40]}-{uuid.uuid4().hex[:16]}.jsonl"
        with self.store.transaction():
            cur = self.db.execute(
                "INSERT INTO batch_files (spec_name, step_index, round, base_url, name, lines, bytes, reserved, "
                "status, created_at, updated_at, api_key_env) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'local', ?, ?, ?)",
                (spec_name, step_index, round_, base_url, name, lines, size, reserved, now, now, api_key_env),
            )
            file_no = int(cur.lastrowid or 0)
            self._add_items(file_no, items)
        return BatchFile(file_no, spec_name, step_index, round_, base_url, name, lines, size, reserved, created_at=now,
                         api_key_env=api_key_env)

    def add_items(self, file: BatchFile, items: Iterable[SentItem]) -> None:
        """More requests identical to one already in ``file``: its answer will serve them too."""
        with self.store.transaction():
            self._add_items(file.id, items)

    def _add_items(self, file_no: int, items: Iterable[SentItem]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO batch_items (file, custom_id, request_id, max_tokens) "
                            "VALUES (?, ?, ?, ?)", ((file_no, *item) for item in items))

    def forget(self, file: BatchFile) -> None:
        """Drop a row whose upload never happened: its requests are simply still pending."""
        with self.store.transaction():
            self.db.execute("DELETE FROM batch_items WHERE file = ?", (file.id,))
            self.db.execute("DELETE FROM batch_files WHERE id = ?", (file.id,))

    def set_file_id(self, file: BatchFile, file_id: str) -> None:
        file.file_id, file.status = file_id, "uploaded"
        self._update(file, "file_id = ?, status = ?", (file_id, file.status))

    def set_batch(self, file: BatchFile, batch: dict[str, Any]) -> bool:
        """Record what the provider says about the batch; True when anything changed."""
        counts = batch.get("request_counts") or None
        errors = _errors_text(batch.get("errors"))
        fields = {
            "batch_id": batch["id"],
            "status": batch["status"],
            "counts": counts,
            "output_file_id": batch.get("output_file_id"),
            "error_file_id": batch.get("error_file_id"),
            "errors": errors,
        }
        if all(getattr(file, k) == v for k, v in fields.items()):
            return False
        for key, value in fields.items():
            setattr(file, key, value)
        self._update(
            file,
            "batch_id = ?, status = ?, counts = ?, output_file_id = ?, error_file_id = ?, errors = ?",
            (file.batch_id, file.status, json.dumps(counts) if counts else None, file.output_file_id,
             file.error_file_id, errors),
        )
        return True

    def mark_collected(self, file: BatchFile) -> None:
        """Inside the transaction that records the batch's answers: both land, or neither."""
        file.collected_at = time.time()
        self._update(file, "collected_at = ?", (file.collected_at,))

    def _update(self, file: BatchFile, assignments: str, values: tuple[Any, ...]) -> None:
        with self.store.transaction():
            self.db.execute(f"UPDATE batch_files SET {assignments}, updated_at = ? WHERE id = ?",
                            (*values, time.time(), file.id))

    def open_files(self, spec_name: str | None = None, step_index: int | None = None,
                   round_: int | None = None) -> list[BatchFile]:
        """Files not collected yet, oldest first (optionally of one step and round)."""
        sql, params = f"SELECT {_COLUMNS} FROM batch_files WHERE collected_at IS NULL", []
        for column, value in (("spec_name", spec_name), ("step_index", step_index), ("round", round_)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_file(r) for r in self.db.execute(sql + " ORDER BY id", params)]

    def all_files(self) -> list[BatchFile]:
        return [_file(r) for r in self.db.execute(f"SELECT {_COLUMNS} FROM batch_files ORDER BY id")]

    def items(self, file: BatchFile) -> dict[str, list[Item]]:
        """The file's requests by custom_id; the first of each group is the one billed."""
        rows = self.db.execute(
            f"SELECT i.custom_id, i.request_id, {_LIMITS}, i.max_tokens "
            "FROM batch_items i LEFT JOIN requests r ON r.id = i.request_id WHERE i.file = ? ORDER BY i.rowid",
            (file.id,),
        )
        grouped: dict[str, list[Item]] = {}
        for cid, rid, model, est, *limits in rows:
            grouped.setdefault(cid, []).append(Item(cid, rid, model, est, _limits(*limits)))
        return grouped

    def tries(self, spec_name: str, step_index: int) -> dict[str, Tries]:
        """What earlier batches did with the step's requests still waiting for an answer (planned
        now or not: a streamed step is planned again slice by slice as it is sent)."""
        rows = self.db.execute(
            "SELECT t.custom_id, t.tries, t.rejections, t.final, t.error FROM batch_tries t WHERE t.custom_id IN "
            "(SELECT cache_key FROM requests WHERE spec_name = ? AND step_index = ? AND status != 'ok')",
            (spec_name, step_index),
        )
        return {cid: Tries(tries, rejections, bool(final), error) for cid, tries, rejections, final, error in rows}

    def save_tries(self, tries: dict[str, Tries]) -> None:
        """Inside the transaction that records the answers the tries were counted from."""
        now = time.time()
        with self.store.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO batch_tries VALUES (?, ?, ?, ?, ?, ?)",
                ((cid, t.tries, t.rejections, int(t.final), t.error, now) for cid, t in tries.items()),
            )


def _errors_text(errors: Any) -> str | None:
    """A failed batch's ``errors.data`` as one line: what the provider objected to."""
    if not errors:
        return None
    data = errors.get("data") if isinstance(errors, dict) else None
    if not data:
        return json.dumps(errors)[:500]
    parts = []
    for error in data[:5]:
        line = f" (line {error['line']})" if error.get("line") is not None else ""
        parts.append(f"{error.get('code') or 'error'}: {error.get('message') or ''}{line}")
    more = f"; and {len(data) - 5} more" if len(data) > 5 else ""
    return "; ".join(parts) + more


@dataclass
class Holder:
    """A current request waiting for the answer a custom_id (cache key) carries."""

    spec_name: str
    step_index: int
    status: str
    attempts: int
    item: Item


def holders(store: Store, custom_id: str) -> list[Holder]:
    """Current requests with this cache key, in plan order (offline import)."""
    rows = store.db.execute(
        f"SELECT r.id, r.spec_name, r.step_index, r.status, r.attempts, {_LIMITS} "
        "FROM requests r WHERE r.cache_key = ? AND r.current = 1 ORDER BY r.spec_name, r.step_index, r.ord",
        (custom_id,),
    )
    return [Holder(spec_name, k, status, attempts, Item(custom_id, rid, model, est, _limits(*limits)))
            for rid, spec_name, k, status, attempts, model, est, *limits in rows]


def exhausted(store: Store, spec_name: str, step_index: int, max_attempts: int) -> set[str]:
    """Ids of failed requests that used every attempt: an offline export leaves them out."""
    rows = store.db.execute(
        "SELECT id FROM requests WHERE spec_name = ? AND step_index = ? AND current = 1 AND status = 'failed' "
        "AND attempts >= ?",
        (spec_name, step_index, max_attempts),
    )
    return {row[0] for row in rows}

