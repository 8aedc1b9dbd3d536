"""Batch mode against the loopback stand-in's Batch API: the same dataset as online mode, each
request paid once, failures retried, expired/cancelled/failed batches finished, limits and budget."""

from __future__ import annotations

import asyncio
import filecmp
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer, Fault
from helpers import MINIMAL_SPEC, list_then_reply_responder, pure_grid_responder, write_spec

import promptbake
from promptbake.cli.main import cli
from promptbake.specification.models import Prices
from promptbake.teacher.pricing import PriceTable

ROOT = Path(__file__).parent.parent
STEP0, STEP1 = 4, 8  # MINIMAL_SPEC: 4 list requests, then 8 replies
FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def batch_args(srv: FakeServer, *extra: str) -> list[str]:
    return ["--base-url", srv.base_url, "-q", "--batch", "--batch-poll", "0.2", *extra]


def statuses(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT status, COUNT(*) FROM requests WHERE current = 1 GROUP BY status"))


def uploaded_lines(srv: FakeServer) -> list[list[dict]]:
    """The requests of every accepted input file, as the provider received them."""
    return [[json.loads(line) for line in srv.files[file_id][1].splitlines()] for file_id in srv.uploads]


def test_run_batch_gives_the_dataset_online_mode_gives(tmp_path):
    """The acceptance run: the 1,100-request rude-agent spec through the Batch API builds
    byte-identical files to an online run against the same (pure-function) teacher, sends no
    online request, pays each request once, and prices it at half."""
    spec = str(ROOT / "generators" / "rude_agent.yaml")
    with FakeServer(responder=pure_grid_responder()).running() as srv:
        online = invoke("run", spec, "--out", "online", "--base-url", srv.base_url, "-q")
        assert online.exit_code == 0, online.output
        online_requests = srv.count
    with FakeServer(responder=pure_grid_responder()).running() as srv:
        result = invoke("run", spec, "--out", "batch", *batch_args(srv))
        assert result.exit_code == 0, result.output
        assert srv.count == 0  # nothing went through /chat/completions
        assert srv.batch_lines == online_requests == 1100
        assert not srv.paid_twice()
        assert [len(f) for f in uploaded_lines(srv)] == [100, 1000]  # one file per step
        assert len(srv.batches) == 2
    for name in FILES:
        assert filecmp.cmp(tmp_path / "online" / name, tmp_path / "batch" / name, shallow=False), name
    assert "batch: 2 files uploaded, 2 batches created, 0 re-attached, 1,100 requests submitted" in result.output
    online_cost = json.loads((tmp_path / "online" / "manifest.json").read_text())["usage"]["cost"]
    batch_cost = json.loads((tmp_path / "batch" / "manifest.json").read_text())["usage"]["cost"]
    assert batch_cost == pytest.approx(online_cost / 2, rel=1e-6)


def test_batch_input_lines_have_the_documented_shape_and_rerun_sends_nothing(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder()).running() as srv:
        assert invoke("generate", str(spec), "--store", "s.db", *batch_args(srv)).exit_code == 0
        for line in uploaded_lines(srv)[0]:
            assert set(line) == {"custom_id", "method", "url", "body"}
            assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
            assert line["body"]["model"] == "gpt-4o-mini"
        again = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert again.exit_code == 0, again.output
        assert len(srv.uploads) == len(srv.batches) == 2  # a re-run finds every answer stored
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


def test_identical_requests_are_submitted_once(tmp_path):
    """Every cell's list holds the same two distinct items (one repeated, which is dropped before
    paying), so the eight planned replies are two distinct requests: two batch lines serve them all."""
    spec = write_spec(tmp_path)

    def respond(body: dict) -> str:
        if body["messages"][0]["role"] != "system":
            return json.dumps(["I want a refund.", "I want a refund.", "Where is the manager?"])
        return "No."

    with FakeServer(responder=respond).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert result.exit_code == 0, result.output
        replies = uploaded_lines(srv)[1]
        custom_ids = [line["custom_id"] for line in replies]
        assert len(custom_ids) == 2 and srv.batch_lines == STEP0 + 2
        assert not srv.paid_twice()
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


def test_identical_requests_across_files_share_one_line(tmp_path):
    """With one request per file, a request identical to one in an already submitted file joins
    that file's answer instead of going out again."""
    spec = write_spec(tmp_path)

    def respond(body: dict) -> str:
        if body["messages"][0]["role"] != "system":
            return json.dumps(["I want a refund.", "Where is the manager?"])
        return "No."

    with FakeServer(responder=respond).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--batch-max-lines", "1"))
        assert result.exit_code == 0, result.output
        assert [len(f) for f in uploaded_lines(srv)] == [1, 1, 1, 1, 1, 1]  # 4 asks, then 2 distinct replies
        assert srv.batch_lines == STEP0 + 2
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


def _flaky(fail_first: set[int], always: set[int]):
    """Number distinct replies as they arrive; fail the ``fail_first`` ones once (a 500) and the
    ``always`` ones every time (a 400)."""
    order: dict[str, int] = {}
    failed: set[int] = set()

    def fail(body: dict):
        if body["messages"][0]["role"] != "system":
            return None
        n = order.setdefault(body["messages"][-1]["content"], len(order))
        if n in always:
            return Fault("400", message="Invalid value for 'messages'.")
        if n in fail_first and n not in failed:
            failed.add(n)
            return Fault("500")
        return None

    return fail


def test_partially_failed_batch_is_retried_in_the_next_batch(tmp_path):
    """Non-200 lines are stored as failures with their reason; the retryable ones (500) go into
    the next batch, the 400s do not (they would fail the same way)."""
    spec = write_spec(tmp_path)
    respond = pure_grid_responder(_flaky(fail_first={0, 1, 2}, always={3, 4}))
    with FakeServer(responder=respond).running() as srv:
        # the 400s stay failed: a shortfall the run reports, and this test accepts
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv), "--allow-shortfall")
        assert result.exit_code == 0, result.output
        assert [len(f) for f in uploaded_lines(srv)] == [STEP0, STEP1, 3]  # the three 500s, once more
        assert srv.count == 0
        assert not srv.paid_twice()
    db = tmp_path / "s.db"
    assert statuses(db) == {"ok": STEP0 + STEP1 - 2, "failed": 2}
    with sqlite3.connect(db) as con:
        errors = {e for (e,) in con.execute("SELECT error FROM requests WHERE status = 'failed'")}
        kinds = dict(con.execute("SELECT error_kind, COUNT(*) FROM attempts WHERE error_kind IS NOT NULL "
                                 "GROUP BY error_kind"))
    assert errors == {"Invalid value for 'messages'."}
    assert kinds == {"http_400": 2, "http_500": 3}


