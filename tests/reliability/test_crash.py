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


@pytest.mark.parametrize("after_ok, hold", [(40, False), (150, True)])
def test_kill_9_during_generate(tmp_path, reference, after_ok, hold):
    """Killed while answers stream in (``hold=False``: some may be paid but not yet committed), or
    while the server holds every request after the ``after_ok``-th (a kill point that a slow
    machine cannot overshoot)."""
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
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
        assert after_ok <= before < PLANNED, before  # really killed mid-generate
        assert not (tmp_path / "out" / "train.jsonl").exists()

        done = promptbake(*run_args(srv.base_url), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert repaid(srv) <= CONCURRENCY, repaid(srv)  # at most what was in flight at the kill
        assert len(srv.paid_by_hash) == PLANNED
    assert statuses(db) == {"ok": PLANNED}
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
