"""Fault injection on a real loopback server: nothing planned is ever lost, and 429 storms are
waited out per request (the server's retry-after is honoured as a floor, not as a global stall)."""

from __future__ import annotations

import itertools
import sqlite3

from click.testing import CliRunner
from fakeserver import FakeServer, Fault, body_hash
from relkit import pure_answer, statuses, text_spec

from promptbake.cli.main import cli

FAULTS = {"500": 0.05, "garbage": 0.02, "hang": 0.01, "drop": 0.01, "429": 0.02}


def test_1000_requests_under_faults_are_each_ok_or_failed_with_a_reason(tmp_path):
    (tmp_path / "spec.yaml").write_text(text_spec(10, 10, 10), encoding="utf-8")
    server = FakeServer(responder=pure_answer, fault_rates=FAULTS, seed=11, latency_ms=(0, 5))
    with server.running() as srv:
        result = CliRunner().invoke(cli, [
            "generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
            "--concurrency", "48", "--timeout", "1", "--max-attempts", "2",
        ])
        seen = dict(srv.statuses)
    # a few rows exhaust --max-attempts 2 (asserted below): the run says so and exits 3 (shortfall)
    assert result.exit_code == 3, result.output
    assert "requests failed and 0 are pending" in result.output
    # every kind of fault really happened
    for kind in FAULTS:
        assert seen.get(kind, 0) > 0, (kind, seen)

    with sqlite3.connect(tmp_path / "s.db") as con:
        planned = con.execute("SELECT COUNT(*) FROM requests WHERE current = 1").fetchone()[0]
        failed = con.execute(
            "SELECT id, error, attempts FROM requests WHERE current = 1 AND status = 'failed'"
        ).fetchall()
        lost = con.execute(
            "SELECT COUNT(*) FROM requests r WHERE current = 1 AND status = 'ok' "
            "AND NOT EXISTS (SELECT 1 FROM responses p WHERE p.cache_key = r.cache_key)"
        ).fetchone()[0]
        attempt_errors = dict(con.execute(
            "SELECT error_kind, COUNT(*) FROM attempts WHERE error_kind IS NOT NULL GROUP BY error_kind"
        ))
    counts = statuses(tmp_path / "s.db")
    assert planned == 1000
    assert set(counts) <= {"ok", "failed"}, counts  # nothing pending, nothing in limbo
    assert counts.get("ok", 0) + counts.get("failed", 0) == 1000
    assert counts.get("ok", 0) > 900
    assert lost == 0  # an ok row always has its stored answer
    # with two attempts and ~11% faults, some rows fail twice: each says why and was tried twice
    assert failed, "expected a few rows to exhaust --max-attempts 2"
    for _id, error, attempts in failed:
        assert error and "gave up after 2 attempts" in error, error
        assert attempts == 2
    assert "timeout" in attempt_errors, attempt_errors  # hangs were cut by --timeout, then retried
    assert f"store: {counts['ok']} ok, {counts.get('failed', 0)} failed, 0 pending" in result.output


def test_429_storm_each_request_waits_its_retry_after_then_succeeds(tmp_path):
    """Every request is refused once with ``retry-after-ms: 300``, then answered."""
    retry_s = 0.3
    refused: set[str] = set()

    def once_429(body: dict) -> str | Fault:
        digest = body_hash(body)
        if digest not in refused:
            refused.add(digest)
            return Fault("429", retry_after_ms=retry_s * 1000)
        return pure_answer(body)

    (tmp_path / "spec.yaml").write_text(text_spec(4, 5, 2), encoding="utf-8")  # 40 requests
    with FakeServer(responder=once_429).running() as srv:
        result = CliRunner().invoke(cli, [
            "generate", "spec.yaml", "--store", "s.db", "--base-url", srv.base_url, "-q",
            "--concurrency", "16", "--max-attempts", "3",
        ])
        arrivals = list(zip(srv.arrivals, (body_hash(b) for b in srv.bodies), strict=True))
    assert result.exit_code == 0, result.output
    assert statuses(tmp_path / "s.db") == {"ok": 40}
    assert len(arrivals) == 80  # exactly one refusal and one success each: no extra retries
    assert "40 rate-limited" in result.output

    first: dict[str, float] = {}
    retry_gaps = []
    for stamp, digest in arrivals:
        if digest in first:
            retry_gaps.append(stamp - first[digest])
        else:
            first[digest] = stamp
    assert len(retry_gaps) == 40
    # the floor is honoured: no request came back before its retry-after had elapsed
    assert min(retry_gaps) >= retry_s * 0.95, min(retry_gaps)
    # and no stall beyond what the server asked for: the server never sat idle much longer than
    # one retry-after between two requests (a fixed or cumulative back-off would leave long holes)
    stamps = [stamp for stamp, _ in arrivals]
    idle = max(b - a for a, b in itertools.pairwise(stamps))
    assert idle < 3 * retry_s, idle
