"""``--max-cost`` is a hard bound, against a real loopback server: the run never spends more than
it, or refuses to start. Unpriced models are refused, answers without usage are charged their worst
case (never $0), uncapped steps are sent with a stated cap, fine-tunes are priced as fine-tunes,
and 64 requests in flight cannot overshoot."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from relkit import one_line_error, pure_answer, statuses, text_spec

from promptbake.cli.main import cli
from promptbake.teacher.pricing import PriceTable

PRICEY = "teacher:\n  model: pricey\n  prices: {pricey: {input: 1000, output: 1000}}"  # $0.001 a token


def spec(tmp_path: Path, a: int = 4, b: int = 5, count: int = 1, *, teacher: str = PRICEY,
         max_tokens: int | None = 20) -> Path:
    text = text_spec(a, b, count).replace("teacher:\n  model: gpt-4o-mini", teacher)
    if max_tokens is not None:
        text = text.replace("    temperature: 1.0\n", f"    temperature: 1.0\n    max_tokens: {max_tokens}\n")
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def generate(srv: FakeServer, *args: str) -> object:
    return CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
                                    *args])


def attempts(db: Path) -> list[tuple[int, int, int, float]]:
    """(status, prompt tokens, completion tokens, cost) of every stored attempt."""
    with closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT status_code, prompt_tokens, completion_tokens, cost FROM attempts").fetchall()


@pytest.mark.parametrize("mode", ["omit", "garbage"])
def test_answers_without_usage_are_charged_their_worst_case_and_the_summary_says_so(tmp_path, mode):
    spec(tmp_path)  # 20 requests, max_tokens 20
    with FakeServer(responder=pure_answer, usage_mode=mode).running() as srv:
        result = generate(srv, "--max-cost", "100")
    assert result.exit_code == 0, result.output
    rows = attempts(tmp_path / "s.db")
    assert len(rows) == 20
    for status, prompt, completion, cost in rows:
        assert status == 200
        assert completion == 20  # max_tokens: the dearest answer it could have been
        assert prompt > 0
        assert cost == pytest.approx((prompt + completion) * 1000 / 1e6)  # never $0
    assert "20 answers came without usage and were charged their worst case" in result.output


def test_no_usage_answers_still_stop_at_the_budget(tmp_path):
    """Without usage the pool cannot learn the real spend, so the worst case is what stops it."""
    spec(tmp_path, 10, 10)
    with FakeServer(responder=pure_answer, usage_mode="omit").running() as srv:
        result = generate(srv, "--max-cost", "0.5", "--concurrency", "16")
        sent = srv.count
    assert result.exit_code == 1, result.output
    assert "--max-cost $0.50 reached" in result.output
    spent = sum(row[3] for row in attempts(tmp_path / "s.db"))
    assert 0 < spent <= 0.5
    assert sent < 100


def test_64_in_flight_cannot_overshoot_the_budget(tmp_path):
    """Slow answers, 64 workers, a budget for about a dozen: worst cases are reserved before
    sending, so the spend stays under the bound however many were in flight."""
    spec(tmp_path, 10, 20)
    with FakeServer(responder=pure_answer, latency_ms=(100, 200)).running() as srv:
        result = generate(srv, "--max-cost", "0.6", "--concurrency", "64")
    assert result.exit_code == 1, result.output
    assert "--max-cost $0.60 reached" in result.output
    rows = attempts(tmp_path / "s.db")
    spent = sum(row[3] for row in rows)
    assert 0 < spent <= 0.6
    assert 5 <= len(rows) < 64  # it did work, and did not just send one batch of 64
    assert "failed" not in statuses(tmp_path / "s.db")


@pytest.mark.parametrize("model", ["some-vendor/llama-70b", "ft:davinci-002:acme:x:1"])
def test_an_unpriced_model_under_max_cost_is_refused_before_any_request(tmp_path, model):
    spec(tmp_path, teacher=f"teacher:\n  model: {model}")
    with FakeServer(responder=pure_answer).running() as srv:
        result = CliRunner().invoke(cli, ["generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url,
                                          "-q", "--max-cost", "1"])
        assert srv.count == 0
    assert result.exit_code == 2, result.output
    line = one_line_error(result.output)
    assert f"no price is known for model {model!r}" in line and "teacher.prices" in line


def test_teacher_prices_make_an_unknown_model_usable_under_max_cost(tmp_path):
    spec(tmp_path, 2, 2, teacher="teacher:\n  model: vendor/llama\n  prices: {vendor/llama: {input: 1, output: 2}}")
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv, "--max-cost", "1")
    assert result.exit_code == 0, result.output
    rows = attempts(tmp_path / "s.db")
    assert len(rows) == 4
    assert all(cost == pytest.approx((p * 1 + c * 2) / 1e6) for _, p, c, cost in rows)


def test_fine_tuned_models_are_priced_as_fine_tunes(tmp_path):
    """``ft:gpt-4o-mini:...`` costs OpenAI's fine-tuned price ($0.30/$1.20), twice the base."""
    assert PriceTable().lookup("ft:gpt-4o-mini-2024-07-18:acme:rude:abc123").model_dump() == {
        "input": pytest.approx(0.30), "output": pytest.approx(1.20)}
    assert PriceTable().lookup("ft:gpt-4o:acme::x").model_dump() == {"input": 3.75, "output": 15.0}
    spec(tmp_path, 2, 2, teacher="teacher:\n  model: ft:gpt-4o-mini-2024-07-18:acme:rude:abc123")
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv, "--max-cost", "1")
    assert result.exit_code == 0, result.output
    rows = attempts(tmp_path / "s.db")
    assert rows and all(cost == pytest.approx((p * 0.30 + c * 1.20) / 1e6) for _, p, c, cost in rows)


