"""Many endpoints (``teacher.endpoints``, repeated ``--base-url``): requests go where there is room
among the endpoints serving their model, a failing endpoint is taken out and probed back, nothing
is lost, replicas share the cache, and an answer is stored as the model that gave it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import write_spec

from promptbake.cli.main import cli
from promptbake.errors import InputError
from promptbake.specification.models import TeacherConfig, load_spec
from promptbake.teacher.client import ChatClient, Endpoint
from promptbake.teacher.config import Teacher, merge
from promptbake.teacher.endpoints import Fleet
from promptbake.teacher.generate import GenerateOptions
from promptbake.teacher.jobs import Job
from promptbake.teacher.limiter import Limiter
from promptbake.teacher.pool import Pool
from promptbake.workflows.pipeline import generate

SERVER = Path(__file__).resolve().parent / "fakeserver.py"


def grid_spec(cells: int, model: str = "m1", concurrency: int = 4) -> str:
    """One text step, one request per cell: ``cells`` requests."""
    values = ", ".join(f"v{i}" for i in range(cells))
    return f"""
name: fleet
teacher: {{model: {model}, concurrency: {concurrency}, max_attempts: 8}}
grid:
  axes:
    thing: [{values}]
  count: 1
category: thing
steps:
  - name: reply
    max_tokens: 20
    messages:
      - {{role: user, content: "Say something about {{{{ thing }}}}."}}
example:
  messages:
    - {{role: user, content: "{{{{ thing }}}}"}}
    - {{role: assistant, content: "{{{{ reply }}}}"}}
