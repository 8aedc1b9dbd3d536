"""Many endpoints (``teacher.endpoints``, repeated ``--base-url``): requests go where there is room
among the endpoints serving their model, a failing endpoint is taken out and probed back, nothing
is lost, replicas share the cache, and an answer is stored as the model that gave it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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


# --- routing by model (each test fails on the code that rewrote a request's model per endpoint) ---


def judged(body: dict) -> str:
    """A teacher for ``judged_spec``: the judge's prompt gets a verdict, anything else a reply."""
    if "strict judge" in body["messages"][0]["content"]:
        return json.dumps({"reasoning": "fine", "score": 5})
    return f"Something about {body['messages'][-1]['content']}"


def judged_spec(cells: int, teacher: str, name: str = "fleet") -> str:
    """``grid_spec`` with a judge of its own model (judge-x) and the given ``teacher:`` section."""
    return grid_spec(cells).replace("name: fleet", f"name: {name}").replace(
        "teacher: {model: m1, concurrency: 4, max_attempts: 8}", teacher) + (
        "judge:\n  criteria: Fine.\n  model: judge-x\n  min_score: 1\nmax_rounds: 0\n")


def is_judge(body: dict) -> bool:
    return "strict judge" in body["messages"][0]["content"]


def stored_models(store: Path) -> list[tuple[str, str]]:
    """(model the request named, model the stored answer says it came from), for every answer."""
    with sqlite3.connect(store) as db:
        return db.execute("SELECT json_extract(r.body, '$.model'), p.model FROM requests r "
                          "JOIN responses p ON p.id = r.response_id").fetchall()


@pytest.mark.parametrize("own", [True, False], ids=["endpoints-name-models", "endpoints-serve-any"])
def test_a_judge_is_answered_by_its_own_model_and_its_verdicts_cached_under_it(tmp_path, own):
    with FakeServer(responder=judged).running() as a, FakeServer(responder=judged).running() as j, \
            FakeServer(responder=judged).running() as single:
        models = ("m1", "judge-x") if own else (None, None)
        endpoints = "".join(f"\n    - {{base_url: {url}{f', model: {m}' if m else ''}}}"
                            for url, m in zip((a.base_url, j.base_url), models, strict=True))
        teacher = f"teacher:\n  model: m1\n  concurrency: 4\n  endpoints:{endpoints}"
        report = run_generate(tmp_path, judged_spec(30, teacher), [])
        bodies = a.bodies + j.bodies
        assert len(bodies) == 60 and sum(map(is_judge, bodies)) == 30
        assert {(is_judge(b), b["model"]) for b in bodies} == {(False, "m1"), (True, "judge-x")}  # never rewritten
        if own:  # an endpoint naming a model gets only that model's requests
            assert not any(map(is_judge, a.bodies)) and all(map(is_judge, j.bodies))
        assert {sent == answered for sent, answered in stored_models(tmp_path / "s.db")} == {True}
        # a later run on one endpoint asking the same models is served exactly those answers
        again = load_spec(write_spec(tmp_path, judged_spec(30, "teacher: {model: m1}", name="again")))
        later = generate(again, tmp_path / "s.db", Teacher(base_url=single.base_url), GenerateOptions(progress=False))
    assert [s.cached for s in later.generate.steps] == [30, 30] and single.count == 0
    assert report.generate.steps[-1].ok == 30


def fleet_teacher(*endpoints: tuple[str, str | None], head: str = "model: m1") -> str:
    lines = "".join(f"\n    - {{base_url: {url}{f', model: {m}' if m else ''}}}" for url, m in endpoints)
    return f"teacher:\n  {head}\n  concurrency: 4\n  endpoints:{lines}"


def test_a_model_no_endpoint_serves_is_refused_before_any_request(tmp_path):
    with FakeServer(responder=judged).running() as a, FakeServer(responder=judged).running() as b:
        write_spec(tmp_path, judged_spec(5, fleet_teacher((a.base_url, "m1"), (b.base_url, "m1"))))
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q"])
        assert a.count == b.count == 0
    assert result.exit_code == 2, result.output
    assert "no endpoint serves model 'judge-x' (asked by judge)" in result.output
    assert f"{a.base_url} (m1)" in result.output and f"{b.base_url} (m1)" in result.output


