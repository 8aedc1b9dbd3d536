"""Named, append-only schema migrations (the llm pattern): never make users delete their store.

Add a new ``@migration`` function at the end; never edit or reorder an applied one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def unknown(db: sqlite3.Connection) -> list[str]:
    """Migrations the store has applied that this version does not know: a newer promptbake
    wrote it. Reads only, so a store it refuses is left as it was."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone() is None:
        return []
    known = {name for name, _ in MIGRATIONS}
    return [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY applied_at") if name not in known]


Migrations = list[tuple[str, Callable[[sqlite3.Connection], None]]]


def migrate(db: sqlite3.Connection, migrations: Migrations | None = None) -> list[str]:
    """Apply pending migrations in order (the store's, or another database's list, such as the
    ratings store's); returns the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for name, fn in MIGRATIONS if migrations is None else migrations:
        if name in done:
            continue
        # the connection autocommits, so BEGIN explicitly: a migration and its record land together
        db.execute("BEGIN")
        try:
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _statements(db: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement (``executescript`` would COMMIT the transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    _statements(
        db,
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY, spec_name TEXT, spec_hash TEXT, command TEXT,
            started_at REAL, finished_at REAL, status TEXT, stats TEXT
        );
        CREATE TABLE cells (
            spec_name TEXT, key TEXT, ord INTEGER, category TEXT, cell TEXT, count INTEGER,
            PRIMARY KEY (spec_name, key)
        );
        CREATE TABLE rounds (
            spec_name TEXT, cell_key TEXT, round INTEGER, want INTEGER,
            PRIMARY KEY (spec_name, cell_key, round)
        );
        CREATE TABLE requests (
            id TEXT PRIMARY KEY, spec_name TEXT, step TEXT, step_index INTEGER, round INTEGER,
            ord TEXT, cell_key TEXT, category TEXT, parent_id TEXT, item_index INTEGER,
            vars TEXT, body TEXT, cache_key TEXT, est_tokens INTEGER,
            status TEXT DEFAULT 'pending', attempts INTEGER DEFAULT 0, error TEXT, updated_at REAL
        );
        CREATE INDEX requests_by_step ON requests (spec_name, step_index, status, ord);
        CREATE INDEX requests_by_cache ON requests (cache_key);
        CREATE TABLE responses (
            cache_key TEXT PRIMARY KEY, model TEXT, contents TEXT, outputs TEXT,
            finish_reasons TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL,
            created_at REAL
        );
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY, request_id TEXT, cache_key TEXT, number INTEGER,
            status_code INTEGER, error_kind TEXT, error TEXT, latency_ms REAL,
            prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, raw TEXT, created_at REAL
        );
        CREATE INDEX attempts_by_request ON attempts (request_id);
        """
    )


@migration
def m002_specs(db: sqlite3.Connection) -> None:
    # the spec text a run used, so `build STORE` can render examples without the spec file at hand
    db.execute("CREATE TABLE specs (spec_name TEXT PRIMARY KEY, spec_hash TEXT, path TEXT, text TEXT, saved_at REAL)")


@migration
def m003_current_plan(db: sqlite3.Connection) -> None:
    # rows of an older version of a spec stay (they were paid for) but leave the current plan
    db.execute("ALTER TABLE requests ADD COLUMN current INTEGER DEFAULT 1")
    db.execute("CREATE INDEX requests_current ON requests (spec_name, step_index, current, status, ord)")


@migration
def m004_drop_superseded_index(db: sqlite3.Connection) -> None:
    # requests_current (m003) serves every query requests_by_step did; one index less per write
    db.execute("DROP INDEX IF EXISTS requests_by_step")


@migration
def m005_blobs(db: sqlite3.Connection) -> None:
    # long system prompts are stored once by content hash, not in every request body
    db.execute("CREATE TABLE blobs (hash TEXT PRIMARY KEY, text TEXT)")


@migration
def m006_batch_jobs(db: sqlite3.Connection) -> None:
    # batch mode: every provider file id and batch id is recorded the moment it is returned, so a
    # killed run re-attaches to what it submitted instead of uploading or paying for it again
    _statements(
        db,
        """
        CREATE TABLE batch_files (
            id INTEGER PRIMARY KEY, spec_name TEXT, step_index INTEGER, round INTEGER,
            base_url TEXT, name TEXT, lines INTEGER, bytes INTEGER, reserved REAL,
            file_id TEXT, batch_id TEXT, status TEXT, counts TEXT,
            output_file_id TEXT, error_file_id TEXT, errors TEXT,
            created_at REAL, updated_at REAL, collected_at REAL
        );
        CREATE INDEX batch_files_open ON batch_files (spec_name, step_index, round, collected_at);
        CREATE TABLE batch_items (
            file INTEGER, custom_id TEXT, request_id TEXT, PRIMARY KEY (file, request_id)
        );
        """
    )


