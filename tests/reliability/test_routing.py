"""Which model answers, against real loopback servers: a request goes only to the endpoints that
serve its model and is stored, cached and billed as that model's answer; mixing models is said in
the spec, never inferred from a fleet; every model a fleet may answer with needs a price under
``--max-cost``. (The code before this rewrote each request's model to the endpoint's.)"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from relkit import one_line_error, pure_answer, statuses, text_spec

from promptbake.cli.main import cli

JUDGE = "judge:\n  criteria: Fine.\n  model: judge-x\n  min_score: 1\nmax_rounds: 0\n"


def is_judge(body: dict) -> bool:
    return "strict judge" in body["messages"][0]["content"]


def judged(body: dict) -> str:
    """The pure-function teacher, and a verdict for the judge's prompt."""
    return json.dumps({"reasoning": "fine", "score": 5}) if is_judge(body) else pure_answer(body)


def fleet(*endpoints: tuple[str, str | None], head: str = "model: m1") -> str:
    """A ``teacher:`` section: ``head``, then one endpoint per (base URL, model or None)."""
    lines = "".join(f"\n    - {{base_url: {url}{f', model: {m}' if m else ''}}}" for url, m in endpoints)
    return f"teacher:\n  {head}\n  concurrency: 4\n  endpoints:{lines}"


def write(tmp_path: Path, teacher: str, *, extra: str = "", name: str = "rel", file: str = "spec.yaml") -> None:
    """``text_spec`` (5 × 4 cells, one request each) under ``teacher``."""
    text = text_spec(5, 4, 1, name=name).replace("teacher:\n  model: gpt-4o-mini", teacher)
    text = text.replace("    temperature: 1.0\n", "    temperature: 1.0\n    max_tokens: 20\n")
    (tmp_path / file).write_text(text + extra, encoding="utf-8")


def generate(*args: str, file: str = "spec.yaml") -> object:
    return CliRunner().invoke(cli, ["generate", file, "--store", "s.db", "-q", *args])


def stored_models(db: Path) -> list[tuple[str, str]]:
    """(the model a request named, the model its stored answer came from), for every answer."""
    with closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT json_extract(r.body, '$.model'), p.model FROM requests r "
                           "JOIN responses p ON p.id = r.response_id").fetchall()


@pytest.mark.parametrize("own", [True, False], ids=["endpoints-name-models", "endpoints-serve-any"])
def test_a_judge_is_answered_by_its_own_model_and_its_verdicts_cached_under_it(tmp_path, own):
    with FakeServer(responder=judged).running() as a, FakeServer(responder=judged).running() as j, \
            FakeServer(responder=judged).running() as single:
        write(tmp_path, fleet((a.base_url, "m1" if own else None), (j.base_url, "judge-x" if own else None)),
              extra=JUDGE)
        result = generate()
        assert result.exit_code == 0, result.output
        bodies = a.bodies + j.bodies
        assert len(bodies) == 40 and sum(map(is_judge, bodies)) == 20
        assert {(is_judge(b), b["model"]) for b in bodies} == {(False, "m1"), (True, "judge-x")}  # never rewritten
        if own:  # an endpoint naming a model is sent only that model's requests
            assert not any(map(is_judge, a.bodies)) and all(map(is_judge, j.bodies))
        assert {sent == answered for sent, answered in stored_models(tmp_path / "s.db")} == {True}
        # a later run on one endpoint asking the same models is served exactly those answers
        write(tmp_path, "teacher:\n  model: m1", extra=JUDGE, name="again", file="again.yaml")
        later = generate("--base-url", single.base_url, file="again.yaml")
        assert later.exit_code == 0, later.output
        assert single.count == 0


def test_a_model_no_endpoint_serves_is_refused_before_any_request(tmp_path):
    with FakeServer(responder=judged).running() as a, FakeServer(responder=judged).running() as b:
        write(tmp_path, fleet((a.base_url, "m1"), (b.base_url, "m1")), extra=JUDGE)
        result = generate()
        assert a.count == b.count == 0
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert "no endpoint serves model 'judge-x' (asked by judge)" in line
    assert f"{a.base_url} (m1)" in line and f"{b.base_url} (m1)" in line
    assert statuses(tmp_path / "s.db") == {}  # nothing planned either