def test_batch_retry_online_sends_failures_through_the_pool(tmp_path):
    spec = write_spec(tmp_path)
    respond = pure_grid_responder(_flaky(fail_first={0, 1, 2}, always=set()))
    with FakeServer(responder=respond).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--batch-retry", "online"))
        assert result.exit_code == 0, result.output
        assert len(srv.batches) == 2  # one per step, no second batch pass
        assert srv.count == 3  # the three failed replies, online
        assert "3 retried online" in result.output
        assert not srv.paid_twice()
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


@pytest.mark.parametrize("end", ["expired:3", "cancelled:3", "failed"])
def test_an_unfinished_batch_keeps_what_completed_and_resubmits_the_rest(tmp_path, end):
    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder(), batch_ends=[end]).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert result.exit_code == 0, result.output
        kept = 0 if end == "failed" else 3
        assert [len(f) for f in uploaded_lines(srv)][:2] == [STEP0, STEP0 - kept]
        assert next(iter(srv.batches.values())).status == end.split(":")[0]
        assert not srv.paid_twice()
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}
    with sqlite3.connect(tmp_path / "s.db") as con:
        reasons = [r for (r,) in con.execute("SELECT error FROM attempts WHERE status_code IS NULL")]
    assert len(reasons) == STEP0 - kept
    assert all(end.split(":")[0] in r for r in reasons), reasons


