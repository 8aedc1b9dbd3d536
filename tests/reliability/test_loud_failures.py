"""A run that gets nothing done says so and fails: errors retrying cannot fix stop the run at once
with one line naming the server and model, repeated failures stop it early, the most common reasons
are printed at the end, exit codes tell a full dataset (0) from a short one (3) and a failed run (1),
and a failed run leaves a good dataset from an earlier run untouched."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections import Counter

import pytest
from fakeserver import FakeServer, Fault, Raw, body_hash
from relkit import cli_env, one_line_error, promptbake, pure_answer, statuses, text_spec

FAST = ("-q", "--max-attempts", "2", "--concurrency", "2")


def spec(tmp_path, a: int = 3, b: int = 3, count: int = 2, **kw) -> str:
    (tmp_path / "spec.yaml").write_text(text_spec(a, b, count, **kw), encoding="utf-8")
    return "spec.yaml"


def test_unknown_model_404_stops_at_once_naming_server_and_model(tmp_path):
    with FakeServer(fault_rates={"404": 1.0}).running() as srv:
        done = promptbake("run", spec(tmp_path), "--out", "out", "--base-url", srv.base_url,
                          "--model", "gpt-4o-minni", *FAST, cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert srv.base_url in line and "gpt-4o-minni" in line and "HTTP 404" in line, line
    assert "does not exist" in line  # the server's own words
    assert sent <= 2  # only what was already in flight: nothing is retried or sent after
    assert not (tmp_path / "out" / "train.jsonl").exists()


UNREADABLE = {
    "sse": Raw(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n',
               content_type="text/event-stream"),
    "html": Raw(b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>", content_type="text/html"),
    "no_choices": Raw(b'{"id": "x", "object": "chat.completion", "result": "hello"}'),
    "error_in_200": Raw(b'{"error": {"message": "upstream model is overloaded: invalid route", "type": "x"}}'),
    "empty_choices": Raw.completion([], usage={"prompt_tokens": 3, "completion_tokens": 0}),
    "tool_calls": Raw.completion([Raw.choice(None, tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}])]),
}


@pytest.mark.parametrize("shape", sorted(set(UNREADABLE) - {"error_in_200"}))
def test_an_answer_no_client_can_read_stops_the_run_at_once(tmp_path, shape):
    with FakeServer(responder=lambda body: UNREADABLE[shape]).running() as srv:
        done = promptbake("generate", spec(tmp_path), "--store", "s.db", "--base-url", srv.base_url, *FAST,
                          cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1, done.stderr
    assert srv.base_url in line and "gpt-4o-mini" in line, line
    assert sent <= 2, sent  # --concurrency 2: the two first requests, nothing after
    assert statuses(tmp_path / "s.db") == {"pending": 18}  # nothing marked failed: a re-run sends them


def test_a_200_carrying_an_error_on_every_attempt_stops_after_two_requests_repeat_it(tmp_path):
    with FakeServer(responder=lambda body: UNREADABLE["error_in_200"]).running() as srv:
        done = promptbake("generate", spec(tmp_path), "--store", "s.db", "--base-url", srv.base_url, *FAST,
                          "--max-attempts", "6", cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1, done.stderr
    assert srv.base_url in line and "gpt-4o-mini" in line and "upstream model is overloaded" in line, line
    assert "twice in a row" in line, line
    # --concurrency 2: each request tried twice (not 6 times), and a third one at most begun
    assert sent <= 6, sent
    assert sum(statuses(tmp_path / "s.db").values()) == 18


def test_a_200_carrying_an_error_on_each_first_attempt_is_retried_not_the_end_of_the_run(tmp_path):
    """A proxy passes on an upstream hiccup as a 200 with an error body, on the first attempt of
    every request; every retry is answered. The breaker looks at requests, not at first attempts."""
    tries: Counter[str] = Counter()

    def respond(body: dict) -> Raw | str:
        tries[body_hash(body)] += 1
        return UNREADABLE["error_in_200"] if tries[body_hash(body)] == 1 else pure_answer(body)

    with FakeServer(responder=respond).running() as srv:
        done = promptbake("run", spec(tmp_path, 4, 4, 1), "--out", "out", "--base-url", srv.base_url, *FAST,
                          "--concurrency", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert set(tries.values()) == {2}, tries  # each request: the error, then its answer
    assert statuses(tmp_path / "out" / "promptbake.db") == {"ok": 16}


def test_a_400_on_every_request_stops_after_the_second(tmp_path):
    fault = Fault("400", message="Unrecognized request argument supplied: seed")
    with FakeServer(script=[fault] * 100).running() as srv:
        done = promptbake("generate", spec(tmp_path), "--store", "s.db", "--base-url", srv.base_url,
                          "-q", "--concurrency", "1", cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert sent == 2  # each 400 is final; the second identical one shows it is the setup
    assert "Unrecognized request argument supplied: seed" in line and srv.base_url in line, line


def test_a_deterministic_500_that_calls_the_request_invalid_is_not_retried_on(tmp_path):
    fault = Fault("500", message="Invalid value for 'response_format': json_schema is not supported")
    with FakeServer(script=[fault] * 100).running() as srv:
        done = promptbake("generate", spec(tmp_path), "--store", "s.db", "--base-url", srv.base_url,
                          "-q", "--concurrency", "1", "--max-attempts", "6", cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert sent == 4  # two requests × two identical answers each, not 6 attempts each
    assert "json_schema is not supported" in line, line


def test_an_unreachable_server_stops_the_run_after_the_retries(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = promptbake("generate", spec(tmp_path), "--store", "s.db", "--base-url", f"http://127.0.0.1:{port}/v1",
                      *FAST, cwd=tmp_path)
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert f"cannot reach the teacher at http://127.0.0.1:{port}/v1 (model gpt-4o-mini) after 2 attempts" in line


def test_a_fleet_whose_every_endpoint_is_down_stops_naming_each(tmp_path):
    """Nobody listens at either address: the run ends (exit 1) after a few failed probes each, with
    one line naming both endpoints and their error, instead of probing on for ever with 0 failed."""
    down = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            down.append(f"http://127.0.0.1:{s.getsockname()[1]}/v1")
    done = promptbake("generate", spec(tmp_path), "--store", "s.db", "-q", "--base-url", down[0],
                      "--base-url", down[1], cwd=tmp_path, timeout=90)
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert "every endpoint is down" in line
    for url in down:
        assert f"the teacher at {url} (model gpt-4o-mini): cannot connect" in line, line


def test_a_base_url_without_a_scheme_is_refused_before_any_request(tmp_path):
    with FakeServer().running() as srv:
        bare = srv.base_url.removeprefix("http://")
        done = promptbake("run", spec(tmp_path), "--out", "out", "--base-url", bare, *FAST, cwd=tmp_path)
        assert srv.count == 0
    line = one_line_error(done.stderr)
    assert done.returncode == 2
    assert bare in line and f"http://{bare}" in line, line


def test_credentials_in_the_base_url_are_refused_without_echoing_them(tmp_path):
    """``http://user:pass@host/v1`` used to end in aiohttp's traceback (with a key set) or in
    messages that printed the password; now one line, exit 2, before any request, password hidden."""
    with FakeServer().running() as srv:
        secret = srv.base_url.replace("http://", "http://alice:pw-0f9e8d7c@")
        env = cli_env(OPENAI_API_KEY="sk-test-key-1234567890")
        single = promptbake("run", spec(tmp_path), "--out", "out", "--base-url", secret, *FAST, cwd=tmp_path,
                            env=env)
        fleet = promptbake("run", spec(tmp_path), "--out", "out", "--base-url", srv.base_url, "--base-url", secret,
                           *FAST, cwd=tmp_path, env=env)
        assert srv.count == 0
    for done in (single, fleet):
        line = one_line_error(done.stderr)
        assert done.returncode == 2, done.stderr
        assert "carries credentials" in line and "http://***@127.0.0.1:" in line, line
        assert "pw-0f9e8d7c" not in done.stderr + done.stdout


def test_a_proxy_error_page_on_every_request_stops_after_the_first_identical_failures(tmp_path):
    page = Raw(b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", status=502,
               content_type="text/html")
    with FakeServer(responder=lambda body: page).running() as srv:
        done = promptbake("run", spec(tmp_path, 10, 10, 1), "--out", "out", "--base-url", srv.base_url, *FAST,
                          cwd=tmp_path)
        sent = srv.count
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert "the first 10 requests" in line and "none succeeded" in line and "502 Bad Gateway" in line, line
    assert sent <= (10 + 2) * 2, sent  # not the 100 requests × 2 attempts the spec plans


def failing_every_second(message: str):
    """Requests whose cell has an even x index fail with a 500, always; the rest are answered."""

    def respond(body: dict) -> str | Fault:
        user = body["messages"][-1]["content"]
        x = int(user.split("about x")[1].split()[0])
        return Fault("500", message=message) if x % 2 == 0 else pure_answer(body)

    return respond


def test_a_partial_run_exits_3_with_the_reasons_unless_the_shortfall_is_allowed(tmp_path):
    with FakeServer(responder=failing_every_second("upstream timeout (pod 7)")).running() as srv:
        args = ("run", spec(tmp_path, 8, 3, 1, test=0.5), "--out", "out", "--base-url", srv.base_url, *FAST)
        short = promptbake(*args, cwd=tmp_path)
        allowed = promptbake(*args, "--allow-shortfall", cwd=tmp_path)
    assert short.returncode == 3, short.stderr
    assert "Traceback" not in short.stderr
    # round 0: 12 of 24 fail; top-up round 1 asks the 12 short cells again, fails, and ends the rounds
    assert "round 0 answer: 24 planned, 0 from cache, 24 sent, 12 ok, 12 failed" in short.stderr
    assert "round 1 added nothing (all 10 of its requests failed" in short.stderr, short.stderr
    assert "22 requests failed; most common reasons:\n  22 × HTTP 500: upstream timeout (pod 7)" in short.stderr
    # the early notice, once, when the tenth identical failure came in
    assert short.stderr.count("10 requests have failed with: HTTP 500: upstream timeout (pod 7)") == 1
    assert short.stderr.rstrip().splitlines()[-1].startswith("Error: 12 cells are short of their count by 12")
    assert allowed.returncode == 0, allowed.stderr
    assert "shortfall allowed: 12 cells are short" in allowed.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["train"] + \
        json.loads((tmp_path / "out" / "manifest.json").read_text())["test"] == 12


def test_a_failed_run_leaves_the_previous_good_dataset_untouched(tmp_path):
    name = spec(tmp_path, 2, 3, 2)
    with FakeServer(responder=pure_answer).running() as good:
        first = promptbake("run", name, "--out", "out", "--base-url", good.base_url, *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.suffix in (".jsonl", ".json")}
    assert len(before) == 6  # train, test, metadata, dropped, splits, manifest

    with FakeServer(script=[Fault("500", message="boom")] * 1000).running() as broken:
        again = promptbake("run", name, "--out", "out", "--base-url", broken.base_url, "--no-cache", *FAST,
                           cwd=tmp_path)
    with FakeServer(fault_rates={"404": 1.0}).running() as missing:
        other = promptbake("run", name, "--out", "out", "--store", "other.db", "--base-url", missing.base_url,
                           *FAST, cwd=tmp_path)
    assert again.returncode == 1 and "HTTP 500: boom" in one_line_error(again.stderr), again.stderr
    assert other.returncode == 1 and "HTTP 404" in one_line_error(other.stderr), other.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.suffix in (".jsonl", ".json")}
    assert after == before


def test_top_up_rounds_never_resend_a_request_that_failed_for_good(tmp_path):
    """Cell x0/y0's prompt is too long for the model (a 400 about that request alone): the other
    cells fill, and the top-up rounds do not ask for x0/y0 again, not even with a new seed."""
    poison = "about x0 and y0"

    def respond(body: dict) -> str | Fault:
        if poison in body["messages"][-1]["content"]:
            return Raw(json.dumps({"error": {"message": "This model's maximum context length is 8 tokens",
                                             "type": "invalid_request_error", "code": "context_length_exceeded"}
                                   }).encode(), status=400)
        return pure_answer(body)

    name = spec(tmp_path, 2, 2, 2)
    with FakeServer(responder=respond).running() as srv:
        done = promptbake("run", name, "--out", "out", "--base-url", srv.base_url, *FAST, cwd=tmp_path)
        poisoned = [b for b in srv.bodies if poison in b["messages"][-1]["content"]]
    assert done.returncode == 3, done.stderr
    assert len(poisoned) == 2  # round 0's two requests for the cell, once each
    assert "round 1 added nothing (nothing left to ask" in done.stderr, done.stderr
    assert "Error: 1 cells are short of their count by 2 examples" in done.stderr
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        rounds = {r for (r,) in con.execute("SELECT DISTINCT round FROM requests")}
    assert rounds == {0}


def test_every_failed_request_is_paid_or_named_in_the_summary_of_eval(tmp_path):
    """eval calls a teacher too: it fails when nothing is answered, naming the reason."""
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": "a"}]}) + "\n"
                            for i in range(3)), encoding="utf-8")
    with FakeServer(script=[Fault("500", message="model is warming up")] * 100).running() as srv:
        done = promptbake("eval", "--data", str(data), "--out", "eval.jsonl", "--base-url", srv.base_url,
                          "--model", "student", *FAST, cwd=tmp_path)
    line = one_line_error(done.stderr)
    assert done.returncode == 1
    assert "none of the 3 requests to the teacher at" in line and "model is warming up" in line, line
    assert not (tmp_path / "eval.jsonl").exists()
