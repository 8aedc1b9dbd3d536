"""The README's rating table is what the committed ratings say: `promptbake rate --results` run on
samples/quick_ratings/ratings.db (the teacher's test answers of the quick sample against the trained
student's, rated blind on the page) prints exactly the block the README shows, and the store rates
the committed answers, every item, as the README says it was made."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from click.testing import CliRunner

from promptbake.cli.main import cli
from promptbake.rate.store import RatingStore

ROOT = Path(__file__).parent.parent
RATED = ROOT / "samples" / "quick_ratings"
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Blind rating: people judge", 1)[1].split("\n## ")[0]


def results(store: Path, *extra: str) -> str:
    out = CliRunner().invoke(cli, ["rate", "--results", str(store), *extra])
    assert out.exit_code == 0, out.output
    return out.output


def test_the_readme_table_is_rate_results_of_the_committed_store(tmp_path):
    committed = RATED / "ratings.db"
    before = hashlib.sha256(committed.read_bytes()).hexdigest()
    shutil.copy(committed, tmp_path / "ratings.db")
    printed = results(tmp_path / "ratings.db")
    assert f"```\n{printed}```" in SECTION, printed
    # the committed results file is the same output, and reading results leaves the store as it was
    assert (RATED / "results.txt").read_text(encoding="utf-8") == printed
    assert results(committed) == printed
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == before


def test_the_store_rates_the_committed_answers_every_item_as_the_readme_says(tmp_path):
    shutil.copy(RATED / "ratings.db", tmp_path / "ratings.db")
    with RatingStore(tmp_path / "ratings.db") as store:
        sources = [s["name"] for s in store.sources()]
        items = [row[0] for row in store.db.execute("SELECT id FROM items ORDER BY ord")]
        answers = {(i, s): store.answer(i, s) for i in items for s in sources}
        ratings = store.ratings()
        settings = store.settings()
    assert sources == ["teacher", "student"]
    teacher = [json.loads(line)["messages"][-1]["content"] for line in (ROOT / "samples/quick/test.jsonl").open()]
    student = {row["id"]: row["output"] for row in map(json.loads, (RATED / "student.jsonl").open())}
    assert [answers[i, "teacher"] for i in items] == teacher
    assert {i: answers[i, "student"] for i in items} == student
    # every item rated once, and once more sides swapped (--repeat-share 1), none skipped
    first = [r for r in ratings if r.repeat_of is None]
    assert sorted(r.item for r in first) == sorted(items)
    assert sorted(r.item for r in ratings if r.repeat_of is not None) == sorted(items)
    assert all(r.verdict != "skip" for r in ratings)
    summary = json.loads(results(tmp_path / "ratings.db", "--json"))
    assert summary["raters"] == ["helper-r"] and summary["ratings"] == 2 * len(items)
    stated = re.search(r"`--seed (\d+) --repeat-share 1`", SECTION)
    assert stated and int(stated.group(1)) == settings["seed"] and settings["repeat_share"] == 1
    assert f"{len(items)} test items" in SECTION


def test_the_quick_start_table_shows_the_rated_students_answers():
    """The quick start's eval table and pass count are of the student that was rated: a retrained
    student (new answers) needs both sections redone."""
    quick = README.split("**Then train the student on it**", 1)[1].split("`--teacher local` starts", 1)[0]
    table = quick.split("| customer (test split) |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    student = [json.loads(line) for line in (RATED / "student.jsonl").open()]
    assert [r[0].lstrip("| ") for r in rows] == [s["prompt"][-1]["content"] for s in student]
    for row, answer in zip(rows, student, strict=True):
        assert row[2].split(" (")[0].rstrip(" |…").rstrip(" …") in answer["output"]
    assert f"The student passes **{sum(s['pass'] for s in student)} of {len(student)}**" in quick
