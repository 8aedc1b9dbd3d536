"""A 429 never stalls the pool silently: a Retry-After beyond ``--max-retry-after`` (default 60 s)
pauses only its own request, for that cap, with one line saying when it resumes, while healthy
requests keep flowing; ``inf``, negative, NaN, far-future and garbage values are all survivable."""

from __future__ import annotations

import datetime
import itertools
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from fakeserver import FakeServer, Raw
from relkit import cli_env, promptbake, pure_answer, statuses, text_spec

STUCK = "about x0 and y0"


def refused(value: str, header: str = "retry-after") -> Raw:
    return Raw(b'{"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}', status=429,
               headers={header: value})


def test_a_long_retry_after_pauses_only_its_request_and_says_until_when(tmp_path):
    (tmp_path / "spec.yaml").write_text(text_spec(3, 4, 1), encoding="utf-8")  # 12 requests
    arrivals: list[tuple[float, bool]] = []

    def respond(body: dict) -> Raw | str:
        stuck = STUCK in body["messages"][-1]["content"]
        arrivals.append((time.monotonic(), stuck))
        return refused("3600") if stuck else pure_answer(body)

    with FakeServer(responder=respond).running() as srv:
        done = promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
                          "--concurrency", "2", "--max-attempts", "3", "--max-retry-after", "1", cwd=tmp_path)
    assert done.returncode == 3, done.stderr  # the stuck request failed; the shortfall is reported
    notices = [line for line in done.stderr.splitlines() if "asked for a 3,600 s wait" in line]
    assert notices, done.stderr
    assert re.search(r"more than --max-retry-after 1 s: that request pauses until \d\d:\d\d:\d\d, "
                     r"the others keep going", notices[0]), notices[0]
    assert len(notices) <= 2  # at most one a second (the cap), for 2 waits
    assert statuses(tmp_path / "s.db") == {"ok": 11, "failed": 1}
    stuck = [t for t, is_stuck in arrivals if is_stuck]
    healthy = [t for t, is_stuck in arrivals if not is_stuck]
    assert len(stuck) == 3 and len(healthy) == 11
    assert max(healthy) < stuck[1]  # every other request was answered while the stuck one waited
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(stuck))  # it waited the cap, each time
    with sqlite3.connect(tmp_path / "s.db") as con:
        [(error,)] = con.execute("SELECT error FROM requests WHERE status = 'failed'")
    assert "HTTP 429" in error


def test_the_default_cap_is_60_seconds(tmp_path):
    (tmp_path / "spec.yaml").write_text(text_spec(1, 1, 1), encoding="utf-8")
    with FakeServer(responder=lambda body: refused("90")).running() as srv:
        child = subprocess.Popen(
            [sys.executable, "-m", "promptbake", "generate", "spec.yaml", "--store", "s.db", "--base-url",
             srv.base_url, "-q"], cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True)
        try:
            line = child.stderr.readline() if child.stderr else ""  # the notice, before the wait
        finally:
            child.kill()
            child.wait()
    assert "asked for a 90 s wait (HTTP 429), more than --max-retry-after 60 s" in line, line
    resumes = datetime.datetime.strptime(line.rsplit("until ", 1)[1][:8], "%H:%M:%S").time()
    expected = (datetime.datetime.now() + datetime.timedelta(seconds=60)).time()
    gap = abs(datetime.datetime.combine(datetime.date.today(), resumes)
              - datetime.datetime.combine(datetime.date.today(), expected)).total_seconds()
    assert gap < 10 or gap > 86_000, (resumes, expected)  # in 60 s (modulo midnight)


@pytest.mark.parametrize(("header", "value"), [
    ("retry-after", "inf"), ("retry-after", "-5"), ("retry-after", "NaN"), ("retry-after", "soon"),
    ("retry-after", "1e400"), ("retry-after", "Wed, 21 Oct 2999 07:28:00 GMT"), ("retry-after", ""),
    ("retry-after-ms", "inf"), ("retry-after-ms", "-100"), ("retry-after-ms", "12abc"),
])
def test_odd_retry_after_values_are_survived(tmp_path, header, value):
    (tmp_path / "spec.yaml").write_text(text_spec(2, 2, 1), encoding="utf-8")
    seen: set[str] = set()

    def respond(body: dict) -> Raw | str:
        prompt = body["messages"][-1]["content"]
        if prompt not in seen:  # each request is refused once with the odd header, then answered
            seen.add(prompt)
            return refused(value, header)
        return pure_answer(body)

    started = time.monotonic()
    with FakeServer(responder=respond).running() as srv:
        done = promptbake("generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
                          "--max-attempts", "3", "--max-retry-after", "0.5", cwd=tmp_path)
        sent = srv.count
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sent == 8 and statuses(tmp_path / "s.db") == {"ok": 4}
    assert time.monotonic() - started < 30  # bounded by the cap, never the header's value
