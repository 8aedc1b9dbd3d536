"""The worker pool end to end through the loopback server: retries, 429s, auth, budget, laziness."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from fakeserver import FakeServer, Fault, body_hash

from promptbake import errors
from promptbake.teacher.client import ChatClient, ChatResult, Endpoint
from promptbake.teacher.jobs import Job, Outcome
from promptbake.teacher.limiter import Limiter
from promptbake.teacher.pool import Pool, PoolStats

KEY = "sk-pool-test-key-0123456789"


def job(i: int, **body: Any) -> Job:
    return Job(str(i), {"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}],
                        **body}, est_tokens=20)


def free(model: str, prompt: int, completion: int) -> float:
    return 0.0


def run_pool(server: FakeServer, jobs: Iterable[Job] | AsyncIterator[Job], *, concurrency: int = 4,
             timeout: float = 5.0, rpm: float | None = None,
             **pool_args: Any) -> tuple[PoolStats, list[Outcome], Pool]:
    outcomes: list[Outcome] = []
    pool_args.setdefault("max_attempts", 4)
    pool_args.setdefault("cost", free)
    pool_args.setdefault("backoff_base", 0.01)

    async def sink(outcome: Outcome) -> None:
        outcomes.append(outcome)

    async def go() -> tuple[PoolStats, Pool]:
        endpoint = Endpoint(server.base_url, "fake-model", api_key=KEY)
        async with ChatClient(endpoint, timeout=timeout, concurrency=concurrency) as client:
            pool = Pool(client, Limiter(rpm=rpm, concurrency=concurrency), **pool_args)
            # a guard, not a timing assertion: a pool that fails to stop would hang the suite
            return await asyncio.wait_for(pool.run(jobs, sink), 60), pool

    stats, pool = asyncio.run(go())
    return stats, outcomes, pool


def kinds(outcome: Outcome) -> list[str | None]:
    return [attempt.error_kind for attempt in outcome.attempts]


def test_every_job_reaches_the_sink_once():
    with FakeServer(latency_ms=(0, 5)).running() as server:
        stats, outcomes, _ = run_pool(server, (job(i) for i in range(60)))
    assert sorted(int(o.job.id) for o in outcomes) == list(range(60))
    assert all(o.ok for o in outcomes)
    assert {o.result.contents[0].split(": ")[1] for o in outcomes if o.result} == {
        f"q{i}" for i in range(60)}
    assert (stats.done, stats.failed, stats.attempts, stats.retries) == (60, 0, 60, 0)
    assert stats.completion_tokens == sum(o.result.completion_tokens for o in outcomes if o.result)
    assert server.count == 60 and not server.paid_twice()


def test_server_errors_garbage_and_drops_are_retried():
    script: list[Fault | None] = [Fault("500"), Fault("garbage"), Fault("drop")]
    with FakeServer(script=script).running() as server:
        stats, [outcome], _ = run_pool(server, [job(1)], concurrency=1)
    assert outcome.ok
    assert kinds(outcome) == ["http_500", "bad_body", "connection", None]
    assert [a.status for a in outcome.attempts] == [500, 200, None, 200]
    assert stats.retries == 3
    assert server.paid_by_hash[body_hash(job(1).body)] == 1


def test_hang_times_out_and_is_retried():
    with FakeServer(script=[Fault("hang")]).running() as server:
        _, [outcome], _ = run_pool(server, [job(1)], concurrency=1, timeout=0.3)
    assert outcome.ok
    assert kinds(outcome) == ["timeout", None]


def test_retryable_errors_give_up_after_max_attempts():
    with FakeServer(script=[Fault("500")] * 5).running() as server:
        stats, [outcome], _ = run_pool(server, [job(1)], max_attempts=3)
    assert not outcome.ok and not outcome.abandoned
    assert kinds(outcome) == ["http_500"] * 3
    assert outcome.error is not None and "gave up after 3 attempts" in outcome.error
    assert stats.failed == 1 and server.count == 3


def test_429_retry_after_is_waited_by_that_request():
    with FakeServer(script=[Fault("429", retry_after_ms=400)]).running() as server:
        stats, [outcome], _ = run_pool(server, [job(1)], concurrency=1)
    assert outcome.ok and kinds(outcome) == ["rate_limited", None]
    assert stats.throttled == 1
    assert server.arrivals[1] - server.arrivals[0] >= 0.4


def test_429_pauses_the_pool_only_until_the_deadline():
    """No fixed global stall: after a 429 asking for 0.3 s, traffic resumes right after it."""
    with FakeServer(script=[Fault("429", retry_after_ms=300)], latency_ms=5).running() as server:
        stats, _, _ = run_pool(server, (job(i) for i in range(40)), concurrency=4)
    assert stats.done == 40 and stats.throttled == 1
    gaps = [b - a for a, b in itertools.pairwise(server.arrivals)]
    assert max(gaps) < 0.3 + 1.0  # generous slack for a loaded machine; the cookbook stalls 15 s


def test_400_fails_at_once_and_the_run_goes_on():
    with FakeServer(script=[Fault("400")]).running() as server:
        stats, outcomes, _ = run_pool(server, (job(i) for i in range(5)), concurrency=1)
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and kinds(failed[0]) == ["http_400"]
    assert failed[0].error is not None and "HTTP 400" in failed[0].error
    assert (stats.done, stats.failed) == (4, 1)


def test_401_stops_the_run_cancels_in_flight_and_hides_the_key():
    script: list[Fault | None] = [Fault("401", message=f"bad key {KEY}"), Fault("hang"), Fault("hang")]
    with FakeServer(script=script, latency_ms=20).running() as server:
        with pytest.raises(errors.AuthError) as caught:
            run_pool(server, (job(i) for i in range(100)), concurrency=3, timeout=120)
        sent = server.count
    assert KEY not in str(caught.value)
    assert "refused the credentials" in str(caught.value)
    assert sent == 3  # nothing was sent after the 401; the two hung requests were abandoned


def test_rejected_answers_are_retried_with_new_seeds_then_failed_with_raw():
    def check(result: ChatResult) -> Any:
        raise errors.ResponseRejected("expected a list", raw=result.contents[0])

    # the answer follows the seed (identical rejected bytes twice would end the job: see
    # tests/reliability/test_retries.py)
    with FakeServer(responder=lambda body: f"not a list#{body['seed']}").running() as server:
        base = job(1, seed=7)
        stats, [outcome], _ = run_pool(
            server, [Job(base.id, base.body, 20, check=check, reseed=True)], max_attempts=3,
            cost=lambda model, p, c: c * 0.01)
    assert not outcome.ok
    assert kinds(outcome) == ["rejected"] * 3
    assert [a.raw for a in outcome.attempts] == ["not a list#7", "not a list#8", "not a list#9"]
    assert [a.seed for a in outcome.attempts] == [7, 8, 9]
    assert [b["seed"] for b in server.bodies] == [7, 8, 9]
    assert outcome.error is not None and "expected a list" in outcome.error
    assert stats.cost == pytest.approx(3 * 3 * 0.01)  # rejected answers were still paid for


def test_cut_off_answer_is_rejected_then_accepted():
    answers = iter(["one two three four five six", "short answer"])

    def check(result: ChatResult) -> str:
        if result.finish_reasons[0] == "length":
            raise errors.ResponseRejected("cut off", raw=result.contents[0])
        return result.contents[0].upper()

    with FakeServer(responder=lambda body: next(answers)).running() as server:
        base = job(1, max_tokens=3)
        _, [outcome], _ = run_pool(server, [Job(base.id, base.body, 20, check=check)])
    assert outcome.ok and outcome.parsed == "SHORT ANSWER"
    assert [a.raw for a in outcome.attempts] == ["one two three", None]
    assert server.bodies[0] == server.bodies[1]  # no seed: the body is resent unchanged


@pytest.mark.parametrize("concurrency", [1, 4])
def test_max_cost_stops_before_the_budget_is_exceeded(concurrency: int):
    def cost(model: str, prompt: int, completion: int) -> float:
        return completion * 0.1  # worst case (10 tokens) $1.00, actual (5 words) $0.50

    with FakeServer(responder=lambda body: "a b c d e").running() as server:
        stats, outcomes, _ = run_pool(server, (job(i, max_tokens=10) for i in range(100)),
                                      concurrency=concurrency, cost=cost, max_cost=5.5)
    assert stats.stopped_for_budget
    assert stats.cost <= 5.5
    assert server.count == len(outcomes) == stats.done
    if concurrency == 1:  # job k starts while 0.5·(k-1) spent + 1.0 worst case ≤ 5.5
        assert stats.done == 10


def test_jobs_are_pulled_lazily():
    pulled = finished = most_outstanding = 0

    def jobs() -> Iterable[Job]:
        nonlocal pulled
        for i in itertools.count():
            if i == 300:
                return
            pulled += 1
            yield job(i)

    def progress(outcome: Outcome) -> None:
        nonlocal finished, most_outstanding
        most_outstanding = max(most_outstanding, pulled - finished)
        finished += 1

    with FakeServer().running() as server:
        stats, _, _ = run_pool(server, jobs(), concurrency=4, progress=progress)
    assert stats.done == 300
    assert most_outstanding <= 4


def test_async_iterator_of_jobs():
    async def jobs() -> AsyncIterator[Job]:
        for i in range(30):
            await asyncio.sleep(0)
            yield job(i)

    with FakeServer().running() as server:
        stats, outcomes, _ = run_pool(server, jobs(), concurrency=8)
    assert stats.done == 30 and len({o.job.id for o in outcomes}) == 30


def test_fault_storm_loses_nothing_and_pays_nothing_twice():
    rates: dict[Any, float] = {"500": 0.1, "garbage": 0.1, "drop": 0.1}
    script = [Fault("429", retry_after_ms=20)] * 3
    with FakeServer(fault_rates=rates, script=script, latency_ms=(0, 3)).running() as server:
        stats, _, _ = run_pool(server, (job(i) for i in range(200)), concurrency=8,
                               max_attempts=12)
    assert stats.done == 200 and stats.failed == 0
    assert stats.attempts == server.count
    assert stats.throttled == 3
    assert not server.paid_twice()
    assert sum(server.paid_by_hash.values()) == 200


def test_429s_shrink_the_pool_concurrency_and_success_grows_it_back():
    script = [Fault("429", retry_after_ms=10)] * 2
    with FakeServer(script=script).running() as server:
        _, [outcome], pool = run_pool(server, [job(1)], concurrency=8)
    assert kinds(outcome) == ["rate_limited", "rate_limited", None]
    # 8 → 4 on the first 429; the retry was sent after that cut, so its 429 cuts again; +1/2
    assert pool.limiter.concurrency.limit == 2.5


def test_limit_unknown_to_us_is_learned_from_the_headers():
    with FakeServer(rpm=600, burst_s=1).running() as server:
        stats, _, pool = run_pool(server, (job(i) for i in range(30)), concurrency=4)
    assert stats.done == 30
    assert pool.limiter.requests is not None
    assert pool.limiter.requests.per_minute == 600


def test_server_enforced_limit_far_below_ours_still_completes_every_job():
    """A server with a 2-request burst and a client told 10× its real limit: the 429 dance
    (retry-after, pause, drained buckets, AIMD) must get every job through, none paid twice."""
    with FakeServer(rpm=1200, burst_s=0.1).running() as server:
        stats, outcomes, _ = run_pool(server, (job(i) for i in range(20)), concurrency=8,
                                      rpm=12_000, max_attempts=20)
    assert stats.done == 20 and all(o.ok for o in outcomes)
    assert stats.throttled == server.statuses["429"]
    assert not server.paid_twice()


def test_paid_attempts_of_an_interrupted_job_still_reach_the_sink():
    """Job 0 is paid once (rejected) and then hangs; job 1 keeps failing until job 0's second
    attempt is on the wire, then gets a 401. The run stops, but job 0's paid answer is kept."""
    seen: list[str] = []

    def responder(body: dict[str, Any]) -> str | Fault:
        question = body["messages"][-1]["content"]
        seen.append(question)
        if question == "q0":
            return "unusable" if seen.count("q0") == 1 else Fault("hang")
        return Fault("401") if seen.count("q0") == 2 else Fault("500")

    def check(result: ChatResult) -> Any:
        raise errors.ResponseRejected("unusable", raw=result.contents[0])

    received: list[Outcome] = []
    jobs = [Job(j.id, j.body, 20, check=check) for j in (job(0), job(1))]
    with FakeServer(responder=responder).running() as server, pytest.raises(errors.AuthError):
        run_pool(server, jobs, concurrency=2, max_attempts=50, timeout=120, progress=received.append)
    [interrupted] = received
    assert interrupted.job.id == "0" and interrupted.abandoned and not interrupted.ok
    assert [a.raw for a in interrupted.attempts] == ["unusable"]


