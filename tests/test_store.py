"""The store's schema migrations: named, append-only, each one all or nothing."""

from __future__ import annotations

import sqlite3

import pytest

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
