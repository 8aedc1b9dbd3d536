"""topup: weak-category selection, and generation into train.vN.jsonl on a built dataset."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

import promptbake
from promptbake.cli.main import cli
from promptbake.errors import DataFileError, InputError
from promptbake.output.eval_results import load_eval
from promptbake.plan.expand import Cell
from promptbake.specification.models import load_spec
from promptbake.teacher.config import Teacher
from promptbake.teacher.generate import GenerateOptions
from promptbake.workflows import pipeline
from promptbake.workflows.topup import plan_cells, weak_categories

# the mood in the user turn lets a fake student answer differently per category
TAGGED_SPEC = MINIMAL_SPEC.replace('      content: "{{ ask }}"\n    - role: assistant',
                                   '      content: "({{ mood }}) {{ ask }}"\n    - role: assistant')


def build(directory: Path, base_url: str, text: str = MINIMAL_SPEC) -> Path:
    spec_path = write_spec(directory, text)
    pipeline.run(load_spec(spec_path), directory / "data", teacher=Teacher(base_url=base_url),
                 options=GenerateOptions(progress=False))
    return spec_path


def write_eval(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def topup(spec: Path, eval_path: Path, base_url: str, *extra: str):
    return CliRunner().invoke(cli, ["topup", str(spec), "--eval", str(eval_path), "--dataset", "data",
                                    "--base-url", base_url, "-q", *extra])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines(path)]


ANGRY_WEAK = [{"category": "angry", "pass": False}, {"category": "angry", "pass": True},
              {"category": "calm", "pass": True}]


# --- selection ---------------------------------------------------------------------------------


def test_weak_by_pass_rate_threshold_and_bottom_k(tmp_path):
    rows = [{"category": "a", "pass": p} for p in (True, True, False, False)]
    rows += [{"category": "b", "pass": True}] * 4 + [{"category": "c", "pass": p} for p in (True, False, False, False)]
    rows += [{"category": "b", "pass": None, "error": "HTTP 500"}]  # unscored: skipped
    scores = load_eval(write_eval(tmp_path / "e.jsonl", rows))
    assert scores["b"].n == 4 and scores["a"].pass_rate == 0.5
    metric, weak = weak_categories(scores)
    assert metric == "pass" and [s.category for s in weak] == ["c", "a"]  # below 0.8, worst first
    assert [s.category for s in weak_categories(scores, threshold=0.3)[1]] == ["c"]
    assert [s.category for s in weak_categories(scores, bottom=2)[1]] == ["c", "a"]
    assert weak_categories(scores, threshold=0.1)[1] == []
    with pytest.raises(InputError, match="not both"):
        weak_categories(scores, threshold=0.5, bottom=1)
    with pytest.raises(InputError, match="no score values"):
        weak_categories(scores, metric="score")


def test_weak_by_mean_score_when_the_file_has_only_scores(tmp_path):
    rows = [{"category": "a", "score": 0.9}, {"category": "b", "score": 0.2}, {"category": "b", "score": 0.6},
            {"category": "c", "score": 0.6}]
    scores = load_eval(write_eval(tmp_path / "e.jsonl", rows))
    metric, weak = weak_categories(scores, threshold=0.7)
    assert metric == "score" and [(s.category, s.mean_score) for s in weak] == [("b", 0.4), ("c", 0.6)]
    assert [s.category for s in weak_categories(scores, bottom=1)[1]] == ["b"]
    both = load_eval(write_eval(tmp_path / "f.jsonl", [{"category": "a", "pass": False, "score": 0.9},
                                                       {"category": "b", "pass": True, "score": 0.1}]))
    assert [s.category for s in weak_categories(both, bottom=1)[1]] == ["a"]
    assert [s.category for s in weak_categories(both, metric="score", bottom=1)[1]] == ["b"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"category": "a", "pass": "yes"}\n', r"e.jsonl:1: 'pass' must be"),
    ('{"category": "a", "pass": true}\n{"pass": true}\n', r"e.jsonl:2: no 'category'"),
    ('{"category": "a", "score": "high"}\n', r"e.jsonl:1: 'score' must be a number"),
    ('{"category": "a", "output": "x"}\n', "no scored lines"),
    ("not json\n", r"e.jsonl:1: not valid JSON"),
])
def test_bad_eval_files_name_the_line(tmp_path, content, message):
    (tmp_path / "e.jsonl").write_text(content)
    with pytest.raises(DataFileError, match=message):
        load_eval(tmp_path / "e.jsonl")


def test_plan_spreads_a_category_over_its_cells():
    cells = [Cell(i, f"k{i}", {"i": i}, "a" if i < 4 else "b", 2) for i in range(6)]
    groups = plan_cells(cells, ["a"], 3, 1)
    assert list(groups) == [1] and len(groups[1]) == 3 and {c.category for c in groups[1]} == {"a"}
    assert {k: len(v) for k, v in plan_cells(cells, ["a", "b"], 10, 1).items()} == {3: 4, 5: 2}
    chosen = {tuple(c.key for c in plan_cells(cells, ["a"], 2, r)[1]) for r in range(1, 9)}
    assert len(chosen) > 1  # each round picks its own cells


# --- end to end ------------------------------------------------------------------------------------


def test_topup_adds_to_weak_categories_only_and_never_touches_test(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
        data = tmp_path / "data"
        before = {name: (data / name).read_bytes() for name in ("test.jsonl", "train.jsonl", "metadata.jsonl")}
        sent = srv.count
        eval_path = write_eval(tmp_path / "eval.jsonl", ANGRY_WEAK)
        result = topup(spec, eval_path, srv.base_url, "--per-category", "3")
        assert result.exit_code == 0, result.output
        new_bodies = srv.bodies[sent:]
    asks = [b["messages"][0]["content"] for b in new_bodies if b["messages"][0]["role"] == "user"]
    assert asks and all("angry" in ask for ask in asks)
    assert {name: (data / name).read_bytes() for name in before} == before  # test and round 1 untouched
    old, v2 = lines(data / "train.jsonl"), lines(data / "train.v2.jsonl")
    assert len(v2) == len(old) + 3 and not Counter(old) - Counter(v2)
    meta = jsonl(data / "metadata.v2.jsonl")
    assert [m["split"] for m in meta] == ["train"] * 9 + ["test"] * 2
    old_ids = {m["id"] for m in jsonl(data / "metadata.jsonl")}
    added = [m for m in meta if m["id"] not in old_ids]
    assert len(added) == 3 and {m["category"] for m in added} == {"angry"}
    assert {m["cell"]["topup_round"] for m in added} == {1}
    users = Counter(json.loads(line)["messages"][0]["content"] for line in v2 + lines(data / "test.jsonl"))
    assert max(users.values()) == 1  # nothing repeats the existing train or test data
    (entry,) = json.loads((data / "manifest.json").read_text())["topups"]
    assert entry["round"] == 1 and entry["train"] == "train.v2.jsonl" and entry["from"] == "train.jsonl"
    assert entry["eval"]["sha256"] == hashlib.sha256(eval_path.read_bytes()).hexdigest()
    assert entry["eval"]["metric"] == "pass" and entry["eval"]["threshold"] == 0.8
    assert entry["categories"] == {"angry": {"n": 2, "pass_rate": 0.5, "mean_score": None, "wanted": 3,
                                             "generated": 4, "duplicates": 0, "added": 3}}
    assert "angry" in result.output and "train.v2.jsonl" in result.output


def test_second_round_builds_v3_on_v2_with_fresh_requests(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
        data = tmp_path / "data"
        test_bytes = (data / "test.jsonl").read_bytes()
        first_eval = write_eval(tmp_path / "e1.jsonl", ANGRY_WEAK)
        assert topup(spec, first_eval, srv.base_url, "--per-category", "2").exit_code == 0
        second = write_eval(tmp_path / "e2.jsonl", [{"category": "calm", "score": 0.1},
                                                    {"category": "angry", "score": 0.9}])
        result = topup(spec, second, srv.base_url, "--bottom", "1", "--per-category", "2")
        assert result.exit_code == 0, result.output
        again = topup(spec, first_eval, srv.base_url, "--per-category", "1", "--store", "other.db")
        assert again.exit_code == 0, again.output
        assert "e1.jsonl already drove round 1" in again.output
    assert len(lines(data / "train.v4.jsonl")) == len(lines(data / "train.v3.jsonl")) + 1
    v2, v3 = lines(data / "train.v2.jsonl"), lines(data / "train.v3.jsonl")
    assert len(v3) == len(v2) + 2 and not Counter(v2) - Counter(v3)
    assert (data / "test.jsonl").read_bytes() == test_bytes
    first, again, _ = json.loads((data / "manifest.json").read_text())["topups"]
    assert first["train"] == "train.v2.jsonl"
    assert (again["round"], again["train"], again["from"]) == (2, "train.v3.jsonl", "train.v2.jsonl")
    assert list(again["categories"]) == ["calm"] and again["eval"]["bottom"] == 1
    assert again["eval"]["metric"] == "score" and again["eval"]["path"].endswith("e2.jsonl")
    with sqlite3.connect(data / "promptbake.db") as db:
        keys = dict(db.execute("SELECT spec_name, group_concat(cache_key) FROM requests GROUP BY spec_name"))
    assert set(keys) == {"mini", "mini@topup1", "mini@topup2"}
    sets = [set(v.split(",")) for v in keys.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_new_examples_that_repeat_the_dataset_are_dropped(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
    data = tmp_path / "data"
    # a fresh responder starts its counter again: the teacher now repeats round 1 word for word
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = topup(spec, write_eval(tmp_path / "e.jsonl", ANGRY_WEAK), srv.base_url, "--per-category", "2")
        assert result.exit_code == 0, result.output
    assert "only 0 of 2 new examples were distinct" in result.output
    assert Counter(lines(data / "train.v2.jsonl")) == Counter(lines(data / "train.jsonl"))
    (entry,) = json.loads((data / "manifest.json").read_text())["topups"]
    angry = entry["categories"]["angry"]
    assert entry["added"] == 0 and angry["duplicates"] == angry["generated"] > 0


def test_our_eval_drives_the_topup(tmp_path):
    generator = list_then_reply_responder()

    def respond(body: dict) -> str:
        if body["model"] == "student":  # fails every angry example, passes calm ones
            return "no" if "(angry)" in body["messages"][-1]["content"] else "yes"
        return generator(body)

    with FakeServer(responder=respond).running() as srv:
        spec = build(tmp_path, srv.base_url, TAGGED_SPEC)
        result = CliRunner().invoke(cli, ["eval", "--data", "data/test.jsonl", "--out", "eval.jsonl", "--model",
                                          "student", "--base-url", srv.base_url, "--check-regex", "^yes", "-q"])
        assert result.exit_code == 0, result.output
        result = topup(spec, tmp_path / "eval.jsonl", srv.base_url, "--per-category", "2")
        assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "data" / "manifest.json").read_text())["topups"]
    assert entry["categories"]["angry"]["pass_rate"] == 0.0 and entry["categories"]["angry"]["added"] == 2
    assert list(entry["categories"]) == ["angry"]


def test_nothing_weak_writes_nothing(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
        manifest = (tmp_path / "data" / "manifest.json").read_bytes()
        sent = srv.count
        result = topup(spec, write_eval(tmp_path / "e.jsonl", ANGRY_WEAK), srv.base_url, "--threshold", "0.5")
        assert result.exit_code == 0, result.output
        assert srv.count == sent
    assert "no category is weak" in result.output
    assert not (tmp_path / "data" / "train.v2.jsonl").exists()
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest


def test_categories_the_spec_does_not_have_are_an_input_error(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
        result = topup(spec, write_eval(tmp_path / "e.jsonl", [{"category": "all", "pass": False}]), srv.base_url)
    assert result.exit_code == 2
    assert "none of the weak categories (all)" in result.output
    assert "metadata" in result.output


def topped_up(tmp_path: Path, base_url: str, per_category: int) -> tuple[Path, Path, bytes]:
    """A built dataset after one top-up round for 'angry': (spec, directory, train.v2.jsonl's bytes)."""
    spec = build(tmp_path, base_url)
    result = topup(spec, write_eval(tmp_path / "e1.jsonl", ANGRY_WEAK), base_url, "--per-category", str(per_category))
    assert result.exit_code == 0, result.output
    return spec, tmp_path / "data", (tmp_path / "data" / "train.v2.jsonl").read_bytes()


def test_a_rebuild_keeps_the_topup_history_and_the_next_round_continues_it(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec, data, v2 = topped_up(tmp_path, srv.base_url, 2)
        rebuilt = CliRunner().invoke(cli, ["build", str(spec), "--out", "data"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert len(json.loads((data / "manifest.json").read_text())["topups"]) == 1  # the rebuild kept it
        result = topup(spec, write_eval(tmp_path / "e2.jsonl", ANGRY_WEAK), srv.base_url, "--per-category", "1")
        assert result.exit_code == 0, result.output
    assert (data / "train.v2.jsonl").read_bytes() == v2  # not overwritten
    assert len(lines(data / "train.v3.jsonl")) == len(v2.splitlines()) + 1
    assert [t["train"] for t in json.loads((data / "manifest.json").read_text())["topups"]] == [
        "train.v2.jsonl", "train.v3.jsonl"]


@pytest.mark.parametrize("rejected", ["1|[89]|1[0-9]", "[89]|1[0-9]"])
def test_a_rebuild_under_new_filters_starts_a_new_topup_lineage(tmp_path, rejected):
    """Issue 24: a rebuild that changes the data (or only the spec, when the new filter rejects
    just top-up rows) used to leave train.v2.jsonl as the training set, with rows the new filter
    rejects and a sidecar that no longer matched test.jsonl."""
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec, data, v2 = topped_up(tmp_path, srv.base_url, 3)
        # customers 0-7 came from the build, 8 and up from the top-up: both kinds, or top-up rows only
        pattern = rf"Customer (?:{rejected}) says"
        spec.write_text(spec.read_text() + f"filters:\n  - not_regex: '{pattern}'\n")
        rebuilt = CliRunner().invoke(cli, ["build", str(spec), "--out", "data", "--no-report"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "train.jsonl is the training set again" in rebuilt.output
        assert not (data / "train.v2.jsonl").exists() and not (data / "metadata.v2.jsonl").exists()
        assert (data / "topups" / "superseded.1" / "train.v2.jsonl").read_bytes() == v2  # moved, not lost
        manifest = json.loads((data / "manifest.json").read_text())
        assert "topups" not in manifest
        (old,) = manifest["superseded_topups"]
        assert old["directory"] == "topups/superseded.1" and [t["train"] for t in old["topups"]] == ["train.v2.jsonl"]
        dataset = promptbake.Dataset.load(data)
        assert dataset.train_file == "train.jsonl"
        assert dataset.train and not [e for e in dataset.train if re.search(pattern, e.messages[-1]["content"])]
        assert [len(e.messages) for e in dataset.train]  # read without a sidecar mismatch
        exported = CliRunner().invoke(cli, ["export", "data", "--format", "messages", "--out", "exp"])
        assert exported.exit_code == 0, exported.output
        assert len(lines(tmp_path / "exp" / "messages" / "train.jsonl")) == len(lines(data / "train.jsonl"))
        again = topup(spec, write_eval(tmp_path / "e2.jsonl", ANGRY_WEAK), srv.base_url, "--per-category", "1")
        assert again.exit_code == 0, again.output
    (entry,) = json.loads((data / "manifest.json").read_text())["topups"]
    assert (entry["round"], entry["from"], entry["train"]) == (1, "train.jsonl", "train.v2.jsonl")
    assert not Counter(lines(data / "train.jsonl")) - Counter(lines(data / "train.v2.jsonl"))


@pytest.mark.parametrize("fmt", ["messages", "hf"])
def test_export_writes_the_latest_train_version_or_a_chosen_one(tmp_path, fmt):
    if fmt == "hf":
        pytest.importorskip("datasets")
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        spec = build(tmp_path, srv.base_url)
        assert topup(spec, write_eval(tmp_path / "e.jsonl", ANGRY_WEAK), srv.base_url, "--per-category", "3"
                     ).exit_code == 0
    data = tmp_path / "data"
    latest = CliRunner().invoke(cli, ["export", "data", "--format", fmt, "--out", "latest"])
    assert latest.exit_code == 0, latest.output
    assert "train is train.v2.jsonl of data" in latest.output
    assert promptbake.export("data", fmt, "api", train_version=1).train == "train.jsonl"  # what the CLI prints
    first = CliRunner().invoke(cli, ["export", "data", "--format", fmt, "--out", "first", "--train-version", "1"])
    assert first.exit_code == 0, first.output
    if fmt == "hf":
        import datasets

        sizes = {d: len(datasets.load_from_disk(str(tmp_path / d / "hf" / "dataset"))["train"])
                 for d in ("latest", "first")}
    else:
        sizes = {d: len(lines(tmp_path / d / fmt / "train.jsonl")) for d in ("latest", "first")}
    assert sizes == {"latest": len(lines(data / "train.v2.jsonl")), "first": len(lines(data / "train.jsonl"))}
    missing = CliRunner().invoke(cli, ["export", "data", "--format", fmt, "--out", "x", "--train-version", "5"])
    assert missing.exit_code == 2 and "train.v5.jsonl" in missing.output


def deterministic_teacher(body: dict) -> str:
    """A teacher whose answer is a pure function of the request's bytes (seed included): a list
    of ``N`` utterances for "Give N ..." prompts, a reply otherwise."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    user = body["messages"][-1]["content"]
    if body["messages"][0]["role"] != "system":
        count = int(user.split()[1])
        return json.dumps([f"Complaint {digest[4 * i:4 * i + 8]} number {i}." for i in range(count)])
    return f"Ugh. Fine. {digest[:12]}"


def test_a_topup_asks_a_deterministic_teacher_in_new_bytes_and_gets_new_examples(tmp_path):
    with FakeServer(responder=deterministic_teacher).running() as srv:
        spec = build(tmp_path, srv.base_url)
        first = {json.dumps(b, sort_keys=True) for b in srv.bodies}
        sent = srv.count
        # 4 for the 2 angry cells: 2 each, as the dataset's own run asked (the same prompts)
        result = topup(spec, write_eval(tmp_path / "e.jsonl", ANGRY_WEAK), srv.base_url, "--per-category", "4")
        assert result.exit_code == 0, result.output
        asked = [json.dumps(b, sort_keys=True) for b in srv.bodies[sent:]]
    assert asked and not first & set(asked)  # the step sets no seed: the round's seed makes the bytes new
    (entry,) = json.loads((tmp_path / "data" / "manifest.json").read_text())["topups"]
    assert entry["added"] == 4 and entry["categories"]["angry"]["duplicates"] == 0