"""


def answered_once(store: Path) -> tuple[int, int]:
    """(requests, requests with exactly one successful attempt); every request must be ok."""
    with sqlite3.connect(store) as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
        once = db.execute(
            "SELECT COUNT(*) FROM (SELECT request_id FROM attempts WHERE status_code = 200 "
            "GROUP BY request_id HAVING COUNT(*) = 1)"
        ).fetchone()[0]
    assert set(statuses) == {"ok"}, statuses
    return statuses["ok"], once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_generate(tmp_path: Path, spec_text: str, urls: list[str], **overrides: object):
    spec = load_spec(write_spec(tmp_path, spec_text))
    return generate(spec, tmp_path / "s.db", Teacher(endpoints=tuple(urls), **overrides),
                    GenerateOptions(progress=False))


def test_two_replicas_share_the_work_and_each_is_reported(tmp_path):
    with FakeServer(latency_ms=5).running() as a, FakeServer(latency_ms=5).running() as b:
        report = run_generate(tmp_path, grid_spec(120), [a.base_url, b.base_url])
    assert a.count > 20 and b.count > 20 and a.count + b.count == 120
    assert answered_once(tmp_path / "s.db") == (120, 120)
    stats = report.generate.endpoints
    assert {name.split()[0] for name in stats} == {a.base_url, b.base_url}
    assert sum(s.ok for s in stats.values()) == 120
    assert all(s.prompt_tokens > 0 and s.latency_s and not s.errors for s in stats.values())


def test_idle_capacity_pulls_requests_so_a_slow_endpoint_gets_fewer(tmp_path):
    with FakeServer(latency_ms=150).running() as slow, FakeServer(latency_ms=2).running() as fast:
        run_generate(tmp_path, grid_spec(200), [slow.base_url, fast.base_url])
    assert slow.count + fast.count == 200
    assert fast.count > 4 * slow.count  # round-robin would split 100/100


def test_each_endpoint_keeps_its_own_rate_limit(tmp_path):
    spec = grid_spec(40).replace(
        "teacher: {model: m1, concurrency: 4, max_attempts: 8}",
        "teacher:\n  model: m1\n  max_attempts: 8\n  endpoints:\n"
        "    - {base_url: URL_A, rpm: 600}\n    - {base_url: URL_B, rpm: 6000, concurrency: 8}",
    )
    with FakeServer(rpm=600, burst_s=1).running() as a, FakeServer().running() as b:
        spec = spec.replace("URL_A", a.base_url).replace("URL_B", b.base_url)
        run_generate(tmp_path, spec, [])
    # 600 RPM is 10 a second: A took only what its own bucket allowed, B the rest, and nobody a 429
    assert a.count < 15 and a.count + b.count == 40
    assert "429" not in a.statuses and "429" not in b.statuses


def test_refused_endpoint_is_taken_out_then_probed_back(tmp_path):
    port = _free_port()  # nothing listens there yet
    down = f"http://127.0.0.1:{port}/v1"
    revived: list[FakeServer] = []
    with contextlib.ExitStack() as stack, FakeServer(latency_ms=40).running() as up:
        def revive() -> None:
            revived.append(stack.enter_context(FakeServer(port=port, latency_ms=5).running()))

        timer = threading.Timer(1.5, revive)
        timer.start()
        report = run_generate(tmp_path, grid_spec(250, concurrency=2), [down, up.base_url])
        timer.join()
    assert answered_once(tmp_path / "s.db") == (250, 250)
    stats = report.generate.endpoints[f"{down} m1"]
    assert stats.taken_out >= 1 and stats.errors["connection"] >= 3
    # while out it got only probes; once back it served its share again
    assert stats.errors["connection"] <= 2 + 2 * 3
    assert revived and revived[0].count > 20


def _stand_in() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0", "--latency-ms", "20-40"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, line.split()[1]


def _served(url: str) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_stats", timeout=2) as response:
        import json

        return json.load(response)["requests"]


def test_endpoint_killed_mid_run_job_completes_every_request_answered_once(tmp_path):
    write_spec(tmp_path, grid_spec(400))
    victim, victim_url = _stand_in()
    survivor, survivor_url = _stand_in()
    killed_after: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            served = _served(victim_url)
            if served >= 40:
                victim.kill()  # SIGKILL: in-flight requests die with their connections
                killed_after.append(served)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_busy)
    try:
        killer.start()
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q",
                                          "--base-url", victim_url, "--base-url", survivor_url])
        killer.join()
        survived = _served(survivor_url)
    finally:
        for proc in (victim, survivor):
            proc.kill()
            proc.wait(10)
    assert result.exit_code == 0, result.output
    assert killed_after and killed_after[0] < 400
    assert survived >= 400 - killed_after[0]  # the victim's unanswered share went to the survivor
    assert answered_once(tmp_path / "s.db") == (400, 400)
    assert f"endpoint {victim_url} m1:" in result.output and "taken out" in result.output


def test_replicas_share_cache_keys(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b:
        spec = load_spec(write_spec(tmp_path, grid_spec(30)))
        first = generate(spec, tmp_path / "s.db", Teacher(base_url=a.base_url),
                         GenerateOptions(progress=False))
        assert first.generate.steps[0].sent == 30
        # another spec asking the same things: answered from the cache when the cache keys agree
        replicas = run_generate(tmp_path, grid_spec(30).replace("name: fleet", "name: again"),
                                [a.base_url, b.base_url])
        assert replicas.generate.steps[0].cached == 30 and a.count + b.count == 30


def test_the_teachers_model_is_resolved_once_from_the_spec():
    from promptbake.plan.routing import teacher_models

    def resolve(**teacher: object) -> tuple[str, ...]:
        return teacher_models(TeacherConfig.model_validate(teacher))

    fleet = [{"base_url": "http://a/v1", "model": "m1"}, {"base_url": "http://b/v1", "model": "m1"}]
    assert resolve(model="m1", endpoints=[{"base_url": "http://a/v1"}]) == ("m1",)
    assert resolve(endpoints=fleet) == ("m1",)  # the one model the endpoints name
    assert resolve(endpoints=[*fleet, {"base_url": "http://c/v1"}]) == ("m1",)  # c serves any
    assert resolve(models=["m1", "m2"]) == ("m1", "m2")
    assert resolve(kind="local") == ("smollm2",)
    with pytest.raises(InputError, match="no teacher model"):
        resolve(endpoints=[{"base_url": "http://a/v1"}])
    for bad, message in [({"model": "m1", "models": ["m2"]}, "not both"), ({"models": ["m1", "m1"]}, "twice"),
                         ({"endpoints": [fleet[0], {"base_url": "http://b/v1", "model": "m2"}]},
                          r"several models \(m1, m2\).*teacher.models: \[m1, m2\]")]:
        with pytest.raises(ValueError, match=message):
            TeacherConfig.model_validate(bad)
    # --model names the one model: it replaces the spec's mix, and a --models replaces its model
    mixed = TeacherConfig.model_validate({"models": ["m1", "m2"]})
    assert (merge(mixed, Teacher(model="m3")).model, merge(mixed, Teacher(model="m3")).models) == ("m3", None)
    one = TeacherConfig.model_validate({"model": "m1"})
    assert (merge(one, Teacher(models=("a", "b"))).model, merge(one, Teacher(models=("a", "b"))).models) == (
        None, ["a", "b"])


def test_rising_latency_halves_that_endpoints_concurrency():
    async def scenario() -> tuple[float, float]:
        with FakeServer(latency_ms=50).running() as a, FakeServer(latency_ms=50).running() as b:
            async with ChatClient(Endpoint(a.base_url, "m1")) as ca, ChatClient(Endpoint(b.base_url, "m1")) as cb:
                fleet = Fleet([(ca.endpoint, ca, Limiter(concurrency=16), 1.0),
                               (cb.endpoint, cb, Limiter(concurrency=16), 1.0)])
                pool = Pool(ca, fleet, max_attempts=3, cost=lambda *args: 0.0)  # type: ignore[arg-type]

                async def sink(outcome: object) -> None:
                    pass

                def jobs(n: int) -> list[Job]:
                    return [Job(str(i), {"model": "m1", "messages": [{"role": "user", "content": str(i)}]}, 10)
                            for i in range(n)]

                await pool.run(jobs(200), sink)  # learns the normal latency
                a.latency_per_inflight_ms = 20.0  # A is now overloaded: 20 ms per request it holds
                await pool.run(jobs(300), sink)
                return fleet.members[0].limiter.concurrency.limit, fleet.members[1].limiter.concurrency.limit

    slowed, normal = asyncio.run(scenario())
    assert slowed < 8 and normal == 16


def test_one_base_url_flag_replaces_the_specs_endpoints_and_several_make_them():
    config = TeacherConfig.model_validate({"model": "m1", "endpoints": [{"base_url": "http://a/v1", "rpm": 5}]})
    assert merge(config, Teacher(base_url="http://c/v1")).endpoints == []
    several = merge(config, Teacher(endpoints=("http://c/v1", "http://d/v1"), rpm=3000))
    assert [(e.base_url, e.rpm) for e in several.endpoints] == [("http://c/v1", None), ("http://d/v1", None)]
    assert several.rpm == 3000  # each endpoint takes the teacher's limits: 3,000 RPM apiece
    assert merge(config, Teacher()).endpoints == config.endpoints


def test_failures_of_attempts_sent_before_a_take_out_do_not_extend_it():
    async def scenario() -> tuple[int, int, float]:
        dead = f"http://127.0.0.1:{_free_port()}/v1"
        with FakeServer(latency_ms=20).running() as alive:
            async with ChatClient(Endpoint(dead, "m1")) as cd, ChatClient(Endpoint(alive.base_url, "m1")) as ca:
                fleet = Fleet([(cd.endpoint, cd, Limiter(concurrency=16), 1.0),
                               (ca.endpoint, ca, Limiter(concurrency=16), 1.0)])
                pool = Pool(ca, fleet, max_attempts=4, cost=lambda *args: 0.0)  # type: ignore[arg-type]
                outcomes = []

                async def sink(outcome: object) -> None:
                    outcomes.append(outcome)

                jobs = [Job(str(i), {"model": "m1", "messages": [{"role": "user", "content": str(i)}]}, 10)
                        for i in range(100)]
                await pool.run(jobs, sink)  # well under the first 1 s out
                member = fleet.members[0]
                return sum(o.ok for o in outcomes), member.stats.taken_out, member.backoff

    ok, taken_out, backoff = asyncio.run(scenario())
    assert ok == 100
    assert taken_out == 1 and backoff == 2.0  # 16 refused at once are one failure of the endpoint


def test_an_endpoint_whose_key_variable_is_unset_is_refused_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("PB_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("PB_TEST_SET_KEY", "sk-test-0123456789")
    with FakeServer().running() as a, FakeServer().running() as b:
        spec = grid_spec(10).replace(
            "teacher: {model: m1, concurrency: 4, max_attempts: 8}",
            f"teacher:\n  model: m1\n  endpoints:\n    - {{base_url: {a.base_url}, api_key_env: PB_TEST_SET_KEY}}\n"
            f"    - {{base_url: {b.base_url}, api_key_env: PB_TEST_UNSET_KEY}}",
        )
        write_spec(tmp_path, spec)
        fleet = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q"])
        write_spec(tmp_path, grid_spec(10))
        single = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q", "--base-url", a.base_url,
                                          "--api-key-env", "PB_TEST_UNSET_KEY"])
        sent = a.count + b.count
    for result in (fleet, single):
        assert result.exit_code == 2, result.output
        assert "api_key_env names PB_TEST_UNSET_KEY, which is not set" in result.output, result.output
        assert "Traceback" not in result.output
    assert sent == 0