def test_an_oversized_file_is_refused_with_a_way_out(tmp_path):
    """A provider whose file limit is below ours refuses the upload: one line naming the flag,
    nothing submitted; the same command with --batch-max-lines then completes."""
    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder(), max_file_lines=3).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert result.exit_code == 1
        error = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and "--batch-max-lines" in error[0] and "HTTP 400" in error[0], result.output
        assert srv.uploads == [] and srv.batches == {}
        assert "no batches in this store" in invoke("batch", "status", "s.db").output  # nothing left open
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--batch-max-lines", "3"))
        assert result.exit_code == 0, result.output
        assert [len(f) for f in uploaded_lines(srv)] == [3, 1, 3, 3, 2]
        assert len(srv.batches) == 5
        assert not srv.paid_twice()
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


def test_max_cost_reserves_each_file_worst_case_before_submitting(tmp_path):
    """Each file holds only what the budget covers at its worst case (every max_tokens used):
    with room for 2.5 worst cases, files carry at most two requests; with room for half of one,
    nothing is uploaded and the run stops with the reason."""
    text = MINIMAL_SPEC.replace("parse: list", "parse: list\n    max_tokens: 1000")
    spec = write_spec(tmp_path, text.replace("- name: answer", "- name: answer\n    max_tokens: 1000"))
    worst = PriceTable().batch_cost("gpt-4o-mini", 0, 1000)  # completion tokens dominate the worst case
    with FakeServer(responder=pure_grid_responder()).running() as srv:
        result = invoke("generate", str(spec), "--store", "a.db", *batch_args(srv, "--max-cost", f"{0.5 * worst}"))
        assert result.exit_code == 1, result.output
        assert "--max-cost" in result.output
        assert srv.uploads == []
        result = invoke("generate", str(spec), "--store", "b.db", *batch_args(srv, "--max-cost", f"{2.5 * worst}"))
        assert result.exit_code == 0, result.output
        sizes = [len(f) for f in uploaded_lines(srv)]
        assert max(sizes) == 2 and sum(sizes) == STEP0 + STEP1, sizes
        assert not srv.paid_twice()
    with sqlite3.connect(tmp_path / "b.db") as con:
        spent = con.execute("SELECT SUM(cost) FROM attempts").fetchone()[0]
    assert 0 < spent <= 2.5 * worst
    assert statuses(tmp_path / "b.db") == {"ok": STEP0 + STEP1}