def test_exhausted_quota_stops_the_run():
    with FakeServer(script=[Fault("quota")]).running() as server:
        with pytest.raises(errors.TeacherError, match="exceeded your current quota"):
            run_pool(server, (job(i) for i in range(50)), concurrency=1)
        assert server.count == 1


def test_cancelled_run_hands_paid_attempts_to_the_sink_before_it_ends():
    """Ctrl-C arrives as a cancellation of run(): the answer already paid for must not be lost."""
    seen: list[str] = []

    def responder(body: dict[str, Any]) -> str | Fault:
        seen.append(body["messages"][-1]["content"])
        return "unusable" if len(seen) == 1 else Fault("hang")

    def check(result: ChatResult) -> Any:
        raise errors.ResponseRejected("unusable", raw=result.contents[0])

    received: list[Outcome] = []

    async def sink(outcome: Outcome) -> None:
        await asyncio.sleep(0.05)  # a writer that takes its time
        received.append(outcome)

    async def go(server: FakeServer) -> None:
        async with ChatClient(Endpoint(server.base_url, "fake-model"), timeout=120) as client:
            pool = Pool(client, Limiter(concurrency=1), max_attempts=5, cost=free,
                        backoff_base=0.01)
            base = job(0)
            run = asyncio.create_task(pool.run([Job("0", base.body, 20, check=check)], sink))
            while len(seen) < 2:  # the second attempt is hanging on the server
                await asyncio.sleep(0.01)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            [interrupted] = received  # delivered before run() ended, not at loop shutdown
            assert interrupted.abandoned and [a.raw for a in interrupted.attempts] == ["unusable"]

    with FakeServer(responder=responder).running() as server:
        asyncio.run(asyncio.wait_for(go(server), 60))


def test_an_answer_is_committed_before_its_worker_sends_again():
    """The writer's group commit: ``put`` returns once the answer is in the store, so a worker holds
    at most one answer the store lacks, and a kill -9 re-pays at most ``concurrency`` answers (with
    a queue in front of the writer, the queued ones were lost too)."""
    import time

    from promptbake.teacher import online

    committed: list[int] = []

    class SlowStore:
        def record(self, rows: list[int]) -> None:  # slow as a busy disk
            time.sleep(0.05)
            committed.extend(rows)

    async def main() -> list[int]:
        writer = online._Writer(store=SlowStore())

        async def worker(i: int) -> None:
            await writer.put(i)
            assert i in committed, (i, committed)

        await asyncio.gather(*(worker(i) for i in range(12)))
        await writer.close()
        return committed

    assert sorted(asyncio.run(main())) == list(range(12))