@migration
def m007_append_only_answers(db: sqlite3.Connection) -> None:
    # A re-asked request (--no-cache) adds an answer instead of replacing the one that other plans
    # (other specs sharing the cache key) were built from; each request records the answer it uses.
    _statements(
        db,
        """
        ALTER TABLE responses RENAME TO responses_m005;
        CREATE TABLE responses (
            id INTEGER PRIMARY KEY, cache_key TEXT, model TEXT, contents TEXT, outputs TEXT,
            finish_reasons TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL,
            created_at REAL
        );
        INSERT INTO responses (cache_key, model, contents, outputs, finish_reasons, prompt_tokens,
            completion_tokens, cost, created_at)
            SELECT cache_key, model, contents, outputs, finish_reasons, prompt_tokens, completion_tokens,
            cost, created_at FROM responses_m005 ORDER BY created_at, cache_key;
        DROP TABLE responses_m005;
        CREATE INDEX responses_by_cache ON responses (cache_key, id);
        ALTER TABLE requests ADD COLUMN response_id INTEGER;
        UPDATE requests SET response_id = (SELECT p.id FROM responses p WHERE p.cache_key = requests.cache_key)
            WHERE status = 'ok'
        """,
    )


@migration
def m008_fanout_drops(db: sqlite3.Connection) -> None:
    # items of a fan-out that exactly repeat an earlier item of their cell: dropped before the next
    # step pays for them, and counted by build as exact duplicates
    db.execute(
        "CREATE TABLE fanout_drops (spec_name TEXT, step_index INTEGER, round INTEGER, request_id TEXT, "
        "item_index INTEGER, category TEXT, duplicate_of TEXT, PRIMARY KEY (spec_name, request_id, item_index))"
    )


@migration
def m009_train_jobs(db: sqlite3.Connection) -> None:
    # hosted fine-tuning: the upload names are written before anything leaves the machine, and each
    # file id and job id the moment the provider returns it, so a re-run re-attaches to its job
    _statements(
        db,
        """
        CREATE TABLE train_jobs (
            id INTEGER PRIMARY KEY, key TEXT, provider TEXT, base_url TEXT, account TEXT,
            api_key_env TEXT, base_model TEXT, train_source TEXT, settings TEXT,
            train_name TEXT, train_file_id TEXT, validation_name TEXT, validation_file_id TEXT,
            job_name TEXT, job_id TEXT, status TEXT, raw_status TEXT, fine_tuned_model TEXT,
            error TEXT, trained_tokens INTEGER, estimate TEXT, created_at REAL, updated_at REAL
        );
        CREATE INDEX train_jobs_by_key ON train_jobs (key, id)
        """,
    )


@migration
def m010_batch_tries(db: sqlite3.Connection) -> None:
    # batch mode, kept across runs: how often each request (custom_id) went into a batch and how its
    # last try failed (a batch the provider refuses is not uploaded again on every run, and a
    # rejected answer is asked again with a new seed); each file's key variable (status and cancel
    # ask each provider with its own key); the max_tokens a line was sent with under --max-cost (an
    # answer without usage is charged the worst case it could have cost)
    _statements(
        db,
        """
        CREATE TABLE batch_tries (
            custom_id TEXT PRIMARY KEY, tries INTEGER, rejections INTEGER, final INTEGER, error TEXT,
            updated_at REAL
        );
        ALTER TABLE batch_files ADD COLUMN api_key_env TEXT;
        ALTER TABLE batch_items ADD COLUMN max_tokens INTEGER
        """,
    )


@migration
def m011_fanout_drop_reason(db: sqlite3.Connection) -> None:
    # items of a fan-out whose user line fails a filter (``role: user``) are dropped before the next
    # step pays for them too: the reason says which filter (NULL: an exact repeat, as before)
    db.execute("ALTER TABLE fanout_drops ADD COLUMN reason TEXT")


@migration
def m012_indexes_in_insertion_order(db: sqlite3.Connection) -> None:
    # Every answer's commit inserted into two indexes on hashes (an answer's cache key, an
    # attempt's request id), so each commit rewrote a page of each per answer: half of what the
    # writer wrote at 100,000 answers. A request's row now carries the latency of its attempts, and
    # the newest answer for a cache key is found through the requests that use it (the requests'
    # cache-key index is written when they are planned, not when they are answered). An answer
    # an older store left to no request (m007 linked only requests that were ok) is linked to the
    # requests of its cache key, so the cache still serves it.
    _statements(
        db,
        """
        ALTER TABLE requests ADD COLUMN latency_ms REAL;
        UPDATE requests SET latency_ms = (SELECT SUM(a.latency_ms) FROM attempts a WHERE a.request_id = requests.id)
            WHERE id IN (SELECT request_id FROM attempts);
        UPDATE requests SET response_id = (SELECT MAX(p.id) FROM responses p WHERE p.cache_key = requests.cache_key)
            WHERE response_id IS NULL AND cache_key IN (SELECT cache_key FROM responses);
        DROP INDEX attempts_by_request;
        DROP INDEX responses_by_cache
        """,
    )
