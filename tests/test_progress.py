"""Long runs show progress everywhere: a plain line at least every few seconds when stderr is not
a terminal (a log, CI, a pipe), with done/total, rate, spend and failures; totals right per round."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner
from fakeserver import FakeServer, Fault
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.teacher.generate import Progress


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
