"""A grid too big to plan before sending: step 0 is planned a slice of cells at a time while the
pool sends, so a 10^8-cell grid asks its first questions at once, and a small grid streamed the
same way stores exactly what an unstreamed run would."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from fakeserver import FakeServer, Fault
from relkit import cli_env, pure_answer, statuses, text_spec

from promptbake.errors import TemplateError
from promptbake.specification.models import load_spec
from promptbake.store.db import Store
from promptbake.teacher import ahead
from promptbake.teacher import generate as generation
from promptbake.teacher.config import Teacher
from promptbake.teacher.generate import GenerateOptions
from promptbake.workflows.pipeline import generate


def test_a_streamed_grid_plans_sends_and_resumes_like_a_whole_one(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "STREAM_CELLS", 10)
    monkeypatch.setattr(generation, "STREAM_CHUNK", 7)
    monkeypatch.setattr(generation, "STREAM_CHUNK_MAX", 10)  # 30 cells: slices of 7, 10, 10 and 3
    slices: list[int] = []
    add_plan_rows = Store.add_plan_rows

    def counted(store: Store, rows: list, blobs: dict) -> int:
        slices.append(len(rows))
        return add_plan_rows(store, rows, blobs)

    monkeypatch.setattr(Store, "add_plan_rows", counted)
    (tmp_path / "spec.yaml").write_text(text_spec(6, 5, 2), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    with FakeServer(responder=pure_answer, latency_ms=(0, 5)).running() as srv:
        report = generate(spec, tmp_path / "s.db", Teacher(base_url=srv.base_url, concurrency=4),
                          GenerateOptions(progress=False))
        assert slices == [14, 20, 20, 6]  # 2 requests a cell: each slice twice the last, at most the cap
        assert srv.count == 60 and not srv.paid_twice()
        step = report.generate.steps[0]
        assert (step.planned, step.sent, step.ok) == (60, 60, 60)
        assert statuses(tmp_path / "s.db") == {"ok": 60}
        with closing(sqlite3.connect(tmp_path / "s.db")) as con:
            assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 30
        # re-run: the stream re-plans the same requests, all answered: nothing is sent
        report = generate(spec, tmp_path / "s.db", Teacher(base_url=srv.base_url),
                          GenerateOptions(progress=False))
        assert srv.count == 60
        assert report.generate.steps[0].planned == 60 and report.generate.steps[0].sent == 0
    assert statuses(tmp_path / "s.db") == {"ok": 60}


@pytest.mark.parametrize("xs", ["[xa, xb, xc, x0, x1, x2]", "[x2]"], ids=["grown in front", "cut in front"])
def test_a_streamed_grid_changed_since_resends_what_failed(tmp_path, monkeypatch, xs):
    """A failed request keeps the place (``ord``) its first run planned it at. When the grid has
    changed since, the re-run plans it at another place, in another slice: it must still be sent,
    once (it was sent at its old place, or not at all when the grid lost cells in front of it)."""
    monkeypatch.setattr(generation, "STREAM_CELLS", 2)
    monkeypatch.setattr(generation, "STREAM_CHUNK", 2)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(text_spec(3, 3, 1), encoding="utf-8")  # x0..x2 × y0..y2: 9 requests

    def x2_fails(body: dict) -> str | Fault:
        return Fault("400") if "x2 and" in body["messages"][-1]["content"] else pure_answer(body)

    with FakeServer(responder=x2_fails).running() as srv:
        report = generate(load_spec(spec_path), tmp_path / "s.db", Teacher(base_url=srv.base_url, concurrency=1),
                          GenerateOptions(progress=False))
        assert (report.generate.steps[0].ok, report.generate.steps[0].failed) == (6, 3)
    spec_path.write_text(text_spec(3, 3, 1).replace("[x0, x1, x2]", xs), encoding="utf-8")
    with FakeServer(responder=pure_answer).running() as srv:
        report = generate(load_spec(spec_path), tmp_path / "s.db", Teacher(base_url=srv.base_url, concurrency=1),
                          GenerateOptions(progress=False))
        sent = sorted(body["messages"][-1]["content"] for body in srv.bodies)
    new = 9 if xs.startswith("[xa") else 0
    assert len(sent) == new + 3 and sum("x2 and" in text for text in sent) == 3 and len(set(sent)) == len(sent)
    assert statuses(tmp_path / "s.db") == {"ok": new + (6 if new else 0) + 3}


def test_a_100_million_cell_grid_sends_its_first_requests_before_planning_the_rest(tmp_path):
    """generate on 10^8 cells: requests reach the server while the store holds only the slices
    planned so far (planning everything first would take hours and 10^8 rows)."""
    axes = "\n".join(f"    a{i}: [{', '.join(f'v{j}' for j in range(100))}]" for i in range(4))
    text = text_spec(2, 2, 1).replace("    x: [x0, x1]\n    y: [y0, y1]", axes).replace("category: x", "category: a0")
    (tmp_path / "spec.yaml").write_text(text.replace("{{ x }} and {{ y }}", "{{ a0 }} {{ a1 }} {{ a2 }} {{ a3 }}"),
                                        encoding="utf-8")
    with FakeServer(responder=pure_answer, latency_ms=20).running() as srv:
        child = subprocess.Popen([sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db",
                                  "--base-url", srv.base_url, "-q", "--concurrency", "8"],
                                 cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120  # a bound against hanging, not a speed claim
            while srv.count < 200 and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert srv.count >= 200, (srv.count, child.poll())
            helpers = _children(child.pid)  # the process planning the next slices
            assert len(helpers) == 1, helpers
        finally:
            child.kill()
            child.wait()
        # killed with the run (kill -9), the helper sees its stdin close and stops
        while Path(f"/proc/{helpers[0]}").exists() and time.monotonic() < deadline:
            state = Path(f"/proc/{helpers[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":  # gone, waiting for init to reap it
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{helpers[0]}").exists() or state == "Z"
    with closing(sqlite3.connect(tmp_path / "s.db")) as con:
        cells = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        planned = con.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert 0 < cells < 100_000 and 0 < planned < 100_000, (cells, planned)


def _planned(db: Path) -> tuple[list[tuple], list[tuple]]:
    """The plan a run stored: every request row (without timestamps) and every cell row."""
    with closing(sqlite3.connect(db)) as con:
        requests = con.execute("SELECT id, step, round, ord, cell_key, category, vars, body, cache_key, est_tokens, "
                               "status, attempts FROM requests ORDER BY id").fetchall()
        cells = con.execute("SELECT * FROM cells ORDER BY key").fetchall()
    return requests, cells


def _streamed(monkeypatch, helper: bool) -> None:
    monkeypatch.setattr(generation, "STREAM_CELLS", 10)
    monkeypatch.setattr(generation, "STREAM_CHUNK", 7)
    monkeypatch.setattr(generation, "STREAM_CHUNK_MAX", 10)
    monkeypatch.setattr(generation, "PLAN_AHEAD_CELLS", 10 if helper else 10**9)
    monkeypatch.setattr(ahead, "READY_WAIT", 60.0)  # the helper takes over at the first slice's end


def _counting(monkeypatch) -> list[int]:
    """Sizes of the slices planned in this process."""
    here: list[int] = []
    plan_slice = ahead.plan_slice

    def counted(planner, chunk):
        here.append(len(chunk))
        return plan_slice(planner, chunk)

    monkeypatch.setattr(ahead, "plan_slice", counted)
    return here


def test_a_helper_process_plans_a_big_grid_exactly_as_this_process_would(tmp_path, monkeypatch):
    """Over PLAN_AHEAD_CELLS cells, the slices after the first are planned by a helper process
    on another core: the store ends with the very rows (ids, bodies, order, token estimates,
    cells) that planning here stores, each request sent once."""
    (tmp_path / "spec.yaml").write_text(text_spec(6, 5, 2), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    plans = {}
    for helper in (False, True):
        _streamed(monkeypatch, helper)
        here = _counting(monkeypatch)
        db = tmp_path / f"{helper}.db"
        with FakeServer(responder=pure_answer, latency_ms=(0, 5)).running() as srv:
            report = generate(spec, db, Teacher(base_url=srv.base_url, concurrency=4), GenerateOptions(progress=False))
            assert srv.count == 60 and not srv.paid_twice()
        assert report.generate.steps[0].planned == 60
        assert here == ([7] if helper else [7, 10, 10, 3])  # the helper planned 10, 10 and 3 cells
        plans[helper] = _planned(db)
    assert plans[True] == plans[False]
    assert len(plans[True][0]) == 60 and len(plans[True][1]) == 30


def test_a_planning_helper_that_dies_leaves_the_rest_to_this_process(tmp_path, monkeypatch):
    (tmp_path / "spec.yaml").write_text(text_spec(6, 5, 2), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    _streamed(monkeypatch, helper=False)
    with FakeServer(responder=pure_answer).running() as srv:
        generate(spec, tmp_path / "whole.db", Teacher(base_url=srv.base_url), GenerateOptions(progress=False))
    _streamed(monkeypatch, helper=True)
    here = _counting(monkeypatch)
    receive = ahead.Helper.next

    def dies(helper: ahead.Helper):
        got = receive(helper)
        helper.proc.kill()  # after its first slice
        helper.proc.wait()
        assert helper.proc.stdout is not None
        helper.proc.stdout.close()  # and what it wrote after that is lost with it
        return got

    monkeypatch.setattr(ahead.Helper, "next", dies)
    notices: list[str] = []
    with FakeServer(responder=pure_answer, latency_ms=(0, 5)).running() as srv:
        report = generate(spec, tmp_path / "s.db", Teacher(base_url=srv.base_url, concurrency=4),
                          GenerateOptions(progress=False, notice=notices.append))
        assert srv.count == 60 and not srv.paid_twice()
    assert report.generate.steps[0].planned == report.generate.steps[0].ok == 60
    said = [n for n in notices if "planning helper stopped" in n]
    assert len(said) == 1 and "planning in this process from cell" in said[0], notices
    assert here[0] == 7 and sum(here) < 30  # the helper planned at least one slice before it died
    assert _planned(tmp_path / "s.db") == _planned(tmp_path / "whole.db")


def test_a_template_error_in_the_helper_is_the_runs_error(tmp_path, monkeypatch):
    """A row whose template fails, planned in the helper, stops the run with the error planning
    it here gives (what was planned before it stays stored)."""
    fails = "{{ x }} and {{ y }}{% if x == 'x4' %}{{ nope }}{% endif %}."
    text = text_spec(6, 5, 1).replace("{{ x }} and {{ y }}.", fails, 1)
    (tmp_path / "spec.yaml").write_text(text, encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    errors = {}
    for helper in (False, True):
        _streamed(monkeypatch, helper)
        here = _counting(monkeypatch)
        with FakeServer(responder=pure_answer).running() as srv, pytest.raises(TemplateError) as caught:
            generate(spec, tmp_path / f"{helper}.db", Teacher(base_url=srv.base_url), GenerateOptions(progress=False))
        errors[helper] = str(caught.value)
        assert here == ([7] if helper else [7, 10, 10])  # x4's cells are in the third slice
        assert sum(statuses(tmp_path / f"{helper}.db").values()) == 17  # the slices before it stay planned
    assert errors[True] == errors[False] and "nope" in errors[True]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("how", ["cannot start", "dies at once", "another promptbake", "dies when told to start"])
def test_a_grid_whose_helper_never_plans_is_planned_here(tmp_path, monkeypatch, how):
    """A helper that cannot start, dies before it is ready, or would import another promptbake
    than the run's (other code would plan other rows) leaves the grid to this process."""
    (tmp_path / "spec.yaml").write_text(text_spec(6, 5, 2), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    _streamed(monkeypatch, helper=True)
    here = _counting(monkeypatch)
    start = ahead.Helper.__init__

    def broken(helper: ahead.Helper, setup: ahead.Setup) -> None:
        if how == "cannot start":
            raise OSError("Resource temporarily unavailable")
        if how == "another promptbake":
            setup.origin = "/elsewhere/promptbake"
        start(helper, setup)
        if how == "dies at once":
            helper.proc.kill()
            helper.proc.wait()

    monkeypatch.setattr(ahead.Helper, "__init__", broken)
    told = ahead.Helper.start

    def dies(helper: ahead.Helper, at: int, first: int, most: int) -> bool:
        if how == "dies when told to start":
            helper.proc.kill()
            helper.proc.wait()
        return told(helper, at, first, most)

    monkeypatch.setattr(ahead.Helper, "start", dies)
    notices: list[str] = []
    with FakeServer(responder=pure_answer).running() as srv:
        report = generate(spec, tmp_path / "s.db", Teacher(base_url=srv.base_url), GenerateOptions(
            progress=False, notice=notices.append))
        assert srv.count == 60 and not srv.paid_twice()
    assert report.generate.steps[0].ok == 60 and here == [7, 10, 10, 3]
    said = [n for n in notices if n.startswith("planning in this process")]
    assert len(said) == 1, notices
    assert {"cannot start": "could not start (Resource temporarily unavailable)",
            "dies at once": "it stopped before it was ready",
            "another promptbake": "from /elsewhere/promptbake",
            "dies when told to start": "it stopped as it was told where to start"}[how] in said[0]
