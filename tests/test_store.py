"""The store's schema migrations: named, append-only, each one all or nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.store import migrations
from promptbake.store.db import Store
from promptbake.store.migrations import MIGRATIONS, migrate


def tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_an_old_store_is_upgraded_in_place(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:2])  # a store from before blobs existed
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db) == ["m001_initial", "m002_specs"]
    db.execute("INSERT INTO requests (id, spec_name, step_index) VALUES ('r1', 's', 0)")
    db.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    with Store(path) as store:
        assert "blobs" in tables(store.db)
        assert store.db.execute("SELECT current FROM requests WHERE id = 'r1'").fetchone() == (1,)
        assert migrate(store.db) == []  # nothing left to apply


def test_a_failing_migration_leaves_nothing_half_done(tmp_path, monkeypatch):
    def m999_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m999_broken", m999_broken)])
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    with pytest.raises(RuntimeError, match="boom"):
        migrate(db)
    assert "half" not in tables(db)
    assert "m999_broken" not in {r[0] for r in db.execute("SELECT name FROM _migrations")}
    assert "requests" in tables(db)  # the migrations before it did land


def test_a_store_from_before_append_only_answers_keeps_every_answer_in_use(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:5])  # responses keyed by cache_key alone
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db)
    db.execute("INSERT INTO requests (id, spec_name, step_index, round, ord, cache_key, vars, body, status) "
               "VALUES ('r1', 's', 0, 0, 'a', 'k1', '{}', '{}', 'ok')")
    db.execute("INSERT INTO responses VALUES ('k1', 'm', '[\"hi\"]', '[\"hi\"]', '[\"stop\"]', 1, 1, 0.0, 0)")
    db.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    with Store(path) as store:
        assert [r.outputs for r in store.succeeded("s", 0)] == [["hi"]]
        assert store.db.execute("SELECT response_id FROM requests").fetchone() == (1,)


def test_a_store_from_a_newer_promptbake_is_refused_untouched(tmp_path):
    """A store that holds a migration this version does not know was written by a newer
    promptbake: commands that open it (to write, or to read) refuse in one line, exit 2, and leave
    it as it was."""
    with Store(tmp_path / "s.db") as store:
        store.db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', 0)")
    before = (tmp_path / "s.db").read_bytes()
    write_spec(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    for args in (["generate", "spec.yaml", "--store", "s.db", "--base-url", "http://127.0.0.1:9/v1"],
                 ["build", "s.db", "--out", "out"]):
        done = subprocess.run([sys.executable, "-m", "promptbake", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in done.stderr, done.stderr
        assert "s.db was written by a newer promptbake" in lines[0] and "m999_from_the_future" in lines[0]
        assert (tmp_path / "s.db").read_bytes() == before


def test_a_store_from_before_m012_keeps_its_latencies_and_every_cached_answer(tmp_path, monkeypatch):
    """m012 drops the indexes on an answer's cache key and an attempt's request: latencies move to
    the request's row, and the cache finds answers through requests, so an answer an older store
    left linked to no request (a re-ask that failed) is linked, not paid for again."""
    path = tmp_path / "old.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:11])  # up to m011
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db)
    rows = (("r1", "k1", "ok", 1), ("r2", "k2", "failed", None), ("r3", "k2", "pending", None))
    for rid, key, status, answer in rows:
        db.execute("INSERT INTO requests (id, spec_name, step_index, round, ord, cache_key, vars, body, status, "
                   "response_id) VALUES (?, 's', 0, 0, ?, ?, '{}', '{}', ?, ?)", (rid, rid, key, status, answer))
    for key in ("k1", "k2"):
        db.execute("INSERT INTO responses (cache_key, model, contents, outputs, finish_reasons, prompt_tokens, "
                   "completion_tokens, cost, created_at) VALUES (?, 'm', '[\"hi\"]', '[\"hi\"]', '[\"stop\"]', 1, 1, "
                   "0.5, 0)", (key,))
    for latency in (100.0, 250.0):
        db.execute("INSERT INTO attempts (request_id, cache_key, number, latency_ms) VALUES ('r1', 'k1', 1, ?)",
                   (latency,))
    db.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    with Store(path) as store:
        assert store.answer_usage(["r1"])["r1"]["seconds"] == pytest.approx(0.35)
        assert store.serve_from_cache("s", 0) == 2  # r2 and r3: k2's answer was paid for
        assert dict(store.db.execute("SELECT id, response_id FROM requests WHERE status = 'ok'")) == {
            "r1": 1, "r2": 2, "r3": 2}
        indexed = {r[0] for r in store.db.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'index'")}
        assert not indexed & {"attempts", "responses"}  # an answer's commit appends; no index on a hash to insert into


def test_an_answers_seconds_are_the_latency_of_every_attempt_it_took(tmp_path):
    """What ``answer_usage`` reports as an answer's seconds (eval rows, study): the attempts of every
    run that asked for it, a failed run's and the answering run's, as the attempts table holds them."""
    from promptbake.store.db import AttemptRow, ResultRow

    with Store(tmp_path / "s.db") as store:
        store.db.execute("INSERT INTO requests (id, spec_name, step_index, round, ord, cache_key, vars, body) "
                         "VALUES ('r1', 's', 0, 0, 'a', 'k1', '{}', '{}')")
        failed = AttemptRow(1, 500, "http_500", "HTTP 500", 120.0, 0, 0, 0.0, None)
        store.record([ResultRow("r1", "k1", False, [failed, failed], error="gave up")])
        answered = AttemptRow(1, 200, None, None, 30.0, 5, 7, 0.25, None)
        store.record([ResultRow("r1", "k1", True, [failed, answered], model="m", contents=["hi"], outputs=["hi"],
                                finish_reasons=["stop"])])
        usage = store.answer_usage(["r1"])["r1"]
        assert usage["seconds"] == pytest.approx(0.39)
        total = store.db.execute("SELECT SUM(latency_ms) FROM attempts WHERE request_id = 'r1'").fetchone()[0]
        assert usage["seconds"] == pytest.approx(total / 1000)


@pytest.mark.parametrize("names", [("mini",), ("alpha", "mini", "zeta")])
def test_totals_count_each_specs_own_attempts(tmp_path, names):
    """A store holding one spec sums its attempts without looking each one's request up; a store
    shared by several keeps each spec's counts apart (specs named before and after it)."""
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        for i, name in enumerate(names):
            text = MINIMAL_SPEC.replace("name: mini", f"name: {name}").replace("count: 2", f"count: {i + 1}")
            spec = write_spec(tmp_path, text, name=f"{name}.yaml")
            result = CliRunner().invoke(cli, ["generate", str(spec), "--store", str(tmp_path / "s.db"),
                                              "--base-url", srv.base_url, "-q"])
            assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.db") as store:
        each = {name: store.totals(name) for name in names}
        everything = store.totals()
        joined = {name: store.db.execute(
            "SELECT COUNT(*), SUM(a.cost) FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.spec_name = ?", (name,)).fetchone() for name in names}
    for name in names:
        assert each[name]["attempts"] == joined[name][0] == each[name]["requests"] > 0
        assert each[name]["cost"] == round(joined[name][1], 6)
    assert sum(t["attempts"] for t in each.values()) == everything["attempts"]
    if len(names) > 1:
        assert len({t["attempts"] for t in each.values()}) == len(names)  # different sizes, told apart
