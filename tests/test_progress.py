"""Long runs show progress everywhere: a plain line at least every few seconds when stderr is not
a terminal (a log, CI, a pipe), with done/total, rate, spend and failures; totals right per round."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner
from fakeserver import FakeServer, Fault
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.teacher.progress import Progress


def outcome(ok: bool = True) -> SimpleNamespace:
    return SimpleNamespace(ok=ok, attempts=[SimpleNamespace(prompt_tokens=10, completion_tokens=5, cost=0.25)])


def test_lines_come_on_a_timer_even_when_nothing_finishes():
    stream = io.StringIO()
    progress = Progress(True, 3, "reply (round 0)", every=0.05, stream=stream)
    time.sleep(0.3)  # every request stuck: the log still shows the run is alive
    progress.update(outcome())
    progress.update(outcome(ok=False))
    time.sleep(0.2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4
    assert lines[0].startswith("reply (round 0): 0/3 (0%), 0.0 req/s, 0 tok/s, $0.0000, 0 failed")
    assert re.fullmatch(r"reply \(round 0\): 2/3 \(67%\), [\d.]+ req/s, \d+ tok/s, \$0\.5000, 1 failed", lines[-1])
    time.sleep(0.15)
    assert stream.getvalue().splitlines() == lines  # the timer stops with close()


def test_quiet_prints_nothing():
    stream = io.StringIO()
    progress = Progress(False, 3, "x", every=0.01, stream=stream)
    time.sleep(0.05)
    progress.close()
    assert stream.getvalue() == ""


def test_cli_prints_progress_lines_to_a_non_terminal_with_per_round_totals(monkeypatch):
    """A reply that always fails leaves its cell short, so run asks again in round 1: that round's
    total is its own requests, not also the failure of round 0 (which made it stop at 1/2)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("PROMPTBAKE_PROGRESS_EVERY", "0.05")
    grid = list_then_reply_responder()

    def responder(body: dict):
        user = body["messages"][-1]["content"]
        return Fault("400") if body["messages"][0]["role"] == "system" and "Customer 0 " in user else grid(body)

    spec = write_spec(Path.cwd(), MINIMAL_SPEC)
    with FakeServer(responder=responder, latency_ms=20).running() as server:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    finals = {}
    for line in result.stderr.splitlines():
        match = re.match(r"^(\w+ \(round \d+\)): (\d+)/(\d+) ", line)
        if match:
            finals[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    assert {"ask (round 0)", "answer (round 0)", "answer (round 1)"} <= set(finals), result.stderr
    assert all(done == total for done, total in finals.values()), finals


def test_a_notebook_gets_a_tqdm_auto_bar_not_lines(monkeypatch):
    class ZMQInteractiveShell:  # what get_ipython() returns inside a Jupyter kernel
        pass

    monkeypatch.setitem(__import__("sys").modules, "IPython", SimpleNamespace(get_ipython=ZMQInteractiveShell))
    stream = io.StringIO()
    progress = Progress(True, 2, "reply", every=0.01, stream=stream)
    progress.update(outcome())
    progress.close()
    assert progress.bar is not None and "reply" in stream.getvalue() and "1/2" in stream.getvalue()


def test_summary_names_the_store_and_a_rerun_says_what_was_already_stored(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    spec = str(write_spec(Path.cwd(), MINIMAL_SPEC))
    with FakeServer(responder=list_then_reply_responder()).running() as server:
        args = ["run", spec, "--out", "out", "--base-url", server.base_url, "-q"]
        first = CliRunner().invoke(cli, args)
        again = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert "store file: out/promptbake.db" in first.stderr and "already stored" not in first.stderr
    assert "round 0 ask: 4 planned, 0 from cache, 0 sent, 0 ok, 0 failed; 4 already stored by an earlier run" in (
        again.stderr
    )
    assert "round 0 answer: 8 planned, 0 from cache, 0 sent, 0 ok, 0 failed; 8 already stored" in again.stderr


def test_debug_works_after_the_subcommand():
    quiet = CliRunner().invoke(cli, ["expand", "missing.yaml", "--dry-run"])
    assert quiet.exit_code == 2 and quiet.stderr.startswith("Error: missing.yaml: no such spec file")
    before = ["--debug", "expand", "missing.yaml", "--dry-run"]
    after = ["expand", "missing.yaml", "--dry-run", "--debug"]
    for args in (before, after):
        result = CliRunner().invoke(cli, args)
        assert type(result.exception).__name__ == "SpecError", args  # the traceback, not a one-line error


def test_validation_at_the_end_names_the_teachers_target(monkeypatch):
    """8 examples are too few for OpenAI, fine for TRL: a run with a remote teacher is checked
    against OpenAI's rules; the same data from a local teacher against an open model's (trl)."""
    from promptbake.output.targets import target_for_teacher

    assert target_for_teacher("local", None) == "trl"
    assert target_for_teacher("remote", "https://acme.openai.azure.com/openai/v1") == "azure-openai"
    assert target_for_teacher("remote", "https://api.together.xyz/v1") == "together"
    assert target_for_teacher("remote", "https://api.fireworks.ai/inference/v1") == "fireworks"
    assert target_for_teacher("remote", None) == "openai"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    spec = write_spec(Path.cwd(), MINIMAL_SPEC)
    with FakeServer(responder=list_then_reply_responder()).running() as server:
        remote = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--base-url", server.base_url, "-q"])
    assert "format openai-chat, target openai" in remote.stderr and "too_few_examples" in remote.stderr
    local = write_spec(Path.cwd(), MINIMAL_SPEC.replace("  model: gpt-4o-mini", "  kind: local"), "local.yaml")
    result = CliRunner().invoke(cli, ["build", str(local), "--out", "out"])
    assert result.exit_code == 0, result.output
    assert "too_few_examples" not in result.stderr and "approximate" not in result.stderr  # no o200k note
    assert json.loads(Path("out/manifest.json").read_text())["validation"] == {"ok": True, "errors": 0, "target": "trl"}


def test_the_o200k_note_is_printed_once(monkeypatch):
    """A distillation whose validation fails (too few examples for OpenAI) printed the
    approximate-token-count note twice: in the validation report and in the distill summary."""
    from test_distill import copy_samples, triage_teacher

    from promptbake.teacher.tokens import encoding_note

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    copy_samples(Path.cwd())
    Path("inputs.txt").write_text("My invoice is wrong\nThe app crashes\nI cannot log in\n")
    with FakeServer(responder=triage_teacher()).running() as server:
        result = CliRunner().invoke(cli, [
            "distill", "--prompt", "samples/triage_prompt.md", "--inputs", "inputs.txt", "--out", "out",
            "--base-url", server.base_url, "--model", "gpt-4o-mini", "-q",
        ])
    assert result.exit_code == 0, result.output
    assert "too_few_examples" in result.stderr
    expected = 1 if encoding_note("gpt-4o-mini") else 0  # 0 where o200k_base is cached
    assert result.stderr.count("not cached offline") == expected, result.stderr
