"""``kill -9`` in batch mode, then the same command: it re-attaches to what the killed run
submitted. No file is uploaded twice, no batch created twice, no request paid twice, and the
dataset is byte-identical to an online run's."""

from __future__ import annotations

import filecmp
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import cli_env, promptbake, pure_answer, reference_run, statuses, text_spec

HERE = Path(__file__).resolve().parent
SPEC = text_spec(4, 5, 5)  # 100 requests in one step
PLANNED = 100
FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


def run_args(base_url: str, *extra: str) -> list[str]:
    return ["run", "spec.yaml", "--out", "out", "--base-url", base_url, "-q", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An online run of the same spec against the same (pure-function) teacher."""
    return reference_run(tmp_path_factory.mktemp("online"), SPEC, run_args)


@pytest.mark.parametrize("point, at_kill", [
    ("batch-uploaded", (1, 0)),  # the first file is at the provider, its id not yet in the store
    ("batch-created", (1, 1)),  # the first batch exists (and is being paid for), its id not yet in the store
    ("batch-poll:2", (2, 2)),  # both batches submitted, ids recorded, waiting for them
    ("batch-collect", (2, 2)),  # the first batch's answers written, not committed
])
def test_kill_9_in_batch_mode_then_resume_submits_nothing_twice(tmp_path, reference, point, at_kill):
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    batch = ["--batch", "--batch-poll", "0.2", "--batch-max-lines", "60"]  # two files: 60 + 40
    with FakeServer(responder=pure_answer, batch_polls=3).running() as srv:
        killed = subprocess.run(
            [sys.executable, str(HERE / "killer.py"), point, "--", *run_args(srv.base_url, *batch)],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert (len(srv.uploads), len(srv.batches)) == at_kill
        assert statuses(tmp_path / "out" / "promptbake.db").get("ok", 0) == 0

        done = promptbake(*run_args(srv.base_url, *batch), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(srv.uploads) == len(srv.batches) == 2  # the killed run's file and batch were re-used
        assert f"{at_kill[0]} re-attached" in done.stderr
        assert srv.batch_lines == PLANNED and not srv.paid_twice()
        assert srv.count == 0
    assert statuses(tmp_path / "out" / "promptbake.db") == {"ok": PLANNED}
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        assert con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == PLANNED  # each answer stored once
    for name in FILES:
        assert filecmp.cmp(tmp_path / "out" / name, reference / name, shallow=False), name