@pytest.mark.parametrize(("head", "first", "message"), [
    ("max_attempts: 3", "m1", r"several models \(m1, m2\) and the teacher names none.*teacher.models: \[m1, m2\]"),
    ("model: m1", None, r"serves model 'm2', which no step asks for .*mix the models explicitly"),
])
def test_mixing_models_is_never_inferred_from_the_endpoints(tmp_path, head, first, message):
    with FakeServer().running() as a, FakeServer().running() as b:
        write(tmp_path, fleet((a.base_url, first), (b.base_url, "m2"), head=head))
        result = generate()
        assert a.count == b.count == 0
    assert result.exit_code == 2, result.output
    assert re.search(message, one_line_error(result.output)), result.output


def test_an_explicit_mix_sends_each_request_to_its_model_and_caches_it_under_that_model(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b, FakeServer().running() as single:
        write(tmp_path, fleet((a.base_url, "m1"), (b.base_url, "m2"), head="models: [m1, m2]"))
        result = generate()
        assert result.exit_code == 0, result.output
        assert {x["model"] for x in a.bodies} == {"m1"} and {x["model"] for x in b.bodies} == {"m2"}
        assert a.count >= 4 and b.count >= 4 and a.count + b.count == 20  # spread over both
        assert {sent == answered for sent, answered in stored_models(tmp_path / "s.db")} == {True}
        # a run asking m1 alone is served the m1 answers from the cache, and only those
        write(tmp_path, "teacher:\n  model: m1", name="one", file="one.yaml")
        later = generate("--base-url", single.base_url, file="one.yaml")
        assert later.exit_code == 0, later.output
        assert single.count == b.count


def test_a_fleet_naming_its_model_only_on_the_endpoints_is_priced_and_estimated(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b:
        write(tmp_path, fleet((a.base_url, "gpt-4o-mini"), (b.base_url, "gpt-4o-mini"), head="max_attempts: 3"))
        dry = CliRunner().invoke(cli, ["expand", "spec.yaml", "--dry-run"])
        result = generate("--max-cost", "1")
        assert a.count + b.count == 20
    assert dry.exit_code == 0, dry.output
    assert "model: gpt-4o-mini" in dry.output and "estimated cost ≤ $" in dry.output
    assert result.exit_code == 0, result.output


def test_every_model_a_fleet_answers_with_is_priced_and_billed_as_itself(tmp_path):
    with FakeServer().running() as a, FakeServer().running() as b:
        def teacher(head: str) -> str:
            return fleet((a.base_url, "gpt-4o-mini"), (b.base_url, "my-vllm"), head=head)

        for head in ("model: gpt-4o-mini", "models: [gpt-4o-mini, my-vllm]"):  # implicit mix, then unpriced
            write(tmp_path, teacher(head))
            refused = generate("--max-cost", "1")
            assert refused.exit_code == 2 and a.count == b.count == 0, refused.output
        assert "no price is known for model 'my-vllm'" in one_line_error(refused.output)
        write(tmp_path, teacher("models: [gpt-4o-mini, my-vllm]") + "\n  prices: {my-vllm: {input: 100, output: 200}}")
        result = generate("--max-cost", "1")
        assert result.exit_code == 0, result.output
        assert a.count and b.count
    prices = {"gpt-4o-mini": (0.15, 0.60), "my-vllm": (100.0, 200.0)}
    with closing(sqlite3.connect(tmp_path / "s.db")) as con:
        rows = con.execute("SELECT json_extract(r.body, '$.model'), a.prompt_tokens, a.completion_tokens, a.cost "
                           "FROM attempts a JOIN requests r ON r.id = a.request_id").fetchall()
    assert len(rows) == 20 and {m for m, *_ in rows} == set(prices)
    for model, prompt, completion, cost in rows:
        assert cost == pytest.approx((prompt * prices[model][0] + completion * prices[model][1]) / 1e6)
