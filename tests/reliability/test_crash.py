"""``kill -9`` at several points of ``promptbake run``, then a re-run: the files are byte-identical
to an uninterrupted run's, and no request is paid twice beyond those in flight at the kill."""

from __future__ import annotations

import filecmp
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import cli_env, promptbake, pure_answer, reference_run, statuses, text_spec

HERE = Path(__file__).resolve().parent
SPEC = text_spec(6, 5, 10)  # 300 requests, 30 categories × 10
PLANNED = 300
CONCURRENCY = 6
FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


def run_args(base_url: str, out: str = "out") -> list[str]:
    return ["run", "spec.yaml", "--out", out, "--base-url", base_url, "-q", "--concurrency", str(CONCURRENCY)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the same spec against the same (pure-function) teacher."""
    return reference_run(tmp_path_factory.mktemp("reference"), SPEC, run_args)


def assert_same_files(out: Path, reference: Path) -> None:
    for name in FILES:
        assert filecmp.cmp(out / name, reference / name, shallow=False), name
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    # identical but for the usage counters, which rightly include the attempts of the killed run
    ours.pop("usage"), theirs.pop("usage")
    assert ours == theirs
    assert not list(out.glob(".*.tmp")), "a temp file of the killed build was left behind"


def repaid(server: FakeServer) -> int:
    return sum(n - 1 for n in server.paid_by_hash.values())


def kill_mid_generate(tmp_path: Path, spec: str, after_ok: int, hold: bool) -> FakeServer:
    """``run`` killed once ``after_ok`` answers are stored (``hold``: the server holds every request
    after the ``after_ok``-th, a kill point that a slow machine cannot overshoot), then run again to
    the end. Returns the server, which saw both runs."""
    (tmp_path / "spec.yaml").write_text(spec, encoding="utf-8")
    db = tmp_path / "out" / "promptbake.db"
    gate = threading.Event()
    calls = itertools.count(1)

    def respond(body: dict) -> str:
        if hold and next(calls) > after_ok:
            gate.wait(60)
        return pure_answer(body)

    with FakeServer(responder=respond, latency_ms=(10, 40)).running() as srv:
        try:
            cmd = [sys.executable, "-m", "promptbake", *run_args(srv.base_url)]
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while statuses(db).get("ok", 0) < after_ok and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        finally:
            gate.set()
        before = statuses(db).get("ok", 0)
        assert after_ok <= before < sum(statuses(db).values()), before  # really killed mid-generate
        assert not (tmp_path / "out" / "train.jsonl").exists()

        done = promptbake(*run_args(srv.base_url), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert repaid(srv) <= CONCURRENCY, repaid(srv)  # at most what was in flight at the kill
    return srv


@pytest.mark.parametrize("after_ok, hold", [(40, False), (150, True)])
def test_kill_9_during_generate(tmp_path, reference, after_ok, hold):
    """Killed while answers stream in (``hold=False``: some may be paid but not yet committed), or
    while the server holds every request after the ``after_ok``-th."""
    srv = kill_mid_generate(tmp_path, SPEC, after_ok, hold)
    assert len(srv.paid_by_hash) == PLANNED
    assert statuses(tmp_path / "out" / "promptbake.db") == {"ok": PLANNED}
    assert_same_files(tmp_path / "out", reference)


# 20 cells × 3 dialogues of 2-4 exchanges, each turn one request (see plan/conversation.py)
DIALOGUES = """
name: talks
teacher:
  model: gpt-4o-mini
grid:
  axes:
    x: [x0, x1, x2, x3, x4]
    y: [y0, y1, y2, y3]
  count: 3
category: x
steps:
  - name: talk
    temperature: 1.0
    max_tokens: 50
    conversation:
      turns: {min: 2, max: 4}
      user:
        seed: 3
        messages:
          - {role: system, content: "You are a customer at {{ x }} about {{ y }}."}
          - {role: user, content: "Speak first."}
      assistant:
        seed: 9
        messages:
          - {role: system, content: "You are a rude agent."}
dedupe:
  near: false
split:
  test: 0.2
  seed: 3
"""


def test_kill_9_mid_dialogue_resumes_at_the_next_turn(tmp_path, tmp_path_factory):
    """Killed with every dialogue past its customer's first turn and two thirds past the agent's
    reply: the re-run asks each dialogue's next turn, paying no turn twice beyond those in flight."""
    reference = reference_run(tmp_path_factory.mktemp("dialogues"), DIALOGUES, run_args)
    srv = kill_mid_generate(tmp_path, DIALOGUES, 100, True)
    turns = statuses(tmp_path / "out" / "promptbake.db")
    assert list(turns) == ["ok"] and len(srv.paid_by_hash) == turns["ok"]  # every turn asked, once
    assert_same_files(tmp_path / "out", reference)


@pytest.mark.parametrize("point", ["build", "replace:1", "replace:2", "replace:4"])
def test_kill_9_during_build(tmp_path, reference, point):
    """``build``: generate finished, nothing written; ``replace:N``: killed before the N-th atomic
    rename (1: train.jsonl's temp file complete; 2: train.jsonl in place, test.jsonl not; 4: only
    dropped.jsonl and the manifest missing)."""
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    with FakeServer(responder=pure_answer).running() as srv:
        killed = subprocess.run(
            [sys.executable, str(HERE / "killer.py"), point, "--", *run_args(srv.base_url)],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert not (tmp_path / "out" / "manifest.json").exists()
        done = promptbake(*run_args(srv.base_url), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert repaid(srv) == 0  # generate had finished: the re-run is served from the store
    assert_same_files(tmp_path / "out", reference)
