"""generate/run against a real loopback OpenAI-compatible server: store, cache, resume, budget."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer, Fault
from helpers import MINIMAL_SPEC, list_then_reply_responder, sigint_default, write_spec

from promptbake.cli.main import cli

TESTS = Path(__file__).parent
STEP0 = 4  # MINIMAL_SPEC: 2 × 2 cells, one list request each
STEP1 = 8  # count 2 per cell → 8 answers


def invoke(*args: str) -> object:
    result = CliRunner().invoke(cli, list(args))
    return result


def statuses(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        try:
            return dict(con.execute("SELECT status, COUNT(*) FROM requests WHERE current = 1 GROUP BY status"))
        except sqlite3.OperationalError:  # the store is still being created
            return {}


def test_generate_then_rerun_sends_nothing(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == STEP0 + STEP1
        assert statuses(tmp_path / "s.db") == {"ok": STEP0 + STEP1}
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == STEP0 + STEP1  # nothing re-sent


def test_changing_one_step_repays_only_that_step(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        invoke("generate", str(write_spec(tmp_path)), "--store", "s.db", "--base-url", srv.base_url, "-q")
        changed = write_spec(tmp_path, MINIMAL_SPEC.replace("Be rude.", "Be very rude."), "changed.yaml")
        result = invoke("generate", str(changed), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == STEP0 + STEP1 + STEP1  # step 0 kept, step 1 re-paid
        assert "round 0 ask: 4 planned, 0 from cache, 0 sent" in result.output
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT COUNT(*) FROM requests WHERE current = 1").fetchone()[0] == STEP0 + STEP1
        assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == STEP0 + 2 * STEP1  # nothing lost


def test_identical_requests_of_another_spec_come_from_the_cache(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        invoke("generate", str(write_spec(tmp_path)), "--store", "s.db", "--base-url", srv.base_url, "-q")
        other = write_spec(tmp_path, MINIMAL_SPEC.replace("name: mini", "name: other"), "other.yaml")
        result = invoke("generate", str(other), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == STEP0 + STEP1
        assert "round 0 ask: 4 planned, 4 from cache, 0 sent" in result.output
        assert "round 0 answer: 8 planned, 8 from cache, 0 sent" in result.output


def test_no_cache_resends(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q", "--no-cache")
        assert result.exit_code == 0, result.output
        assert srv.count == 2 * (STEP0 + STEP1)


def varying_responder():
    """Lists as ``list_then_reply_responder``; every reply also carries a call number, so a
    re-asked request gets a different answer (a sampling teacher)."""
    base, calls = list_then_reply_responder(), iter(range(10**9))

    def respond(body: dict) -> str:
        text = base(body)
        return text if text.startswith("[") else f"{text} #{next(calls)}"

    return respond


BUILT = ("train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl", "manifest.json")


def test_no_cache_in_another_spec_never_changes_what_this_spec_builds(tmp_path):
    spec_a = write_spec(tmp_path)
    spec_b = write_spec(tmp_path, MINIMAL_SPEC.replace("name: mini", "name: other"), "b.yaml")
    with FakeServer(responder=varying_responder()).running() as srv:
        assert invoke("generate", str(spec_a), "--store", "s.db", "--base-url", srv.base_url, "-q").exit_code == 0
        assert invoke("build", str(spec_a), "--store", "s.db", "--out", "a1").exit_code == 0
        result = invoke("generate", str(spec_b), "--store", "s.db", "--base-url", srv.base_url, "-q", "--no-cache")
        assert result.exit_code == 0, result.output
        assert srv.count == 2 * (STEP0 + STEP1)  # B asked every request again: new answers
        paid = sum(srv.paid_by_hash.values())
    assert invoke("build", str(spec_a), "--store", "s.db", "--out", "a2").exit_code == 0
    for name in BUILT:
        assert (tmp_path / "a1" / name).read_bytes() == (tmp_path / "a2" / name).read_bytes(), name
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == paid  # every answer kept
        used = dict(con.execute("SELECT spec_name, COUNT(DISTINCT response_id) FROM requests GROUP BY spec_name"))
    assert used == {"mini": STEP0 + STEP1, "other": STEP0 + STEP1}


def repeating_responder():
    """Lists of utterances of which 30% repeat an earlier one: the 7th and 10th of each ten the
    utterance before them, the 4th the first of the previous list (another cell's), if any.
    Replies echo the utterance. Records every utterance."""
    counter = iter(range(10**9))
    said: list[str] = []

    def respond(body: dict) -> str:
        user = body["messages"][-1]["content"]
        match = re.search(r"Give (\d+)", user)
        if match and body["messages"][0]["role"] != "system":
            items = []
            for _ in range(int(match.group(1))):
                i = next(counter)
                position = i % 10
                if position in (6, 9) or (position == 3 and i < 10):
                    items.append(said[-1])
                elif position == 3:
                    items.append(said[-13])  # the first item of the previous list
                else:
                    items.append(f"Utterance {i}: my order {i * 7919 % 10007} is wrong.")
                said.append(items[-1])
            return json.dumps(items)
        return f"Ugh. ({user}) Next!"

    respond.said = said
    return respond


def test_a_repeated_utterance_is_paid_for_once(tmp_path):
    spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  count: 2", "  count: 10") + "max_rounds: 0\n")
    teacher = repeating_responder()
    with FakeServer(responder=teacher).running() as srv:  # no top-up rounds: short on purpose
        result = invoke("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q", "--allow-shortfall")
        assert result.exit_code == 0, result.output
        replies = [b for b in srv.bodies if b["messages"][0]["role"] == "system"]
    distinct = set(teacher.said)
    assert len(teacher.said) == 40 and len(distinct) == 28  # 30% of the items repeat
    assert len(replies) == len(distinct)  # one paid reply per distinct utterance
    assert not srv.paid_twice()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(c["exact_dupes"] for c in manifest["categories"].values()) == 40 - 28
    assert manifest["train"] + manifest["test"] == 28


def test_duplicates_dropped_before_paying_are_refilled_by_the_top_up_loop(tmp_path):
    spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  count: 2", "  count: 10"))
    teacher = repeating_responder()
    with FakeServer(responder=teacher).running() as srv:  # no top-up rounds: short on purpose
        result = invoke("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q", "--allow-shortfall")
        assert result.exit_code == 0, result.output
        replies = [b for b in srv.bodies if b["messages"][0]["role"] == "system"]
    assert len({json.dumps(b, sort_keys=True) for b in replies}) == len(replies)  # no reply paid twice
    assert "round 0: 4 cells short" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 40 and not manifest["warnings"]


def test_unparseable_answers_are_recorded_with_raw_text(tmp_path):
    def responder(body):
        user = body["messages"][-1]["content"]
        if "angry" in user and "shop" in user:
            # never a list, and different on each retry (identical bytes twice end the request early)
            return f"I refuse ({body.get('seed')})."
        return list_then_reply_responder()(body)

    spec = write_spec(tmp_path)
    with FakeServer(responder=responder).running() as srv:
        result = invoke(
            "generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q", "--max-attempts", "3",
            "--allow-shortfall",  # one request failing is a shortfall: exit 3 without this flag
        )
        assert result.exit_code == 0, result.output
        assert "1 failed" in result.output
    with sqlite3.connect(tmp_path / "s.db") as con:
        error, attempts = con.execute("SELECT error, attempts FROM requests WHERE status = 'failed'").fetchone()
        raws = [r[0] for r in con.execute("SELECT raw FROM attempts WHERE raw IS NOT NULL")]
    assert "no list" in error
    assert attempts == 3
    assert len(set(raws)) == 3 and all(raw.startswith("I refuse (") for raw in raws), raws


def test_401_stops_and_never_leaks_the_key(tmp_path, monkeypatch):
    key = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    spec = write_spec(tmp_path)
    with FakeServer(script=[Fault("401", message=f"Incorrect API key provided: {key}")] * 50).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert srv.auth_headers[0] == f"Bearer {key}"
        assert srv.count <= 64
    assert result.exit_code == 1
    assert key not in result.output
    assert "401" in result.output or "auth" in result.output.lower()
    for path in tmp_path.iterdir():
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_max_cost_stops_cleanly_and_rerun_continues(tmp_path):
    text = MINIMAL_SPEC.replace(
        "teacher:\n  model: gpt-4o-mini",
        "teacher:\n  model: pricey\n  prices: {pricey: {input: 100000, output: 100000}}",
    )
    spec = write_spec(tmp_path, text)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = invoke(
            "generate",
            str(spec),
            "--store",
            "s.db",
            "--base-url",
            srv.base_url,
            "-q",
            "--max-cost",
            "100",
            "--concurrency",
            "1",
        )
        assert result.exit_code == 1
        assert "--max-cost $100.00 reached" in result.output
        with sqlite3.connect(tmp_path / "s.db") as con:
            spent = con.execute("SELECT SUM(cost) FROM attempts").fetchone()[0]
        assert 0 < spent <= 100
        assert "failed" not in statuses(tmp_path / "s.db")  # stopped, not failed: the re-run sends them
        sent = srv.count
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == STEP0 + STEP1  # the second run sent only what the first did not
        assert sent < srv.count


def test_second_process_on_same_store_is_refused(tmp_path):
    from promptbake.errors import StoreError
    from promptbake.store.db import Store

    with Store(tmp_path / "s.db"), pytest.raises(StoreError, match="in use by another promptbake process"):
        Store(tmp_path / "s.db")


def test_kill_9_resume_loses_nothing_and_repays_at_most_in_flight(tmp_path):
    """A real process killed mid-run; the re-run sends only what has no stored success."""
    text = MINIMAL_SPEC.replace("  count: 2", "  count: 30").replace(
        "    parse: list", "    parse: list\n    repeat: 1"
    )
    spec = write_spec(tmp_path, text)
    server = subprocess.Popen(
        [sys.executable, str(TESTS / "fakeserver.py"), "--port", "0", "--latency-ms", "20-60", "--responder", "grid"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().split()[-1]
        env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}
        cmd = [
            sys.executable,
            "-m",
            "promptbake",
            "generate",
            str(spec),
            "--store",
            str(tmp_path / "s.db"),
            "--base-url",
            base_url,
            "-q",
            "--concurrency",
            "8",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if (tmp_path / "s.db").exists() and statuses(tmp_path / "s.db").get("ok", 0) >= 40:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = statuses(tmp_path / "s.db").get("ok", 0)
        assert 0 < done_before < STEP0 + 120
        subprocess.run(cmd, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
        assert statuses(tmp_path / "s.db") == {"ok": STEP0 + 120}
        stats = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import urllib.request;print(urllib.request.urlopen('{base_url[:-3]}/_stats').read().decode())",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        paid_twice = sum(n - 1 for n in stats["paid_by_hash"].values() if n > 1)
        assert paid_twice <= 8  # at most what was in flight (concurrency 8) at the kill
    finally:
        server.kill()
        server.wait()


def test_a_long_system_prompt_is_stored_once_and_sent_whole(tmp_path):
    prompt = "Rules of the house. " * 100  # 2,000 characters
    text = MINIMAL_SPEC.replace("        content: Be rude.", f"        content: {prompt.strip()}")
    spec = write_spec(tmp_path, text)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = invoke("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        sent = [b["messages"][0]["content"] for b in srv.bodies if b["messages"][0]["role"] == "system"]
    assert sent == [prompt.strip()] * STEP1
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1
        bodies = [r[0] for r in con.execute("SELECT body FROM requests WHERE step_index = 1")]
    assert all("Rules of the house" not in b and '"$blob"' in b for b in bodies)


def test_ctrl_c_says_how_to_resume_and_keeps_answers(tmp_path):
    text = MINIMAL_SPEC.replace("  count: 2", "  count: 40")
    spec = write_spec(tmp_path, text)
    with FakeServer(responder=list_then_reply_responder(), latency_ms=(100.0, 200.0)).running() as srv:
        cmd = [sys.executable, "-m", "promptbake", "generate", str(spec), "--store", "s.db", "--base-url",
               srv.base_url, "-q", "--concurrency", "4"]
        env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                                preexec_fn=sigint_default)
        deadline = time.monotonic() + 30
        while statuses(tmp_path / "s.db").get("ok", 0) < STEP0 + 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "Interrupted: every answer received so far is stored" in err
        assert "Traceback" not in err
        kept = statuses(tmp_path / "s.db").get("ok", 0)
        assert kept >= STEP0 + 4
        subprocess.run(cmd, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
        assert statuses(tmp_path / "s.db") == {"ok": STEP0 + 160}
        assert len(srv.paid_twice()) <= 4  # only what was in flight at the interrupt


def test_one_client_and_limiter_serve_every_step_and_round(tmp_path):
    spec = write_spec(tmp_path, MINIMAL_SPEC.replace("  count: 2", "  count: 6"))
    with FakeServer(responder=list_then_reply_responder(dupe_every=4)).running() as srv:
        result = invoke("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q", "--concurrency", "1")
        assert result.exit_code == 0, result.output
        assert "round 1 answer" in result.output  # two steps, two rounds
    assert len(srv.connections) == 1, srv.connections  # one keep-alive connection for the whole run