def test_a_step_without_max_tokens_is_sent_with_a_stated_cap_under_max_cost(tmp_path):
    spec(tmp_path, 2, 2, max_tokens=None)
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv, "--max-cost", "5")
        capped = [body.get("max_tokens") for body in srv.bodies]
    assert result.exit_code == 0, result.output
    assert capped == [512] * 4
    assert "step answer sets no max_tokens: under --max-cost its answers are sent with max_tokens 512" in result.output
    # the cap is not part of the cached request: a run without --max-cost finds every answer stored
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv)
        assert srv.count == 0
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_budget_that_is_not_an_amount_is_bad_input(tmp_path, value):
    spec(tmp_path)
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv, "--max-cost", value)
        assert srv.count == 0
    assert result.exit_code == 2, result.output
    assert "--max-cost" in one_line_error(result.output)


def eval_data(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "answer"}]}
            for i in range(3)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_under_max_cost_refuses_an_unpriced_model_and_caps_uncapped_answers(tmp_path):
    eval_data(tmp_path)
    with FakeServer(responder=pure_answer).running() as srv:
        refused = CliRunner().invoke(cli, ["eval", "--data", "test.jsonl", "--out", "e.jsonl", "--base-url",
                                           srv.base_url, "--model", "my-student", "--max-cost", "1", "-q"])
        assert srv.count == 0
        done = CliRunner().invoke(cli, ["eval", "--data", "test.jsonl", "--out", "e.jsonl", "--base-url",
                                        srv.base_url, "--model", "ft:gpt-4o-mini:acme::x", "--max-cost", "1", "-q"])
        capped = [body.get("max_tokens") for body in srv.bodies]
    assert refused.exit_code == 2, refused.output
    assert "no price is known for model 'my-student'" in one_line_error(refused.output)
    assert done.exit_code == 0, done.output
    assert capped == [512] * 3
    assert "under --max-cost, 3 requests that set no max_tokens were sent with max_tokens 512" in done.output


def test_an_unpriced_judge_model_under_max_cost_is_refused_before_any_request(tmp_path):
    """A quality gate's judge is paid like a step: its model needs a price too."""
    path = spec(tmp_path, 2, 2)
    path.write_text(path.read_text() + 'judge:\n  criteria: "Is it kind?"\n  model: vendor/judge\n', encoding="utf-8")
    with FakeServer(responder=pure_answer).running() as srv:
        result = generate(srv, "--max-cost", "1")
        assert srv.count == 0
    assert result.exit_code == 2, result.output
    assert "no price is known for model 'vendor/judge'" in one_line_error(result.output)
