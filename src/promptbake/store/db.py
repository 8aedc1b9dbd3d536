"""The SQLite store: every request, response, attempt and its cost.

It is the cache and the resume point. Requests are planned with deterministic ids and inserted
before anything is sent; a response is committed before its request counts as done, so a killed
run re-sends only what has no stored success. Reads page through the table by key so a
million-request job never sits in memory, and one writer commits results in batches.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from promptbake import __version__, fastjson
from promptbake.errors import StoreError, StoreTooNew
from promptbake.store.migrations import migrate, unknown

PAGE = 2000
# A request is pending, failed or ok. A step's not-done requests are asked for as "status IN
# ('pending', 'failed')", not "status != 'ok'": the inequality stops SQLite's index at the status
# column, so every such read walked the whole step, done requests too (a million-request step,
# planned a slice at a time, was read whole for every slice). Looked up by cache key, either will do.


@dataclass
class PlannedRequest:
    id: str
    spec_name: str
    step: str
    step_index: int
    round: int
    ord: str
    cell_key: str
    category: str
    parent_id: str | None
    item_index: int
    vars: dict[str, Any]
    body: dict[str, Any]
    cache_key: str
    est_tokens: int


@dataclass
class StoredRequest:
    id: str
    step_index: int
    round: int
    ord: str
    cell_key: str
    category: str
    vars: dict[str, Any]
    body: dict[str, Any]
    cache_key: str
    est_tokens: int
    outputs: list[Any] | None = None  # set when read together with its response


class PlannedRow(NamedTuple):
    cell_key: str
    vars: dict[str, Any]
    parent_id: str | None
    item_index: int


@dataclass(frozen=True)
class FanoutDrop:
    """An item of a step's answer left out of the next step: it repeats an earlier item of its cell,
    or (``reason``) its user line already fails a filter, so no later answer could make it pass."""

    request_id: str
    item_index: int
    category: str
    duplicate_of: str | None  # "<request id>:<item index>" of the item kept
    reason: str | None = None  # the filters' reasons; None for a repeat
    cell_key: str = ""  # the cell of the answer it came from


@dataclass
class AttemptRow:
    number: int
    status_code: int | None
    error_kind: str | None
    error: str | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    raw: str | None


@dataclass
class ResultRow:
    """What the writer commits for one finished request."""

    request_id: str
    cache_key: str
    ok: bool
    attempts: list[AttemptRow]
    error: str | None = None
    abandoned: bool = False  # cut short (budget, auth, Ctrl-C): attempts kept, request stays pending
    model: str | None = None
    contents: list[str] | None = None
    outputs: list[Any] | None = None
    finish_reasons: list[str] | None = None


def _dumps(value: Any) -> str:
    return fastjson.dumps_text(value)


# what binding or encoding a row's values can raise (UnicodeEncodeError is a ValueError)
_UNSTORABLE = (ValueError, TypeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
               sqlite3.DataError)


def _repair(value: Any) -> Any:
    """``value`` with every string made encodable and every number made storable."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # a lone surrogate: one U+FFFD
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else 0
    if isinstance(value, float):
        return value if math.isfinite(value) else 0.0
    if isinstance(value, dict):
        return {_repair(str(k)): _repair(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_repair(v) for v in value]
    return _repair(str(value))


def _number(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok and abs(value) < 2**53 else 0.0


def _repaired(result: ResultRow) -> ResultRow:
    attempts = [AttemptRow(*(_repair(getattr(a, f.name)) for f in dataclasses.fields(AttemptRow)))
                for a in result.attempts]
    return dataclasses.replace(result, attempts=attempts, error=_repair(result.error), model=_repair(result.model),
                               contents=_repair(result.contents), outputs=_repair(result.outputs),
                               finish_reasons=_repair(result.finish_reasons))


def _unstorable(result: ResultRow, exc: Exception) -> ResultRow:
    """The last resort: the request is recorded as failed, what its attempts cost kept, the reason said."""
    attempts = [AttemptRow(int(_number(a.number)), None, "unstorable", None, _number(a.latency_ms),
                           int(_number(a.prompt_tokens)), int(_number(a.completion_tokens)), _number(a.cost), None)
                for a in result.attempts]
    reason = _repair(f"the answer could not be stored ({type(exc).__name__}: {exc}); it will be asked again")
    return ResultRow(result.request_id, result.cache_key, False, attempts, error=reason)


def _status(result: ResultRow) -> str:
    if result.ok:
        return "ok"
    return "pending" if result.abandoned else "failed"


# a planned request joins the current plan; planned again (a resumed run), it just becomes current
_PLAN_INSERT = (
    "INSERT INTO requests (id, spec_name, step, step_index, round, ord, cell_key, category, parent_id, "
    "item_index, vars, body, cache_key, est_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET current = 1"
)

BLOB_MIN = 1024  # characters: a system prompt this long is stored once, by hash
BLOB_ROLES = ("system", "developer")


def _pack(body: dict[str, Any], blobs: dict[str, str]) -> dict[str, Any]:
    """The body with long system prompts replaced by ``{"$blob": hash}`` (collected in ``blobs``):
    distilling a 2,000-token prompt over 100,000 inputs would otherwise store it 100,000 times."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_blobbable(m) for m in messages):
        return body
    packed = []
    for message in messages:
        if _blobbable(message):
            digest = hashlib.sha256(message["content"].encode()).hexdigest()[:32]
            blobs[digest] = message["content"]
            message = {**message, "content": {"$blob": digest}}
        packed.append(message)
    return {**body, "messages": packed}


def _blobbable(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in BLOB_ROLES
        and isinstance(message.get("content"), str)
        and len(message["content"]) >= BLOB_MIN
    )


def request_row(r: PlannedRequest, blobs: dict[str, str]) -> tuple[Any, ...]:
    """The requests table's row for ``r`` (what :meth:`Store.add_plan_rows` takes), its long
    system prompts moved into ``blobs``: built where the request is planned, which may be
    another process (see :mod:`promptbake.teacher.ahead`)."""
    return (
        r.id,
        r.spec_name,
        r.step,
        r.step_index,
        r.round,
        r.ord,
        r.cell_key,
        r.category,
        r.parent_id,
        r.item_index,
        _dumps(r.vars),
        _dumps(_pack(r.body, blobs)),
        r.cache_key,
        r.est_tokens,
    )


def cell_row(spec_name: str, cell: Any) -> tuple[Any, ...]:
    """The cells table's row for a planned cell (see :func:`request_row`)."""
    return spec_name, cell.key, cell.index, cell.category, _dumps(cell.values), cell.count


class Store:
    """One SQLite file (WAL). Opening it for writing takes an exclusive lock on ``PATH.lock``:
    a second process gets a clear StoreError instead of interleaving with the first. The lock is
    an ``flock``, so the kernel drops it when the holder dies (even by ``kill -9``)."""

    def __init__(self, path: str | Path, *, lock: bool = True) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._blob_cache: dict[str, str] = {}
        if lock:
            self._take_lock()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._refuse_newer()  # before the first write, so a refused store stays byte for byte
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # checkpoint every 64 MB of log rather than 4: a page the answers touch again and again
            # (their indexes' keys are random) is copied into the database once per checkpoint, not
            # once per 4 MB (a quarter of the writer's time at 100,000 answers)
            self.db.execute("PRAGMA wal_autocheckpoint=16000")
            # 16 MiB of page cache, not 2: request ids and cache keys are hashes, so planning and
            # answering 100,000 requests touch their indexes' pages all over, and a page read
            # back from the file costs more than keeping it (4 % of generate's CPU at 100,000)
            self.db.execute("PRAGMA cache_size=-16384")
            self.db.execute("PRAGMA foreign_keys=OFF")
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc
        except StoreTooNew:
            self.db.close()
            self._release_lock()
            raise

    def _refuse_newer(self) -> None:
        newer = unknown(self.db)
        if newer:
            raise StoreTooNew(f"{self.path} was written by a newer promptbake (migration {', '.join(newer)} is "
                              f"unknown to promptbake {__version__}); upgrade promptbake to use it. It was not "
                              "changed.")

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"{self.path} is in use by another promptbake process (pid {holder}); "
                "wait for it to finish or use another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        self.db.close()
        self._release_lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing. ``with connection:`` does not BEGIN on an autocommit connection
        (``isolation_level=None``): each row of an ``executemany`` would commit alone, so a failure
        (disk full) left half a batch behind, and every row cost its own write to the log.
        Nested inside :meth:`transaction`, it joins the outer one."""
        if self.db.in_transaction:
            yield
            return
        # IMMEDIATE: another connection to the file may have written since this one last
        # read; a deferred BEGIN would then fail at its first write instead of waiting its turn
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL)
                self.db.execute("ROLLBACK")
            raise

    def transaction(self) -> AbstractContextManager[None]:
        """Several store writes committed together (a batch's answers and its "collected" mark),
        so a kill between them cannot leave one without the other."""
        return self._transaction()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> int:
        try:
            with self._transaction():
                return self.db.executemany(sql, rows).rowcount
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    # runs -------------------------------------------------------------------------------------
    def start_run(self, spec_name: str, spec_hash: str, command: str) -> int:
        with self._transaction():
            cur = self.db.execute(
                "INSERT INTO runs (spec_name, spec_hash, command, started_at, status) VALUES (?, ?, ?, ?, 'running')",
                (spec_name, spec_hash, command, time.time()),
            )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, stats: dict[str, Any]) -> None:
        self._write(
            "UPDATE runs SET finished_at = ?, status = ?, stats = ? WHERE id = ?",
            [(time.time(), status, _dumps(stats), run_id)],
        )

    def last_run(self, spec_name: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT spec_hash, command, status FROM runs WHERE spec_name = ? ORDER BY id DESC LIMIT 1",
            (spec_name,),
        ).fetchone()
        return dict(zip(("spec_hash", "command", "status"), row, strict=True)) if row else None

    def runs(self, spec_name: str) -> list[dict[str, Any]]:
        """Every command run on this spec, oldest first: what the report's timeline shows."""
        rows = self.db.execute(
            "SELECT command, started_at, finished_at, status FROM runs WHERE spec_name = ? ORDER BY id", (spec_name,)
        )
        return [dict(zip(("command", "started_at", "finished_at", "status"), r, strict=True)) for r in rows]

    def attempt_errors(self, spec_name: str) -> dict[str, int]:
        """Failed attempts by kind (rate_limited, timeout, rejected, ...), retried or not."""
        rows = self.db.execute(
            "SELECT a.error_kind, COUNT(*) FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.spec_name = ? AND a.error_kind IS NOT NULL GROUP BY a.error_kind ORDER BY 2 DESC, 1",
            (spec_name,),
        )
        return dict(rows.fetchall())

    def rejection_reasons(self, spec_name: str, limit: int = 10) -> list[tuple[str, int]]:
        """Why answers were rejected (and re-asked), commonest first: what "rejected 18" was."""
        rows = self.db.execute(
            "SELECT a.error, COUNT(*) FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.spec_name = ? AND a.error_kind = 'rejected' GROUP BY a.error ORDER BY 2 DESC, 1 LIMIT ?",
            (spec_name, limit),
        )
        return [(str(error or ""), count) for error, count in rows]

    def cut_off(self, spec_name: str, reason: str) -> dict[str, tuple[int, int]]:
        """Per category: answers (choices) cut off at max tokens, of all answers received. A cut-off
        answer is rejected with ``reason`` and asked again; of several choices a cut-off one is left
        out of a kept answer: both count."""
        counts: dict[str, list[int]] = {}
        for category, cut, total in self.db.execute(
            "SELECT r.category, SUM(a.error = ?), COUNT(*) FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.spec_name = ? AND a.error_kind = 'rejected' GROUP BY r.category",
            (reason, spec_name),
        ):
            counts.setdefault(category, [0, 0])
            counts[category][0] += int(cut or 0)
            counts[category][1] += int(total)
        for category, reasons in self.db.execute(
            "SELECT r.category, p.finish_reasons FROM requests r JOIN responses p ON p.id = r.response_id "
            "WHERE r.spec_name = ? AND r.current = 1 AND r.status = 'ok'",
            (spec_name,),
        ):
            listed = fastjson.loads(reasons or "null") or [None]
            counts.setdefault(category, [0, 0])
            counts[category][0] += sum(1 for f in listed if f == "length")
            counts[category][1] += len(listed)
        return {category: (cut, total) for category, (cut, total) in counts.items()}

    def save_spec(self, spec_name: str, spec_hash: str, path: str, text: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO specs VALUES (?, ?, ?, ?, ?)", [(spec_name, spec_hash, path, text, time.time())]
        )

    def saved_specs(self) -> list[tuple[str, str, str]]:
        """(name, path, text) of every spec run into this store, most recent first."""
        return list(self.db.execute("SELECT spec_name, path, text FROM specs ORDER BY saved_at DESC"))

    def models(self, spec_name: str) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT p.model FROM responses p JOIN requests r ON r.response_id = p.id "
            "WHERE r.spec_name = ? AND p.model IS NOT NULL ORDER BY p.model",
            (spec_name,),
        )
        return [r[0] for r in rows]

    # cells and rounds -------------------------------------------------------------------------
    def save_cells(self, spec_name: str, cells: Iterable[Any]) -> None:
        self.save_cell_rows(cell_row(spec_name, c) for c in cells)

    def save_cell_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Cells as :func:`cell_row` gives them."""
        self._write("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)", rows)

    def wants(self, spec_name: str, round_: int) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT cell_key, want FROM rounds WHERE spec_name = ? AND round = ?", (spec_name, round_)
        )
        return dict(rows.fetchall())

    def set_wants(self, spec_name: str, round_: int, wants: dict[str, int]) -> None:
        self._write(
            "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?)",
            ((spec_name, key, round_, want) for key, want in wants.items()),
        )

    def rounds(self, spec_name: str) -> list[int]:
        rows = self.db.execute("SELECT DISTINCT round FROM rounds WHERE spec_name = ? ORDER BY round", (spec_name,))
        return [r[0] for r in rows]

    # requests ---------------------------------------------------------------------------------
    def replan(self, spec_name: str, step_index: int, round_: int, requests: Iterable[PlannedRequest],
               drops: list[FanoutDrop] | None = None, parent_step: int | None = None) -> int:
        """Make ``requests`` the current plan of one step and round, in one transaction.

        Ids include the request's content, so a changed template makes new rows; rows of an
        older plan stay in the store (paid answers are never deleted) but leave the plan. Planning
        the same thing twice (a resumed run) changes nothing. Returns how many requests are planned.
        ``drops``: filled while ``requests`` is consumed with the previous step's items that were
        not planned because they repeat an earlier item of their cell; they replace the earlier
        record of that step (``parent_step``, default the one before) and round.
        """
        planned = 0
        blobs: dict[str, str] = {}

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal planned
            for r in requests:
                planned += 1
                yield request_row(r, blobs)

        try:
            with self._transaction():
                self.db.execute(
                    "UPDATE requests SET current = 0 WHERE spec_name = ? AND step_index = ? AND round = ?",
                    (spec_name, step_index, round_),
                )
                self.db.executemany(_PLAN_INSERT, rows())
                self.db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", blobs.items())
                if drops is not None:
                    parent = step_index - 1 if parent_step is None else parent_step
                    self.db.execute(
                        "DELETE FROM fanout_drops WHERE spec_name = ? AND step_index = ? AND round = ?",
                        (spec_name, parent, round_),
                    )
                    self.db.executemany(
                        "INSERT OR REPLACE INTO fanout_drops VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        ((spec_name, parent, round_, d.request_id, d.item_index, d.category, d.duplicate_of,
                          d.reason) for d in drops),
                    )
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc
        return planned

    def add_plan_rows(self, rows: list[tuple[Any, ...]], blobs: dict[str, str]) -> int:
        """Add requests (their rows, as :func:`request_row` builds them, and the ``blobs`` those
        name) to the current plan of their step without retiring the rest of it: a grid too big
        to plan before sending is planned a slice at a time (after ``replan`` with no requests
        retired the old plan). Returns how many were added."""
        self._write("INSERT OR IGNORE INTO blobs VALUES (?, ?)", blobs.items())  # before the rows using them
        self._write(_PLAN_INSERT, rows)
        return len(rows)

    def planned_rows(self, spec_name: str, step_index: int, *, below_round: int) -> Iterator[PlannedRow]:
        """The rows earlier rounds planned for a step (what a top-up round must not repeat)."""
        rows = self.db.execute(
            "SELECT cell_key, vars, parent_id, item_index FROM requests "
            "WHERE spec_name = ? AND step_index = ? AND current = 1 AND round < ?",
            (spec_name, step_index, below_round),
        )
        for cell_key, variables, parent_id, item_index in rows:
            yield PlannedRow(cell_key, fastjson.loads(variables), parent_id, item_index)

    def fanout_drops(self, spec_name: str) -> list[FanoutDrop]:
        """Items of the current plan dropped before the next step (repeats, and user lines that fail
        a filter), in lineage order."""
        rows = self.db.execute(
            "SELECT d.request_id, d.item_index, d.category, d.duplicate_of, d.reason, r.cell_key FROM fanout_drops d "
            "JOIN requests r ON r.id = d.request_id "
            "WHERE d.spec_name = ? AND r.current = 1 AND r.status = 'ok' ORDER BY r.ord, d.item_index",
            (spec_name,),
        )
        return [FanoutDrop(*row) for row in rows]

    def _unpack(self, text: str) -> dict[str, Any]:
        """A stored body with its blobs put back (a few distinct prompts: cached by hash)."""
        body: dict[str, Any] = fastjson.loads(text)
        if '"$blob"' not in text:
            return body
        for message in body["messages"]:
            content = message.get("content")
            if isinstance(content, dict) and "$blob" in content:
                digest = content["$blob"]
                if digest not in self._blob_cache:
                    if len(self._blob_cache) >= 64:
                        self._blob_cache.clear()
                    row = self.db.execute("SELECT text FROM blobs WHERE hash = ?", (digest,)).fetchone()
                    self._blob_cache[digest] = row[0]
                message["content"] = self._blob_cache[digest]
        return body

    def serve_from_cache(self, spec_name: str, step_index: int) -> int:
        """Mark not-done requests whose content-keyed answer is already stored: nothing to pay.
        Each takes the newest answer for its cache key and keeps it, whatever is asked later."""
        # every answer is the answer of a request of its cache key (m012), the newest the largest id
        newest = "SELECT MAX(o.response_id) FROM requests o WHERE o.cache_key = requests.cache_key"
        return self._write(
            f"UPDATE requests SET status = 'ok', error = NULL, updated_at = ?, response_id = ({newest}) "
            "WHERE spec_name = ? AND step_index = ? AND status IN ('pending', 'failed') AND current = 1 "
            f"AND ({newest}) IS NOT NULL",
            [(time.time(), spec_name, step_index)],
        )

    def forget_answers(self, spec_name: str, step_index: int) -> int:
        """``--no-cache``: make every request of the step pending again (its answer is re-paid).
        The answers it used stay stored, and so does every other plan's choice of answer."""
        return self._write(
            "UPDATE requests SET status = 'pending' WHERE spec_name = ? AND step_index = ? AND current = 1",
            [(spec_name, step_index)],
        )

    def _page(self, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """Keyset pagination on ``ord``: short read transactions, bounded memory."""
        last = ""
        while True:
            rows = self.db.execute(sql + " AND r.ord > ? ORDER BY r.ord LIMIT ?", (*params, last, PAGE)).fetchall()
            yield from rows
            if len(rows) < PAGE:
                return
            last = rows[-1][3]

    _COLUMNS = "r.id, r.step_index, r.round, r.ord, r.cell_key, r.category, r.vars, r.body, r.cache_key, r.est_tokens"

    # an identical request earlier in the same plan is sent instead; its answer serves both. Looked up
    # by cache key: left to itself SQLite scans the whole step for every row (20,000 requests: 542 req/s
    # instead of 1,877)
    _LEADER = (
        "AND NOT EXISTS (SELECT 1 FROM requests o INDEXED BY requests_by_cache WHERE o.cache_key = r.cache_key "
        "AND o.spec_name = r.spec_name AND o.step_index = r.step_index AND o.round = r.round AND o.current = 1 "
        "AND o.status != 'ok' "
        "AND o.ord < r.ord)"
    )

    def pending(self, spec_name: str, step_index: int) -> Iterator[StoredRequest]:
        """Requests of a step with no stored success (never sent, interrupted, or failed), one per
        distinct request: identical ones wait for the first one's answer (``record`` shares it)."""
        sql = (
            f"SELECT {self._COLUMNS} FROM requests r WHERE r.spec_name = ? AND r.step_index = ? "
            f"AND r.current = 1 AND r.status IN ('pending', 'failed') {self._LEADER}"
        )
        for row in self._page(sql, (spec_name, step_index)):
            yield StoredRequest(
                row[0], row[1], row[2], row[3], row[4], row[5], fastjson.loads(row[6]), self._unpack(row[7]), row[8],
                row[9],
            )

    def pending_among(self, spec_name: str, step_index: int, ids: Iterable[str]) -> list[tuple[str, int]]:
        """(id, est_tokens) of the requests among ``ids`` that :meth:`pending` would yield, in its
        order: a slice just planned, whose requests the caller holds already, need not have every
        body read back and decoded. Looked up by id, not by place: a request planned by an earlier
        run keeps the ``ord`` it had then, which a grid changed since no longer gives it."""
        found: list[tuple[str, str, int]] = []
        wanted = list(ids)
        for at in range(0, len(wanted), 500):  # under SQLite's limit on a statement's parameters
            part = wanted[at:at + 500]
            # found by id: the unary + keeps SQLite from walking the step's whole pending plan
            # (requests_current) once per 500 ids instead, 20× the time for a 16,000-cell slice
            found += self.db.execute(
                f"SELECT r.ord, r.id, r.est_tokens FROM requests r WHERE r.id IN ({', '.join('?' * len(part))}) "
                f"AND +r.spec_name = ? AND +r.step_index = ? AND +r.current = 1 "
                f"AND +r.status IN ('pending', 'failed') {self._LEADER}",
                (*part, spec_name, step_index),
            ).fetchall()
        found.sort()
        return [(request_id, est_tokens) for _, request_id, est_tokens in found]

    def succeeded(self, spec_name: str, step_index: int, round_: int | None = None) -> Iterator[StoredRequest]:
        """Done requests of a step with their parsed outputs, in lineage order."""
        sql = (
            f"SELECT {self._COLUMNS}, p.outputs FROM requests r JOIN responses p ON p.id = r.response_id "
            "WHERE r.spec_name = ? AND r.step_index = ? AND r.current = 1 AND r.status = 'ok'"
        )
        params: tuple[Any, ...] = (spec_name, step_index)
        if round_ is not None:
            sql += " AND r.round = ?"
            params += (round_,)
        for row in self._page(sql, params):
            yield StoredRequest(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                fastjson.loads(row[6]),
                self._unpack(row[7]),
                row[8],
                row[9],
                fastjson.loads(row[10]),
            )

    def answer_usage(self, ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """Per request id with a stored answer: the prompt and completion tokens and the cost of
        that answer, and ``seconds``, the latency of the request's attempts. Read back from the
        store, so a re-run that sends nothing reports what the answers cost when they were paid."""
        wanted = list(dict.fromkeys(ids))
        usage: dict[str, dict[str, float]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self.db.execute(
                "SELECT r.id, p.prompt_tokens, p.completion_tokens, p.cost, r.latency_ms "
                "FROM requests r JOIN responses p ON p.id = r.response_id "
                f"WHERE r.id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for request_id, prompt, completion, cost, latency in rows:
                usage[request_id] = {"prompt_tokens": prompt or 0, "completion_tokens": completion or 0,
                                     "cost": cost or 0.0, "seconds": (latency or 0.0) / 1000}
        return usage

    def outputs_by_parent(self, spec_name: str, step_index: int) -> Iterator[tuple[str, int, list[Any]]]:
        """Done requests of a step as (parent request, item index, outputs): how a judge's verdict
        finds the answer it judged."""
        sql = (
            "SELECT r.parent_id, r.item_index, p.outputs FROM requests r JOIN responses p ON p.id = r.response_id "
            "WHERE r.spec_name = ? AND r.step_index = ? AND r.current = 1 AND r.status = 'ok'"
        )
        for parent_id, item_index, outputs in self.db.execute(sql, (spec_name, step_index)):
            yield parent_id, item_index, fastjson.loads(outputs)

    def count_pending(self, spec_name: str, step_index: int, round_: int | None = None, *,
                      distinct: bool = True) -> int:
        """Requests of a step (of one round, when given) with no stored success: those ``pending``
        yields (``distinct``), or all of them, identical ones included."""
        sql = ("SELECT COUNT(*) FROM requests r "
               "WHERE r.spec_name = ? AND r.step_index = ? AND r.current = 1 AND r.status IN ('pending', 'failed')")
        params: tuple[Any, ...] = (spec_name, step_index)
        if round_ is not None:
            sql += " AND r.round = ?"
            params += (round_,)
        if distinct:
            sql += " " + self._LEADER
        return int(self.db.execute(sql, params).fetchone()[0])

    def step_ok(self, spec_name: str, step_index: int, round_: int) -> bool:
        """Whether any current request of one step and round has an answer."""
        return self.db.execute(
            "SELECT 1 FROM requests WHERE spec_name = ? AND step_index = ? AND round = ? AND current = 1 "
            "AND status = 'ok' LIMIT 1",
            (spec_name, step_index, round_),
        ).fetchone() is not None

    def failures(self, spec_name: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, step, category, attempts, error FROM requests "
            "WHERE spec_name = ? AND status = 'failed' AND current = 1 ORDER BY step_index, ord",
            (spec_name,),
        )
        return [dict(zip(("id", "step", "category", "attempts", "error"), r, strict=True)) for r in rows]

    # results ----------------------------------------------------------------------------------
    def record(self, results: list[ResultRow]) -> None:
        """Commit a batch of finished requests in one transaction (the single writer).

        A row SQLite cannot take (a lone surrogate, an integer beyond 64 bits, a value of an odd
        type) must not cost the batch: the batch is retried row by row, and the bad row is stored
        with its texts repaired, or else as a failure saying why, so the writer never stops."""
        try:
            self._record(results)
        except _UNSTORABLE as exc:
            if len(results) > 1:
                for result in results:
                    self.record([result])
                return
            try:
                self._record([_repaired(results[0])])
            except _UNSTORABLE:
                self._record([_unstorable(results[0], exc)])

    def _record(self, results: list[ResultRow]) -> None:
        now = time.time()
        try:
            with self._transaction():
                self.db.executemany(
                    "INSERT INTO attempts (request_id, cache_key, number, status_code, error_kind, error, "
                    "latency_ms, prompt_tokens, completion_tokens, cost, raw, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.request_id,
                            r.cache_key,
                            a.number,
                            a.status_code,
                            a.error_kind,
                            a.error,
                            a.latency_ms,
                            a.prompt_tokens,
                            a.completion_tokens,
                            a.cost,
                            a.raw,
                            now,
                        )
                        for r in results
                        for a in r.attempts
                    ],
                )
                # request id -> the answer added for it (append-only); the ids are the ones SQLite
                # would give (max + 1 onwards: this process holds the store's lock), so the answers
                # go in one executemany instead of one statement each
                answer: dict[str, int] = {}
                ok = [r for r in results if r.ok]
                if ok:
                    last = int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM responses").fetchone()[0])
                    answer = {r.request_id: last + i for i, r in enumerate(ok, start=1)}
                    self.db.executemany(
                        "INSERT INTO responses (id, cache_key, model, contents, outputs, finish_reasons, "
                        "prompt_tokens, completion_tokens, cost, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                last + i,
                                r.cache_key,
                                r.model,
                                _dumps(r.contents),
                                _dumps(r.outputs),
                                _dumps(r.finish_reasons),
                                sum(a.prompt_tokens for a in r.attempts),
                                sum(a.completion_tokens for a in r.attempts),
                                sum(a.cost for a in r.attempts),
                                now,
                            )
                            for i, r in enumerate(ok, start=1)
                        ],
                    )
                self.db.executemany(
                    "UPDATE requests SET status = ?, attempts = attempts + ?, error = ?, updated_at = ?, "
                    "response_id = COALESCE(?, response_id), latency_ms = COALESCE(latency_ms, 0) + ? WHERE id = ?",
                    [(_status(r), len(r.attempts), r.error, now, answer.get(r.request_id),
                      sum(a.latency_ms for a in r.attempts), r.request_id)
                     for r in results],
                )
                # identical requests of the same plan that waited for this one share its answer
                self.db.executemany(
                    "UPDATE requests SET status = 'ok', error = NULL, updated_at = ?, response_id = ? "
                    "WHERE cache_key = ? AND current = 1 AND status != 'ok' "
                    "AND spec_name = (SELECT spec_name FROM requests WHERE id = ?)",
                    [(now, answer[r.request_id], r.cache_key, r.request_id) for r in results if r.ok],
                )
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot record results: {exc}") from exc

    def totals(self, spec_name: str | None = None) -> dict[str, Any]:
        where, params = ("WHERE spec_name = ?", (spec_name,)) if spec_name else ("", ())
        current = f"{where} AND current = 1" if where else "WHERE current = 1"
        status = dict(
            self.db.execute(f"SELECT status, COUNT(*) FROM requests {current} GROUP BY status", params).fetchall()
        )
        # an attempt names its request, not its spec: the join finds it by a hashed id, one random
        # probe an attempt (a second at 300,000 attempts), so it is made only when the store
        # holds another spec too (two probes of the plan's index say whether it does)
        others = bool(spec_name) and self.db.execute(
            "SELECT EXISTS(SELECT 1 FROM requests WHERE spec_name < ?1) OR "
            "EXISTS(SELECT 1 FROM requests WHERE spec_name > ?1)", (spec_name,)).fetchone()[0]
        join = "JOIN requests r ON r.id = a.request_id WHERE r.spec_name = ?" if others else ""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(a.prompt_tokens), 0), COALESCE(SUM(a.completion_tokens), 0), "
            f"COALESCE(SUM(a.cost), 0) FROM attempts a {join}",
            params if others else (),
        ).fetchone()
        return {
            "requests": sum(status.values()),
            "ok": status.get("ok", 0),
            "failed": status.get("failed", 0),
            "pending": status.get("pending", 0),
            "attempts": row[0],
            "prompt_tokens": row[1],
            "completion_tokens": row[2],
            "cost": round(row[3], 6),
        }
