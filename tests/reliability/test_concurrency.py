"""Two processes on one store: a second writer (generate, run) is refused with a clear line naming
the holder's pid and sends nothing; a reader (build) shares it; the first finishes unharmed."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time

from fakeserver import FakeServer
from relkit import cli_env, integrity, one_line_error, promptbake, pure_answer, statuses, text_spec

PLANNED = 200


def test_second_process_on_a_busy_store_is_refused_and_the_first_finishes(tmp_path):
    (tmp_path / "spec.yaml").write_text(text_spec(5, 4, 10), encoding="utf-8")
    db = tmp_path / "s.db"
    gate = threading.Event()
    calls = itertools.count(1)

    def gated(body: dict) -> str:
        """Answers 20 requests, then holds the server until the collisions are over, so the first
        run is still busy however slowly the machine starts the second process."""
        if next(calls) > 20:
            gate.wait(60)
        return pure_answer(body)

    with FakeServer(responder=gated).running() as first_srv, \
            FakeServer(responder=pure_answer).running() as second_srv:
        first = subprocess.Popen(
            [sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "--base-url",
             first_srv.base_url, "-q", "--concurrency", "4"],
            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while statuses(db).get("ok", 0) < 10 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert first.poll() is None, "the first run finished before the second could collide with it"

            for extra in (["generate"], ["run", "--out", "out"]):
                second = promptbake(*extra, "spec.yaml", "--store", "s.db", "--base-url", second_srv.base_url, "-q",
                                    cwd=tmp_path)
                assert second.returncode == 1, (extra, second.stderr)
                line = one_line_error(second.stderr)
                assert line == (f"Error: s.db is in use by another promptbake process (pid {first.pid}); "
                                "wait for it to finish or use another --store"), line
                assert first.poll() is None, "the first run died when the second one started"
            assert second_srv.count == 0  # refused before sending anything
            assert not (tmp_path / "out" / "train.jsonl").exists()

            # build only reads: it shares the store (SQLite WAL readers) and builds what is there so far
            reader = promptbake("build", "spec.yaml", "--store", "s.db", "--out", "snapshot", cwd=tmp_path)
            assert reader.returncode == 0, reader.stderr
            built = sum(1 for name in ("train", "test") for _ in (tmp_path / "snapshot" / f"{name}.jsonl").open())
            assert 10 <= built <= 20  # a snapshot: the gate held everything after the 20th answer
        except BaseException:
            first.kill()
            raise
        finally:
            gate.set()  # also on failure: the server thread must not stay blocked
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert f"store: {PLANNED} ok, 0 failed, 0 pending" in err
        assert len(first_srv.paid_by_hash) == PLANNED and max(first_srv.paid_by_hash.values()) == 1

    assert statuses(db) == {"ok": PLANNED}
    assert integrity(db) == "ok"
    again = promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", second_srv.base_url, "-q",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # the lock went with the first process
