"""The ratings store: one SQLite file holding what is rated and every rating, as it is given.

It copies the items (prompt, category) and every source's answer in when a study starts, so the
results and a restarted server need nothing but the file. What each rater was shown (which pair of
sources, which side each was on) is recorded before the page gets it, and ratings are appended,
never rewritten: an undo marks a rating undone. A server killed at any moment restarts with each
rater at the first item they have not rated.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import StoreError
from promptbake.rate.sources import Item, Source
from promptbake.store.migrations import Migrations, migrate

DEFAULT_NAME = "ratings.db"
VERDICTS = ("left", "right", "tie", "both_bad", "skip")


def r001_initial(db: sqlite3.Connection) -> None:
    for statement in (
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)",
        "CREATE TABLE sources (ord INTEGER PRIMARY KEY, name TEXT UNIQUE, path TEXT, kind TEXT, digest TEXT)",
        "CREATE TABLE items (id TEXT PRIMARY KEY, ord INTEGER, category TEXT, prompt TEXT)",
        "CREATE TABLE answers (item TEXT, source TEXT, text TEXT, judge REAL, PRIMARY KEY (item, source))",
        # a unit is one pair of sources on one item; ord is the order units are handed out in
        "CREATE TABLE units (id INTEGER PRIMARY KEY, item TEXT, a TEXT, b TEXT, ord INTEGER)",
        "CREATE TABLE shown (id INTEGER PRIMARY KEY AUTOINCREMENT, rater TEXT, unit INTEGER, left_source TEXT, "
        "right_source TEXT, repeat_of INTEGER, want_repeat INTEGER, created_at REAL)",
        "CREATE INDEX shown_by_rater ON shown (rater, id)",
        "CREATE INDEX shown_by_unit ON shown (unit)",
        "CREATE TABLE ratings (id INTEGER PRIMARY KEY AUTOINCREMENT, shown INTEGER, rater TEXT, verdict TEXT, "
        "comment TEXT, created_at REAL, undone_at REAL)",
        "CREATE INDEX ratings_by_shown ON ratings (shown)",
    ):
        db.execute(statement)


MIGRATIONS: Migrations = [("r001_initial", r001_initial)]


def store_path(path: str | Path) -> Path:
    """RATINGS is the SQLite file, or a directory holding ``ratings.db`` (an existing directory, or
    a path with no suffix)."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / DEFAULT_NAME
    return path


@dataclass(frozen=True)
class Shown:
    """One showing: a unit put before a rater, sides fixed."""

    id: int
    rater: str
    unit: int
    item: str
    left: str
    right: str
    repeat_of: int | None
    want_repeat: bool


@dataclass(frozen=True)
class Rating:
    """A live (not undone) rating with everything the statistics need."""

    id: int
    rater: str
    shown: int
    unit: int
    item: str
    category: str
    a: str  # the unit's sources in their canonical order
    b: str
    left: str
    verdict: str
    comment: str
    repeat_of: int | None
    judge_a: float | None
    judge_b: float | None