@pytest.mark.parametrize(("head", "second", "message"), [
    ("max_attempts: 3", "m2", r"several models \(m1, m2\) and the teacher names none.*teacher.models: \[m1, m2\]"),
    ("model: m1", "m2", r"serves model 'm2', which no step asks for .*mix the models explicitly"),
])
def test_mixing_models_is_never_inferred_from_the_endpoints(tmp_path, head, second, message):
    with FakeServer().running() as a, FakeServer().running() as b:
        write_spec(tmp_path, grid_spec(5).replace(
            "teacher: {model: m1, concurrency: 4, max_attempts: 8}",
            fleet_teacher((a.base_url, None if "model" in head else "m1"), (b.base_url, second), head=head)))
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q"])
        assert a.count == b.count == 0
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output


def test_an_explicit_mix_sends_each_request_to_its_model_and_caches_it_under_that_model(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b, FakeServer().running() as single:
        spec = grid_spec(40).replace("teacher: {model: m1, concurrency: 4, max_attempts: 8}",
                                     fleet_teacher((a.base_url, "m1"), (b.base_url, "m2"), head="models: [m1, m2]"))
        mixed = run_generate(tmp_path, spec, [])
        assert mixed.generate.steps[0].ok == 40
        assert {x["model"] for x in a.bodies} == {"m1"} and {x["model"] for x in b.bodies} == {"m2"}
        assert a.count >= 10 and b.count >= 10 and a.count + b.count == 40  # spread over both
        assert {sent == answered for sent, answered in stored_models(tmp_path / "s.db")} == {True}
        # a run asking m1 alone is served the m1 answers from the cache, and only those
        one = load_spec(write_spec(tmp_path, grid_spec(40).replace("name: fleet", "name: one")))
        later = generate(one, tmp_path / "s.db", Teacher(base_url=single.base_url), GenerateOptions(progress=False))
    assert later.generate.steps[0].cached == a.count and single.count == b.count


# --- prices of a fleet's models under --max-cost ---------------------------------------------------


def test_a_fleet_naming_its_model_only_on_the_endpoints_is_priced_and_estimated(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b:
        write_spec(tmp_path, grid_spec(6).replace(
            "teacher: {model: m1, concurrency: 4, max_attempts: 8}",
            fleet_teacher((a.base_url, "gpt-4o-mini"), (b.base_url, "gpt-4o-mini"), head="max_attempts: 3")))
        dry = CliRunner().invoke(cli, ["expand", "spec.yaml", "--dry-run"])
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q", "--max-cost", "1"])
        assert a.count + b.count == 6
    assert dry.exit_code == 0, dry.output
    assert "model: gpt-4o-mini" in dry.output and "estimated cost ≤ $" in dry.output
    assert result.exit_code == 0, result.output


def test_every_model_a_fleet_answers_with_is_priced_and_billed_as_itself(tmp_path):
    def attempts() -> list[tuple[str, int, int, float]]:
        with sqlite3.connect(tmp_path / "s.db") as db:
            return db.execute("SELECT json_extract(r.body, '$.model'), a.prompt_tokens, a.completion_tokens, a.cost "
                              "FROM attempts a JOIN requests r ON r.id = a.request_id").fetchall()

    def spec(head: str, prices: str = "") -> str:
        return grid_spec(20).replace("teacher: {model: m1, concurrency: 4, max_attempts: 8}", fleet_teacher(
            (a.base_url, "gpt-4o-mini"), (b.base_url, "my-vllm"), head=head) + prices)

    with FakeServer().running() as a, FakeServer().running() as b:
        for head in ("model: gpt-4o-mini", "models: [gpt-4o-mini, my-vllm]"):  # implicit, then unpriced
            write_spec(tmp_path, spec(head))
            refused = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q", "--max-cost", "1"])
            assert refused.exit_code == 2 and a.count == b.count == 0, refused.output
        assert "no price is known for model 'my-vllm'" in refused.output
        write_spec(tmp_path, spec("models: [gpt-4o-mini, my-vllm]", "\n  prices: {my-vllm: {input: 100, output: 200}}"))
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "-q", "--max-cost", "1"])
        assert result.exit_code == 0, result.output
        assert a.count and b.count
    prices = {"gpt-4o-mini": (0.15, 0.60), "my-vllm": (100.0, 200.0)}
    rows = attempts()
    assert len(rows) == 20 and {m for m, *_ in rows} == set(prices)
    for model, prompt, completion, cost in rows:
        assert cost == pytest.approx((prompt * prices[model][0] + completion * prices[model][1]) / 1e6)