def test_batch_prices_are_half_and_overridable(tmp_path):
    table = PriceTable({"house-model": Prices(input=1.0, output=2.0, batch_input=0.7, batch_output=0.9)})
    assert table.batch_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.075 + 0.30)
    assert table.batch_cost("house-model", 1_000_000, 1_000_000) == pytest.approx(1.6)
    assert table.batch_cost("unknown-model", 10, 10) == 0.0
    dry = invoke("expand", str(ROOT / "generators" / "rude_agent.yaml"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    online = float(dry.output.split("estimated cost ≤ $")[1].split()[0])
    batch = float(dry.output.split("with --batch (Batch API prices): ≤ $")[1].split()[0])
    assert batch == pytest.approx(online / 2, abs=1e-4)


def kill_while_a_batch_is_open(tmp_path: Path, srv: FakeServer) -> Path:
    """``generate --batch`` of the minimal spec into ``s.db``, killed (-9) at the third status check
    of its first batch: the store records one open batch, which ``srv`` has polled twice. Returns
    the spec."""
    import os
    import subprocess
    import sys

    spec = write_spec(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    killed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "reliability" / "killer.py"), "batch-poll:3", "--", "generate",
         str(spec), "--store", "s.db", *batch_args(srv)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    return spec


def test_batch_status_and_cancel_work_on_a_store(tmp_path):
    """A run interrupted while its batch is open: `batch status` shows the provider's view,
    `batch cancel` stops it, and the next run keeps the completed part and re-submits the rest."""
    with FakeServer(responder=pure_grid_responder(), batch_polls=5).running() as srv:
        spec = kill_while_a_batch_is_open(tmp_path, srv)
        status = invoke("batch", "status", "s.db")
        assert status.exit_code == 0, status.output
        assert "batch_0001\tmini step 0 round 0\tin_progress\t" in status.output  # polled once more by status
        cancel = invoke("batch", "cancel", "s.db")
        assert cancel.exit_code == 0, cancel.output
        assert "cancelled 1 open batches" in cancel.output
        done_before = len(next(iter(srv.batches.values())).output)
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert result.exit_code == 0, result.output
        first = next(iter(srv.batches.values()))
        assert first.status == "cancelled" and len(first.output) == done_before < STEP0
        assert [len(f) for f in uploaded_lines(srv)][:2] == [STEP0, STEP0 - done_before]
        assert not srv.paid_twice()
        cached = invoke("batch", "status", "s.db", "--cached")
        assert cached.output.count("collected") == 3, cached.output
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


def test_batch_status_and_cancel_from_python_inside_a_running_loop(tmp_path):
    """A notebook cell: the kernel's loop is running, where a nested asyncio.run raises. The
    blocking calls return the provider's statuses as objects; the async forms are awaitable."""

    async def cell() -> tuple[list, list]:
        asyncio.get_running_loop()
        return promptbake.batch_status("s.db"), promptbake.cancel_batches("s.db")

    with FakeServer(responder=pure_grid_responder(), batch_polls=5).running() as srv:
        kill_while_a_batch_is_open(tmp_path, srv)
        status, cancelled = asyncio.run(cell())
        batch = srv.batches["batch_0001"]
        assert [(f.batch_id, f.status, f.counts, f.collected_at) for f in status] == [
            ("batch_0001", "in_progress", {"total": STEP0, "completed": 2, "failed": 0}, None)]  # polled a 3rd time
        assert [(f.batch_id, f.status) for f in cancelled] == [("batch_0001", "cancelling")]
        assert (batch.status, batch.polls) == ("cancelling", 3)
        cached = asyncio.run(promptbake.batch_status_async("s.db", refresh=False))
        assert [f.status for f in cached] == ["cancelling"] and batch.polls == 3  # the provider was not asked
        fresh = asyncio.run(promptbake.batch_status_async(tmp_path / "s.db"))
        assert [f.status for f in fresh] == ["cancelled"] and batch.polls == 4


def test_local_teacher_is_refused_for_batch_mode(tmp_path):
    result = invoke("generate", str(write_spec(tmp_path)), "--store", "s.db", "--batch", "--teacher", "local")
    assert result.exit_code == 2, result.output
    assert "Batch API" in result.output
    assert not (tmp_path / "s.db").exists()


def test_batch_max_lines_needs_batch(tmp_path):
    result = invoke("generate", str(write_spec(tmp_path)), "--batch-max-lines", "10")
    assert result.exit_code == 2
    assert "--batch-max-lines needs --batch" in result.output


def test_progress_bar_counts_requests_across_open_batches_with_their_status(tmp_path):
    """On a terminal, one bar per step over the requests the open batches completed, with the
    provider's status of each batch and the spend."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder(), batch_polls=3).running() as srv:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen([sys.executable, "-m", "promptbake", "generate", str(spec), "--store", "s.db",
                                 "--base-url", srv.base_url, "--batch", "--batch-poll", "0.2"],
                                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(60) == 0
        os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "ask (round 0):  50%" in screen and "2/4" in screen, screen  # partway, from the provider's counts
    assert "batches: 1 in_progress" in screen and "batches: 1 completed" in screen, screen
    assert "8/8" in screen, screen


def test_top_up_rounds_go_through_batches_too(tmp_path):
    """Duplicates leave cells short: the top-up round is planned and sent as batches as well, and
    every cell ends with its exact count."""
    spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  count: 2", "  count: 6"))
    with FakeServer(responder=list_then_reply_responder(dupe_every=4)).running() as srv:
        result = invoke("run", str(spec), "--out", "out", *batch_args(srv))
        assert result.exit_code == 0, result.output
        assert "round 0: 4 cells short" in result.output
        assert srv.count == 0 and len(srv.batches) >= 4  # two steps in round 0, two in round 1
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        rounds = {r for (r,) in con.execute("SELECT DISTINCT round FROM batch_files")}
    assert rounds >= {0, 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 24


JUDGED = MINIMAL_SPEC + """
judge:
  criteria: "The reply is rude."
  min_score: 4
"""


def judging(respond):
    """``respond``, with a judge that rates every reply 5."""

    def answer(body: dict):
        if "strict judge" in (body["messages"][0].get("content") or ""):
            return json.dumps({"reasoning": "rude enough", "score": 5})
        return respond(body)

    return answer


def test_judge_steps_go_through_batches_too(tmp_path):
    spec = write_spec(tmp_path, JUDGED)
    with FakeServer(responder=judging(pure_grid_responder())).running() as srv:
        result = invoke("run", str(spec), "--out", "out", *batch_args(srv))
        assert result.exit_code == 0, result.output
        assert srv.count == 0
        assert [len(f) for f in uploaded_lines(srv)] == [STEP0, STEP1, STEP1]  # ask, answer, judge
    meta = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == STEP1 and all(m["scores"] == {"judge": 5} for m in meta)


def test_a_grid_planned_as_it_is_sent_goes_through_batches(tmp_path, monkeypatch):
    """A grid over STREAM_CELLS is planned slice by slice while it is sent: in batch mode round 0
    is sent too (once), and no top-up round asks again for what round 0 never asked."""
    from promptbake.teacher import generate

    monkeypatch.setattr(generate, "STREAM_CELLS", 2)
    monkeypatch.setattr(generate, "STREAM_CHUNK", 3)  # 4 cells: two slices
    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder()).running() as srv:
        result = invoke("run", str(spec), "--out", "out", *batch_args(srv))
        assert result.exit_code == 0, result.output
        assert srv.count == 0 and srv.batch_lines == STEP0 + STEP1
        asks, replies = uploaded_lines(srv)
        assert len(asks) == STEP0 and len(replies) == STEP1
        assert all(line["body"]["messages"][0]["content"].startswith("Give 2 things") for line in asks)
        assert not srv.paid_twice()
    assert f"round 0 ask: {STEP0} planned, 0 from cache, {STEP0} sent, {STEP0} ok" in result.output
    assert "round 1" not in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == STEP1


def test_max_cost_caps_batch_bodies_and_charges_answers_without_usage(tmp_path):
    """Under --max-cost a step without max_tokens goes out with the cap the summary names, and an
    answer that comes back without usage is charged that worst case (marked estimated), not $0."""
    from promptbake.plan.planner import DEFAULT_RESERVE

    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder(), usage_mode="omit").running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--max-cost", "5"))
        assert result.exit_code == 0, result.output
        bodies = [line["body"] for lines in uploaded_lines(srv) for line in lines]
    assert len(bodies) == STEP0 + STEP1
    assert {body.get("max_tokens") for body in bodies} == {DEFAULT_RESERVE}
    assert f"sent with max_tokens {DEFAULT_RESERVE}" in result.output
    with sqlite3.connect(tmp_path / "s.db") as con:
        costs = [c for (c,) in con.execute("SELECT cost FROM attempts WHERE status_code = 200")]
    worst = PriceTable().batch_cost("gpt-4o-mini", 0, DEFAULT_RESERVE)
    assert len(costs) == STEP0 + STEP1 and all(c >= worst for c in costs), costs
    assert f"{STEP0 + STEP1} answers came without usage and were charged their worst case" in result.output


def test_batch_files_spread_over_every_endpoint_each_with_its_key(tmp_path, monkeypatch):
    """Two endpoints with their own keys: each gets files (by weight) uploaded with its own key,
    and `batch status` asks each with the key its files were sent with."""
    monkeypatch.setenv("KEY_A", "sk-aaaaaaaaaaaaaaaaaaaa")
    monkeypatch.setenv("KEY_B", "sk-bbbbbbbbbbbbbbbbbbbb")
    with FakeServer(responder=pure_grid_responder()).running() as a, \
            FakeServer(responder=pure_grid_responder()).running() as b:
        fleet = (f"  endpoints:\n    - {{base_url: '{a.base_url}', api_key_env: KEY_A}}\n"
                 f"    - {{base_url: '{b.base_url}', api_key_env: KEY_B}}\n")
        spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  model: gpt-4o-mini\n", "  model: gpt-4o-mini\n" + fleet))
        result = invoke("generate", str(spec), "--store", "s.db", "-q", "--batch", "--batch-poll", "0.2")
        assert result.exit_code == 0, result.output
        assert [len(f) for f in uploaded_lines(a)] == [STEP0 // 2, STEP1 // 2]
        assert [len(f) for f in uploaded_lines(b)] == [STEP0 // 2, STEP1 // 2]
        assert set(a.auth_headers) == {"Bearer sk-aaaaaaaaaaaaaaaaaaaa"}
        assert set(b.auth_headers) == {"Bearer sk-bbbbbbbbbbbbbbbbbbbb"}
        assert a.count == b.count == 0
        status = invoke("batch", "status", "s.db")
        assert status.exit_code == 0, status.output
        assert status.output.count(a.base_url) == status.output.count(b.base_url) == 2
        monkeypatch.delenv("KEY_B")
        result = invoke("generate", str(spec), "--store", "t.db", "--batch")
        assert result.exit_code == 2 and "api_key_env names KEY_B, which is not set" in result.output, result.output
        assert len(a.uploads) == len(b.uploads) == 2  # refused before anything went out
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}


@dataclass
class EchoingServer(FakeServer):
    """A provider that quotes a key back: in a failed batch's errors, and wherever the responder
    puts it (answers, per-line errors)."""

    echo: str = ""

    def _advance(self, batch) -> None:
        super()._advance(batch)
        if batch.errors:
            batch.errors["data"][0]["message"] = f"Invalid batch from key {self.echo[:20]}..."


def test_keys_the_provider_echoes_in_batches_never_reach_the_store(tmp_path, monkeypatch):
    key = "sk-test-" + "0123456789abcdef" * 3
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def respond(body: dict):
        if body["messages"][0]["role"] != "system":
            return None
        if "gym" in body["messages"][-1]["content"] and "calm" in body["messages"][-1]["content"]:
            return Fault("400", message=f"Invalid request for key ...{key[-12:]}")
        return f"Ugh, fine. (served for {key[:14]}...{key[-10:]})"

    spec = write_spec(tmp_path)
    with EchoingServer(responder=pure_grid_responder(respond), batch_ends=["failed"], echo=key).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv), "--allow-shortfall")
        assert result.exit_code == 0, result.output
        assert "failed" in next(iter(srv.batches.values())).status
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*")).decode("utf-8", "replace")
    pieces = {key[i:i + 8] for i in range(len(key) - 7)}
    assert not [p for p in pieces if p in stored or p in result.output]
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert "Invalid batch from key ***" in con.execute("SELECT errors FROM batch_files").fetchone()[0]
        contents = [c for (c,) in con.execute("SELECT contents FROM responses WHERE contents LIKE '%served for%'")]
    assert contents and all("served for ***...***" in c for c in contents)


def test_every_batch_refused_ends_in_one_line_and_is_not_uploaded_again(tmp_path):
    """A provider that refuses every batch at validation: the second identical refusal ends the
    step with one line giving the provider's reason (no traceback); the next run does not upload
    the same requests again, and says why."""
    spec = write_spec(tmp_path)
    with FakeServer(responder=pure_grid_responder(), batch_ends=["failed"] * 20).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "The batch was refused at validation." in errors[0], result.output
        assert "twice in a row" in errors[0]
        assert len(srv.uploads) == 2
        again = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert again.exit_code == 3, again.output
        assert len(srv.uploads) == 2
        assert f"batch: {STEP0} requests of step ask are not sent again" in again.output
        assert "The batch was refused at validation." in again.output


def test_every_line_refused_ends_in_one_line_with_the_reason(tmp_path):
    spec = write_spec(tmp_path)
    refuse = pure_grid_responder(lambda body: Fault("400", message="Invalid value for 'model': no such model."))
    with FakeServer(responder=refuse).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Invalid value for 'model': no such model." in errors[0], result.output
        assert len(srv.uploads) == 1  # a 400 would come back the same: not sent again


@dataclass
class CorruptingServer(FakeServer):
    """A provider whose first output file has one line cut short and one line of garbage."""

    corrupted: bool = False

    def _end(self, batch, status: str) -> None:
        super()._end(batch, status)
        if self.corrupted or not batch.output_file_id:
            return
        self.corrupted = True
        meta, data = self.files[batch.output_file_id]
        lines = data.decode().splitlines()
        lines[1] = lines[1][:len(lines[1]) // 2]  # cut off, its custom_id still readable
        lines[2] = "{not json"
        self.files[batch.output_file_id] = (meta, ("\n".join(lines) + "\n").encode())


def test_unreadable_output_lines_cost_only_their_requests(tmp_path):
    """One output line cut short and one of garbage: every other answer of the file is stored,
    the two requests go into the next batch, and the run says which lines of which file."""
    spec = write_spec(tmp_path)
    with CorruptingServer(responder=pure_grid_responder()).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv))
        assert result.exit_code == 0, result.output
        assert [len(f) for f in uploaded_lines(srv)] == [STEP0, 2, STEP1]
        assert "line 2 of file-" in result.output and "line 3 of file-" in result.output
        assert "2 unreadable output lines" in result.output
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}
    with sqlite3.connect(tmp_path / "s.db") as con:
        errors = [e for (e,) in con.execute("SELECT error FROM attempts WHERE error IS NOT NULL")]
    assert len(errors) == 2 and any("its answer could not be read: line 2 of" in e for e in errors), errors
    assert any("unreadable lines (line 3 of" in e for e in errors), errors


@dataclass
class KeyRecordingServer(FakeServer):
    """Records the Authorization header of every batch status check and cancel."""

    checks: list = None  # type: ignore[assignment]

    async def _batch_get(self, request):
        self.checks = [*(self.checks or []), request.headers.get("Authorization")]
        return await super()._batch_get(request)

    async def _batch_cancel(self, request):
        self.checks = [*(self.checks or []), request.headers.get("Authorization")]
        return await super()._batch_cancel(request)


def test_status_and_cancel_ask_with_the_key_the_batches_were_sent_with(tmp_path, monkeypatch):
    """A spec whose teacher reads its key from MY_KEY: `batch status` and `batch cancel` of its
    store, run without --api-key-env, ask the provider with that key, not OPENAI_API_KEY's."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("MY_KEY", "sk-mine-0123456789abcdef")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-0123456789abcdef")
    spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  model: gpt-4o-mini\n",
                                                     "  model: gpt-4o-mini\n  api_key_env: MY_KEY\n"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    with KeyRecordingServer(responder=pure_grid_responder(), batch_polls=5).running() as srv:
        killed = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "reliability" / "killer.py"), "batch-poll:2", "--", "generate",
             str(spec), "--store", "s.db", *batch_args(srv)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert killed.returncode == -9, killed.stderr
        before = len(srv.checks)
        assert invoke("batch", "status", "s.db").exit_code == 0
        assert invoke("batch", "cancel", "s.db").exit_code == 0
        assert srv.checks[before:] == ["Bearer sk-mine-0123456789abcdef"] * 2
        assert set(srv.auth_headers) == {"Bearer sk-mine-0123456789abcdef"}  # the upload


def test_a_rejected_answer_is_asked_again_with_a_new_seed_in_a_later_run(tmp_path):
    """The step's checks reject an answer; the run ends out of attempts. The next run (more
    attempts) asks again with a new seed, as the online pool would after a rejection, not the
    same bytes, which a deterministic teacher would answer the same way."""
    spec = write_spec(tmp_path)
    lists = pure_grid_responder()

    def respond(body: dict) -> str:
        if body["messages"][0]["role"] != "system" and "seed" not in body:
            return "Sorry, no list today."
        return lists(body)

    with FakeServer(responder=respond).running() as srv:
        first = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--max-attempts", "1"))
        assert first.exit_code == 1, first.output
        again = invoke("generate", str(spec), "--store", "s.db", *batch_args(srv, "--max-attempts", "2"))
        assert again.exit_code == 0, again.output
        asks = uploaded_lines(srv)
        assert ["seed" in line["body"] for line in asks[0] + asks[1]] == [False] * STEP0 + [True] * STEP0
    assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}
