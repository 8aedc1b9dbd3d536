"""``promptbake study`` (issue 26): nested subsets, a student per size and seed on the frozen test
split, the reference rows, zero re-work on a re-run, resume after ``kill -9``, the dry run, the
report in Chromium, and ``topup --study``.

The students are the tiny random Llama of tinymodel.py (trained a couple of steps, served by the
real local engine, llama.cpp's llama-server), the teacher the loopback stand-in: one study takes
about a minute here. The embedded SmolLM2 study itself (generators/format_study.yaml) is the
README's, measured by hand; here its spec and question bank are checked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import STUDY_SPEC
from helpers import study_respond as respond
from tinymodel import build_tiny_student

pytest.importorskip("trl")
pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

import promptbake
from promptbake.cli.main import cli
from promptbake.curate.sizes import nested_subsets
from promptbake.output import curves
from promptbake.records import Example
from promptbake.workflows.study import Versions, subsets

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SUBJECTS = ("blue", "gold", "green", "red")
SPEC = STUDY_SPEC
SIZES = "0,4,8"
TRAIN = ["--max-steps", "2", "--batch-size", "2", "--save-steps", "1"]


def argv(root: Path, *extra: str) -> list[str]:
    return ["study", str(root / "spec.yaml"), "--sizes", SIZES, "--out", str(root / "study"), "--dataset",
            str(root / "data"), "--student", str(root.parent / "tiny"), "--target", "keys=0.5",
            "--sweep", "temperature=0,1", "-q", *TRAIN, *extra]


def invoke(args: list[str], url: str) -> object:
    result = CliRunner().invoke(cli, [*args, "--base-url", url])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("study")
    if not (base / "tiny").exists():
        build_tiny_student(base / "tiny")
    folder = base / "first"
    folder.mkdir()
    (folder / "spec.yaml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def studied(root) -> tuple[Path, str]:
    """One study run, shared by the tests that read what it wrote."""
    with FakeServer(responder=respond).running() as server:
        result = invoke(argv(root), server.base_url)
    return root, result.output


def lines_of(root: Path) -> list[dict]:
    return curves.read_study(root / "study" / "study.jsonl")


def _examples(category_counts: dict[str, int], prefix: str) -> list[Example]:
    rows = [Example(id=f"{prefix}{c}{i}", category=c, messages=[{"role": "user", "content": f"{c} {i}"}])
            for c, n in category_counts.items() for i in range(n)]
    import random

    random.Random(prefix).shuffle(rows)
    return rows


def test_subsets_are_nested_stratified_and_match_build_sizes_then_extend_over_a_top_up():
    first = _examples({"a": 30, "b": 12, "c": 6}, "x")
    added = _examples({"c": 10, "b": 2}, "y")
    versions = Versions(["train.jsonl"], [first])
    chosen, warnings = subsets(versions, [0, 8, 16, 32, 48, 60])
    assert sorted(chosen) == [8, 16, 32, 48] and "only 48 examples" in warnings[0]
    built, _ = nested_subsets(first, [8, 16, 32, 48])
    for n in (8, 16, 32, 48):  # the same examples, in the same order, as build --sizes writes
        assert [e.id for e in chosen[n]] == [e.id for e in built[n]]
        share = Counter(e.category for e in chosen[n])
        for category, total in Counter(e.category for e in first).items():
            assert abs(share[category] - n * total / len(first)) <= 1  # stratified
    for small, large in ((8, 16), (16, 32), (32, 48)):
        assert {e.id for e in chosen[small]} < {e.id for e in chosen[large]}  # nested
    topped = first + added  # a top-up's train.v2.jsonl: the old examples and the new ones, shuffled
    import random

    random.Random(3).shuffle(topped)
    grown = Versions(["train.jsonl", "train.v2.jsonl"], [first, topped])
    again, _ = subsets(grown, [8, 16, 32, 48, *grown.sizes()])
    assert grown.sizes() == [60] and sorted(again) == [8, 16, 32, 48, 60]
    for n in (8, 16, 32, 48):  # the earlier subsets keep their examples: their students stay valid
        assert {e.id for e in again[n]} == {e.id for e in chosen[n]}
    assert {e.id for e in again[60]} == {e.id for e in topped}
    for n in (8, 16, 32, 48):  # in the same order too: the same training file, byte for byte
        assert [e.id for e in again[n]] == [e.id for e in chosen[n]]


def test_the_study_writes_a_line_per_model_setting_and_category_with_the_reference_rows(studied):
    root, output = studied
    lines = lines_of(root)
    keys = Counter((line["kind"], line["size"], line["seed"]) for line in lines)
    assert keys == {("teacher", None, None): 5, ("prompted", None, None): 10, ("student", 0, None): 10,
                    ("student", 4, 0): 10, ("student", 8, 0): 10}  # four subjects and all (× 2 settings)
    assert {line["category"] for line in lines} == {*SUBJECTS, "all"}
    teacher = {line["category"]: line for line in lines if line["kind"] == "teacher"}
    assert teacher["all"]["n"] == 4 and teacher["all"]["metrics"]["keys"] == 1.0  # its answers are the reference
    assert teacher["all"]["metrics"]["items"] == 1.0 and teacher["all"]["tokens"]["completion"] > 0
    for line in lines:
        assert set(AnswerKeys) <= set(line["metrics"]) and "pass" in line["metrics"]
        assert line["study"] == "tiny_study"
    assert teacher["all"]["setting"] == "default"  # its answers are given, not sampled
    students = [line for line in lines if line["kind"] == "student" and line["category"] == "all"]
    assert [line["setting"] for line in students] == ["temperature=0", "temperature=1"] * 3  # the sweep
    assert [line["settings"] for line in students[:2]] == [{"temperature": 0, "max_tokens": 12},
                                                           {"temperature": 1, "max_tokens": 12}]
    assert all(line["tokens"]["prompt"] > 0 and line["eval_s"] > 0 for line in students)
    trained = {line["size"]: line["train"] for line in students}
    assert trained[0] is None and trained[4]["examples"] == 4 and trained[8]["examples"] == 8
    assert trained[4]["steps"] == trained[8]["steps"] == 2 and trained[4]["tokens"] > 0 and trained[8]["seconds"] > 0
    # the subsets are build's nested train.N.jsonl, and what each student trained on
    data, study = root / "data", root / "study"
    for n in (4, 8):
        assert (study / "subsets" / f"size-{n}" / "train.jsonl").read_text() == (data / f"train.{n}.jsonl").read_text()
    four = set((data / "train.4.jsonl").read_text().splitlines())
    assert four < set((data / "train.8.jsonl").read_text().splitlines())
    # the prompted row asked the untrained student with the teacher's system message; the students without
    import sqlite3

    with sqlite3.connect(study / "eval.db") as db:
        bodies = [(name, json.loads(body)) for name, body in db.execute("SELECT spec_name, body FROM requests")]
    prompted = [b for _, b in bodies if b["messages"][0]["role"] == "system"]
    assert all("Reply with JSON only" in b["messages"][0]["content"] for b in prompted)
    assert len(bodies) == 32 and len({name for name, _ in bodies}) == 3  # size 0 (twice), 4 and 8; 2 settings
    assert len(prompted) == 8
    assert "this run: 2 students trained, 0 found trained" in output
    assert "target keys ≥ 0.5 first reached at:" in output
    assert "best setting by keys: prompted temperature=" in output and "8 examples/0 temperature=" in output
    assert not list((study / "students").glob("*/model.safetensors"))  # only the GGUFs are kept
    assert len(list((study / "students").glob("*/model.gguf"))) == 3


AnswerKeys = ("list", "keys", "values", "correct", "items")


def test_running_the_study_again_trains_nothing_and_sends_nothing(studied):
    root, _ = studied
    study = root / "study"
    before = (study / "study.jsonl").read_bytes()
    ggufs = {p: p.stat().st_mtime_ns for p in (study / "students").glob("*/model.gguf")}
    with FakeServer(responder=respond).running() as server:
        result = invoke(argv(root), server.base_url)
        assert server.count == 0  # the dataset's store answers everything
    assert "this run: 0 students trained, 2 found trained; 32 answers, 32 from the store, 0 sent" in result.output
    assert (study / "study.jsonl").read_bytes() == before  # the same lines, tokens and times included
    assert {p: p.stat().st_mtime_ns for p in (study / "students").glob("*/model.gguf")} == ggufs


def test_the_dry_run_counts_the_work_and_writes_nothing(studied, tmp_path):
    root, _ = studied
    spec = root / "spec.yaml"
    fresh = CliRunner().invoke(cli, ["study", str(spec), "--sizes", "0,4,8", "--seeds", "2", "--out",
                                     str(tmp_path / "s"), "--dataset", str(tmp_path / "d"), "--dry-run"])
    assert fresh.exit_code == 0, fresh.output
    assert "dataset: missing" in fresh.output and "the teacher (gpt-4o-mini) answers 40 requests" in fresh.output
    assert "total: 4 students to train" in fresh.output and "size 8 seed 1: train ~" in fresh.output
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()
    done = CliRunner().invoke(cli, [*argv(root, "--dry-run")])
    assert done.exit_code == 0, done.output
    assert "total: 0 students to train, 0 requests to send" in done.output
    assert "size 4 seed 0: trained, answered" in done.output
    assert "this study's own measurements" in done.output
    more = CliRunner().invoke(cli, [*argv(root, "--dry-run", "--seeds", "2")])
    assert "total: 2 students to train, 16 requests to send" in more.output


def _run(args: list[str], url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "promptbake", *args, "--base-url", url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        if process.poll() is not None:
            out = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"the study ended before {what}: {out[-2000:]}")
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def test_kill_9_while_training_and_while_answering_then_the_same_command_resumes(root, tmp_path):
    work = tmp_path / "k"
    work.mkdir()
    (work / "spec.yaml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    args = [*argv(work), "--max-steps", "6"]
    args[args.index("--student") + 1] = str(root.parent / "tiny")
    study = work / "study"
    with FakeServer(responder=respond).running() as server:
        first = _run(args, server.base_url)
        checkpoint = "students/size-4-*/checkpoints/checkpoint-*/trainer_state.json"
        _kill_when(first, lambda: bool(list(study.glob(checkpoint))), "a checkpoint of the first student")
        assert not (study / "study.jsonl").exists()
        second = _run(args, server.base_url)
        _kill_when(second, lambda: len(list((study / "evals").glob("size-4-*.jsonl"))) == 1,
                   "the first trained student's answers")
        result = invoke(args, server.base_url)
        assert "this run: 1 students trained, 1 found trained" in result.output
        record = json.loads(next(study.glob("students/size-4-*/train.json")).read_text())
        assert record["resumed_from_step"] >= 1 and record["global_step"] == 6
        keys = {(line["kind"], line["size"], line["category"]) for line in lines_of(work)}
        assert len(keys) == 25
        again = invoke(args, server.base_url)
        assert "this run: 0 students trained, 2 found trained; 32 answers, 32 from the store, 0 sent" in again.output
    assert not list(study.rglob("*.tmp*")) and not list(study.glob("students/*/.model.gguf.*"))


def test_the_report_draws_the_curves_in_chromium(studied):
    from test_report_browser import Page, chromium

    root, _ = studied
    path = root / "study" / "study.html"
    again = CliRunner().invoke(cli, ["report", str(root / "study" / "study.jsonl"), "-o", str(root / "again.html")])
    assert again.exit_code == 0, again.output  # `report` knows a study file by its lines
    assert (root / "again.html").read_text() == path.read_text()
    with chromium() as browser:
        page = Page(browser, path)
        page.check_loaded()
        assert page.plots == {"curves"}
        text = page.page.inner_text("main")
        assert "Learning curves" in text and "When is the target reached?" in text and "Marginal gain" in text
        assert "teacher" in text and "prompted" in text and "student, 8 examples" in text
        assert len(page.visible_rows()) == 36  # every answer: the teacher's 4, and 4 models × 4 prompts × 2 settings
        page.page.fill("#search", "size-8 temperature=1")
        assert len(page.visible_rows()) == 4
        assert "Best setting of each model" in text


def _study_file(path: Path, values: dict[str, list[tuple[int, float]]]) -> Path:
    rows = [{"kind": "student", "size": size, "seed": 0, "setting": "default", "category": category, "n": 5,
             "metrics": {"keys": value}, "dataset": "data"}
            for category, points in values.items() for size, value in points]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_weak_categories_are_the_lowest_and_the_still_rising(tmp_path):
    path = _study_file(tmp_path / "study.jsonl", {"flat_high": [(10, 0.9), (20, 0.9)], "rising": [(10, 0.7),
                       (20, 0.85)], "low": [(10, 0.2), (20, 0.3)], "all": [(10, 0.6), (20, 0.7)]})
    metric, weak = curves.weak_categories(curves.read_study(path))
    assert metric == "keys" and [w.category for w in weak] == ["low", "rising"]
    assert "still rising: +0.15 from 10 to 20" in weak[1].why and "0.30 < 0.8" in weak[0].why
    _, bottom = curves.weak_categories(curves.read_study(path), bottom=1)
    assert [w.category for w in bottom] == ["low"]


def test_topup_study_adds_to_the_weak_categories_and_the_study_adds_the_new_size(studied, tmp_path):
    root, _ = studied
    import shutil

    work = tmp_path / "t"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("*.lock"))
    # the copy's study lines name the original dataset: point them at the copy's
    text = (work / "study" / "study.jsonl").read_text().replace(json.dumps(str(root / "data")),
                                                                  json.dumps(str(work / "data")))
    (work / "study" / "study.jsonl").write_text(text)
    args = argv(work)
    args[args.index("--student") + 1] = str(root.parent / "tiny")
    with FakeServer(responder=respond).running() as server:
        result = CliRunner().invoke(cli, ["topup", str(work / "spec.yaml"), "--study", str(work / "study" /
                                    "study.jsonl"), "--bottom", "2", "--per-category", "2", "--metric", "keys",
                                    "--base-url", server.base_url, "-q"])
        assert result.exit_code == 0, result.output
        assert "among the 2 lowest" in result.output
        manifest = json.loads((work / "data" / "manifest.json").read_text())
        round_ = manifest["topups"][-1]
        assert round_["study"]["metric"] == "keys" and round_["train_examples"] == 20
        assert sum(c["added"] for c in round_["categories"].values()) == 4
        again = invoke(args, server.base_url)
    sizes = {line["size"] for line in lines_of(work) if line["kind"] == "student"}
    assert sizes == {0, 4, 8, 20}
    assert "this run: 1 students trained, 2 found trained" in again.output
    subset = (work / "study" / "subsets" / "size-20" / "train.jsonl").read_text().splitlines()
    assert set(subset) == set((work / "data" / "train.v2.jsonl").read_text().splitlines())


def test_topup_needs_an_eval_file_or_a_study(tmp_path):
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    result = CliRunner().invoke(cli, ["topup", "spec.yaml", "--dataset", "data"])
    assert result.exit_code == 2 and "give --eval FILE or --study study.jsonl" in result.output


def test_the_format_study_bank_is_reproducible_and_every_question_distinct():
    sys.path.insert(0, str(ROOT / "samples" / "format_study"))
    try:
        import make_question_sets
    finally:
        sys.path.pop(0)
    rows = make_question_sets.question_sets()
    committed = (ROOT / "samples" / "format_study" / "question_sets.jsonl").read_text(encoding="utf-8")
    assert committed == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    questions = [q["question"] for r in rows for q in r["questions"]]
    assert len(rows) == 240 and len(questions) == len(set(questions)) == 960
    assert Counter(r["subject"] for r in rows) == {s: 60 for s in ("arithmetic", "units", "calendar", "words")}
    positions = Counter(q["answer"] for r in rows for q in r["questions"])
    assert set(positions) == {"1", "2", "3", "4"} and min(positions.values()) > 200  # no position favoured
    for row in rows:
        for q in row["questions"]:
            assert len(q["options"]) == len(set(q["options"])) == 4


def test_the_format_study_spec_bakes_the_format_in(tmp_path):
    spec = promptbake.load_spec(ROOT / "generators" / "format_study.yaml")
    assert spec.teacher.kind == "local" and spec.steps[0].json_schema is not None  # the teacher decodes by grammar
    promptbake.expand(spec, tmp_path / "p.jsonl")
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    system, user = first["body"]["messages"]
    assert "JSON only" in system["content"] and "Reply with JSON only" in user["content"]
    assert first["body"]["response_format"]["type"] == "json_object"  # llama.cpp's grammar from the schema
    assert [m.role for m in spec.example.messages] == ["user", "assistant"]  # no system message in training
    estimate = promptbake.estimate(spec)
    assert estimate.cells == 240


def test_curves_take_each_student_at_its_best_setting_with_the_seeds_spread(tmp_path):
    rows = []
    for seed, (cold, warm) in enumerate([(0.2, 0.6), (0.4, 0.5), (0.3, 0.9)]):
        for setting, value in (("temperature=0", cold), ("temperature=1", warm)):
            rows.append({"kind": "student", "size": 20, "seed": seed, "setting": setting, "category": "all",
                         "metrics": {"keys": value, "items": 0.25}})
    rows.append({"kind": "student", "size": 0, "seed": None, "setting": "temperature=0", "category": "all",
                 "metrics": {"keys": 0.0, "items": 0.0}})
    rows.append({"kind": "teacher", "size": None, "seed": None, "setting": "default", "category": "all",
                 "metrics": {"keys": 1.0, "items": 0.3}})
    path = tmp_path / "study.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = curves.read_study(path)
    assert curves.is_study_file(path) and not curves.is_study_file(ROOT / "samples" / "eval_sample.jsonl")
    assert curves.metric_names(lines) == ["keys", "items"]
    best = curves.best_settings(lines, "keys")
    assert [best[("student", 20, s)] for s in range(3)] == ["temperature=1", "temperature=1", "temperature=1"]
    point = curves.curves(lines, "keys")["all"][-1]
    assert (point.size, point.seeds, point.low, point.high) == (20, 3, 0.5, 0.9)
    assert point.mean == pytest.approx(2 / 3)
    assert curves.reached(curves.curves(lines, "keys")["all"], 0.6) == 20
    assert curves.reached(curves.curves(lines, "keys")["all"], 0.95) is None
    gain = curves.gains(curves.curves(lines, "keys"))["all"]
    assert (gain.start, gain.end) == (0, 20) and gain.per_100 == pytest.approx(100 * (2 / 3) / 20)
    assert curves.references(lines, "keys") == {"teacher": {"all": 1.0}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "student", "size": -1, "category": "all", "metrics": {}}\n')
    with pytest.raises(promptbake.PromptbakeError, match=re.escape("bad.jsonl:1: a student line needs 'size'")):
        curves.read_study(bad)


def test_a_student_killed_before_its_first_checkpoint_is_trained_afresh(root, tmp_path):
    """``kill -9`` between ``train`` making the checkpoint folder and writing the run's key leaves
    a folder ``train`` refuses as not its own; the study, whose folder it is, starts it again."""
    from tinymodel import write_dataset

    from promptbake.workflows.study import StudyOptions, train_student

    data = write_dataset(tmp_path / "data")
    folder = tmp_path / "students" / "size-8-seed-0-0123456789"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / ".run.json.12345.tmp").write_text('{"run_')
    options = StudyOptions(sizes=(8,), student=str(root.parent / "tiny"), max_steps=1, batch_size=2)
    figures = train_student(data, folder, options, 0, False, lambda _: None)
    assert figures["steps"] == 1 and figures["trained_now"] and (folder / "model.gguf").is_file()
    assert not (folder / "model.safetensors").exists()  # only the GGUF is kept


def test_models_trained_elsewhere_are_answered_through_the_teachers_server(tmp_path):
    """A hosted study: the base model and a fine-tune named with --trained answer through the
    teacher's server (the stand-in), nothing is trained here, and the dry run prices them."""
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    tuned = "ft:gpt-4o-mini-2024-07-18:acme:fmt:abc123"
    args = ["study", "spec.yaml", "--sizes", "0,4", "--out", "s", "--dataset", "d", "--trained",
            "0=gpt-4o-mini", "--trained", f"4={tuned}", "-q"]
    with FakeServer(responder=respond).running() as server:
        plan = CliRunner().invoke(cli, [*args, "--dry-run", "--base-url", server.base_url])
        assert plan.exit_code == 0, plan.output
        assert f"size 4 seed 0: {tuned}, trained elsewhere; 4 answers, ≤ $0.0" in plan.output
        assert "total: 0 students to train" in plan.output
        result = invoke(args, server.base_url)
        models = Counter(body["model"] for body in server.bodies)
    lines = curves.read_study(tmp_path / "s" / "study.jsonl")
    students = {line["size"]: line for line in lines if line["kind"] == "student" and line["category"] == "all"}
    assert students[4]["model"] == tuned and students[4]["train"] is None
    assert students[4]["metrics"]["keys"] == 1.0  # the stand-in answers right, whoever is asked
    assert students[4]["cost"] > 0 and students[0]["model"] == "gpt-4o-mini"
    assert not (tmp_path / "s" / "students").exists()  # nothing trained or converted here
    assert "this run: 0 students trained, 0 found trained" in result.output
    assert models[tuned] == 4 and models["gpt-4o-mini"] >= 40 + 4 + 4  # the dataset, size 0, prompted