class RatingStore:
    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = store_path(path)
        if not create and not self.path.exists():
            raise StoreError(f"{self.path}: no such ratings store; start one with `promptbake rate A B --out "
                             f"{path}`")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            migrate(self.db, MIGRATIONS)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the ratings store: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RatingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    # the study ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM settings")}

    def save_settings(self, values: dict[str, Any]) -> None:
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def sources(self) -> list[dict[str, Any]]:
        return [{"name": n, "path": p, "kind": k, "digest": d}
                for n, p, k, d in self.db.execute("SELECT name, path, kind, digest FROM sources ORDER BY ord")]

    def start(self, sources: list[Source], items: list[Item], units: list[tuple[str, str, str]]) -> None:
        """Record a new study: sources, items, answers and units (item, a, b) in hand-out order."""
        with self.transaction():
            self.db.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?)",
                                [(i, s.name, s.path, s.kind, s.digest()) for i, s in enumerate(sources)])
            self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)",
                                [(it.id, i, it.category, json.dumps(it.prompt, ensure_ascii=False))
                                 for i, it in enumerate(items)])
            self.db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?)",
                                [(it.id, s.name, s.answers[it.id].text, s.answers[it.id].judge)
                                 for it in items for s in sources if it.id in s.answers])
            self.db.executemany("INSERT INTO units (item, a, b, ord) VALUES (?, ?, ?, ?)",
                                [(item, a, b, i) for i, (item, a, b) in enumerate(units)])

    def counts(self) -> tuple[int, int]:
        """(items, units)."""
        items = self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        units = self.db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
        return int(items), int(units)

    def prompt(self, item: str) -> list[dict[str, Any]]:
        row = self.db.execute("SELECT prompt FROM items WHERE id = ?", (item,)).fetchone()
        prompt: list[dict[str, Any]] = json.loads(row[0])
        return prompt

    def answer(self, item: str, source: str) -> str:
        return str(self.db.execute("SELECT text FROM answers WHERE item = ? AND source = ?",
                                   (item, source)).fetchone()[0])

    # showings and ratings -----------------------------------------------------------------------
    _SHOWN = ("SELECT s.id, s.rater, s.unit, u.item, s.left_source, s.right_source, s.repeat_of, s.want_repeat "
              "FROM shown s JOIN units u ON u.id = s.unit")

    def _shown(self, row: tuple[Any, ...]) -> Shown:
        return Shown(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))

    def shown(self, shown_id: int) -> Shown | None:
        row = self.db.execute(f"{self._SHOWN} WHERE s.id = ?", (shown_id,)).fetchone()
        return self._shown(row) if row else None

    def unrated(self, rater: str) -> Shown | None:
        """The rater's earliest showing without a live rating: where they resume."""
        row = self.db.execute(
            f"{self._SHOWN} WHERE s.rater = ? AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.shown = s.id "
            "AND r.undone_at IS NULL) ORDER BY s.id LIMIT 1", (rater,)).fetchone()
        return self._shown(row) if row else None

    def show(self, rater: str, unit: int, left: str, right: str, repeat_of: int | None, want_repeat: bool) -> Shown:
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO shown (rater, unit, left_source, right_source, repeat_of, want_repeat, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (rater, unit, left, right, repeat_of, int(want_repeat), time.time()))
        shown = self.shown(int(cur.lastrowid or 0))
        assert shown is not None
        return shown

    def rate(self, shown: Shown, verdict: str, comment: str) -> bool:
        """Record a rating unless the showing already has a live one (a double key press)."""
        with self.transaction():
            if self.db.execute("SELECT 1 FROM ratings WHERE shown = ? AND undone_at IS NULL", (shown.id,)).fetchone():
                return False
            self.db.execute("INSERT INTO ratings (shown, rater, verdict, comment, created_at) VALUES (?, ?, ?, ?, ?)",
                            (shown.id, shown.rater, verdict, comment, time.time()))
        return True

    def undo(self, rater: str) -> bool:
        """Mark the rater's latest live rating undone; False when there is none."""
        with self.transaction():
            row = self.db.execute("SELECT id FROM ratings WHERE rater = ? AND undone_at IS NULL ORDER BY id DESC "
                                  "LIMIT 1", (rater,)).fetchone()
            if row is None:
                return False
            self.db.execute("UPDATE ratings SET undone_at = ? WHERE id = ?", (time.time(), row[0]))
        return True

    def rated_count(self, rater: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM ratings WHERE rater = ? AND undone_at IS NULL",
                                   (rater,)).fetchone()[0])

    def unrated_count(self, rater: str) -> int:
        return int(self.db.execute(
            "SELECT COUNT(*) FROM shown s WHERE s.rater = ? AND NOT EXISTS (SELECT 1 FROM ratings r WHERE "
            "r.shown = s.id AND r.undone_at IS NULL)", (rater,)).fetchone()[0])

    def unit_sources(self, unit: int) -> tuple[str, str]:
        a, b = self.db.execute("SELECT a, b FROM units WHERE id = ?", (unit,)).fetchone()
        return str(a), str(b)

    def rated_since(self, rater: str, rating_id: int) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM ratings WHERE rater = ? AND undone_at IS NULL AND id > ?",
                                   (rater, rating_id)).fetchone()[0])

    def open_units(self, rater: str, per_unit: int) -> list[int]:
        """Units the rater has not been shown that fewer than ``per_unit`` raters hold (shown and not
        skipped), the most held first so that overlaps fill up, then in hand-out order."""
        rows = self.db.execute(
            """
            SELECT u.id, (SELECT COUNT(DISTINCT s.rater) FROM shown s WHERE s.unit = u.id AND s.repeat_of IS NULL
                          AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.shown = s.id AND r.undone_at IS NULL
                                          AND r.verdict = 'skip')) AS held
            FROM units u
            WHERE NOT EXISTS (SELECT 1 FROM shown s WHERE s.unit = u.id AND s.rater = ?)
            """, (rater,)).fetchall()
        order = dict(self.db.execute("SELECT id, ord FROM units").fetchall())
        return [unit for unit, held in sorted(rows, key=lambda r: (-r[1], order[r[0]])) if held < per_unit]

    def repeat_candidates(self, rater: str) -> list[tuple[Shown, int]]:
        """The rater's first showings meant to be repeated, rated (not skipped), not yet repeated:
        (showing, its live rating's id), oldest first."""
        rows = self.db.execute(
            "SELECT s.id, s.rater, s.unit, u.item, s.left_source, s.right_source, s.repeat_of, s.want_repeat, r.id "
            "FROM shown s JOIN units u ON u.id = s.unit JOIN ratings r ON r.shown = s.id "
            "WHERE s.rater = ? AND s.want_repeat = 1 AND s.repeat_of IS NULL AND r.undone_at IS NULL "
            "AND r.verdict != 'skip' AND NOT EXISTS (SELECT 1 FROM shown t WHERE t.repeat_of = s.id) ORDER BY s.id",
            (rater,)).fetchall()
        return [(self._shown(row[:8]), int(row[8])) for row in rows]

    def ratings(self) -> list[Rating]:
        """Every live rating, oldest first."""
        rows = self.db.execute(
            """
            SELECT r.id, r.rater, s.id, u.id, u.item, i.category, u.a, u.b, s.left_source, r.verdict,
                   COALESCE(r.comment, ''), s.repeat_of, ja.judge, jb.judge
            FROM ratings r JOIN shown s ON s.id = r.shown JOIN units u ON u.id = s.unit JOIN items i ON i.id = u.item
            LEFT JOIN answers ja ON ja.item = u.item AND ja.source = u.a
            LEFT JOIN answers jb ON jb.item = u.item AND jb.source = u.b
            WHERE r.undone_at IS NULL ORDER BY r.id
            """).fetchall()
        return [Rating(*row) for row in rows]
