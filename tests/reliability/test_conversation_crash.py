"""``kill -9`` in the middle of dialogues, then a re-run: each dialogue resumes at its next turn, no
turn is paid twice beyond those in flight at the kill, and the files are byte-identical to an
uninterrupted run's."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakeserver import FakeServer
from relkit import cli_env, promptbake, pure_answer, reference_run, statuses

CONCURRENCY = 6
SPEC = """
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
FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


def run_args(base_url: str, out: str = "out") -> list[str]:
    return ["run", "spec.yaml", "--out", out, "--base-url", base_url, "-q", "--concurrency", str(CONCURRENCY)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_run(tmp_path_factory.mktemp("reference"), SPEC, run_args)


def test_kill_9_mid_dialogue_resumes_at_the_next_turn(tmp_path, reference):
    (tmp_path / "spec.yaml").write_text(SPEC, encoding="utf-8")
    db = tmp_path / "out" / "promptbake.db"
    gate = threading.Event()
    calls = itertools.count(1)
    after_ok = 100  # 60 dialogues: each has its first customer turn, two thirds the agent's reply

    def respond(body: dict) -> str:
        if next(calls) > after_ok:
            gate.wait(60)
        return pure_answer(body)

    with FakeServer(responder=respond, latency_ms=(5, 20)).running() as srv:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "promptbake", *run_args(srv.base_url)], cwd=tmp_path,
                                    env=cli_env(), stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while statuses(db).get("ok", 0) < after_ok and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        finally:
            gate.set()
        assert statuses(db).get("ok", 0) == after_ok
        done = promptbake(*run_args(srv.base_url), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        repaid = sum(n - 1 for n in srv.paid_by_hash.values())
        assert repaid <= CONCURRENCY, repaid  # at most what was in flight at the kill
        turns = statuses(db)["ok"]
        assert len(srv.paid_by_hash) == turns  # every turn asked once, whichever run asked it
    for name in FILES:
        assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes(), name
