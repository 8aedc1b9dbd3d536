"""Retries change something, and stop: a rejected answer is asked again with another seed (derived
when the step sets none), the same rejected bytes twice in a row end the request with the reason,
every top-up round varies its requests, and a round that adds nothing ends the rounds, saying why."""

from __future__ import annotations

import json
import sqlite3

from fakeserver import FakeServer, body_hash
from relkit import promptbake, pure_answer, text_spec

FAST = ("-q", "--concurrency", "2")


def unseeded(count: int, *, a: int = 2, b: int = 2, parse: str = "text", rounds: int = 3) -> str:
    """``text_spec`` without the step's seed, so only promptbake can vary a request."""
    text = text_spec(a, b, count).replace("    seed: 7\n", f"    parse: {parse}\n")
    return text + f"max_rounds: {rounds}\n"


def test_a_deterministic_teacher_is_paid_twice_per_request_not_max_attempts(tmp_path):
    (tmp_path / "spec.yaml").write_text(unseeded(1, parse="json"), encoding="utf-8")
    with FakeServer(responder=lambda body: "Sure! Here is some JSON for you.").running() as srv:
        done = promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url,
                          "--max-attempts", "6", *FAST, cwd=tmp_path)
        sent, paid = srv.count, sum(srv.paid_by_hash.values())
        seeds = [b.get("seed") for b in srv.bodies]
    assert done.returncode == 1, done.stderr
    assert sent == paid == 4 * 2  # 4 requests, each paid twice (not 6 times)
    assert seeds.count(None) == 4 and len({s for s in seeds if s is not None}) == 4  # the retry had a seed
    assert "the teacher gave the same rejected answer twice in a row" in done.stderr, done.stderr
    with sqlite3.connect(tmp_path / "s.db") as con:
        errors = [e for (e,) in con.execute("SELECT error FROM requests WHERE status = 'failed'")]
        raws = [r for (r,) in con.execute("SELECT raw FROM attempts WHERE raw IS NOT NULL")]
    assert len(errors) == 4 and all("same rejected answer twice" in e and "not JSON" in e for e in errors)
    assert raws == ["Sure! Here is some JSON for you."] * 8  # every paid answer is kept


def test_a_rejected_answer_is_retried_with_a_derived_seed_when_the_step_sets_none(tmp_path):
    """A teacher that follows the seed: unseeded requests get prose, seeded ones JSON."""

    def respond(body: dict) -> str:
        return json.dumps({"seed": body["seed"]}) if "seed" in body else "no JSON without a seed"

    (tmp_path / "spec.yaml").write_text(unseeded(1, parse="json"), encoding="utf-8")
    with FakeServer(responder=respond).running() as srv:
        done = promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url,
                          "--max-attempts", "3", *FAST, cwd=tmp_path)
        bodies = list(srv.bodies)
    assert done.returncode == 0, done.stderr
    assert len(bodies) == 8
    by_prompt: dict[str, list[dict]] = {}
    for body in bodies:
        by_prompt.setdefault(body["messages"][-1]["content"], []).append(body)
    assert len(by_prompt) == 4
    for first, retry in by_prompt.values():  # two attempts each: the retry differs only by its seed
        assert "seed" not in first and isinstance(retry["seed"], int)
        assert {k: v for k, v in retry.items() if k != "seed"} == first


def test_top_up_rounds_vary_the_request_so_a_deterministic_teacher_fills_the_cells(tmp_path):
    """Without a step seed, round 0's replicates of a cell are the same bytes, so a deterministic
    teacher answers duplicates; each top-up round must send different bytes."""
    (tmp_path / "spec.yaml").write_text(unseeded(3), encoding="utf-8")
    with FakeServer(responder=pure_answer).running() as srv:
        done = promptbake("run", "spec.yaml", "--out", "out", "--base-url", srv.base_url, *FAST, cwd=tmp_path)
        bodies = list(srv.bodies)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 4 * 3
    round0 = [b for b in bodies if "seed" not in b]
    later = [b for b in bodies if "seed" in b]
    assert len(round0) == 12 and len({body_hash(b) for b in round0}) == 4  # 3 identical asks per cell
    assert later and len({body_hash(b) for b in later}) == len(later)  # every top-up ask is new bytes


def test_a_round_that_adds_nothing_ends_the_rounds_and_says_why(tmp_path):
    """A teacher that says the same thing whatever the seed: round 1 adds nothing, so there is
    no round 2 or 3 (max_rounds is 3), and the shortfall is reported with exit 3."""
    (tmp_path / "spec.yaml").write_text(unseeded(3), encoding="utf-8")
    with FakeServer(responder=lambda body: f"Always this about {body['messages'][-1]['content'][18:24]}."
                    ).running() as srv:
        done = promptbake("run", "spec.yaml", "--out", "out", "--base-url", srv.base_url, *FAST, cwd=tmp_path)
        sent = srv.count
    assert done.returncode == 3, done.stderr
    assert "round 1 added nothing (its 8 answers were all duplicates or failed the checks); no further rounds" \
        in done.stderr, done.stderr
    assert sent == 12 + 8  # round 0, then round 1 (2 missing per cell) and nothing more
    assert "Error: 4 cells are short of their count by 8 examples" in done.stderr
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        assert {r for (r,) in con.execute("SELECT DISTINCT round FROM requests")} == {0, 1}
