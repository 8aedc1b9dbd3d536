"""Many endpoints behind one pool: replicas of a model, several providers, several local servers.

The pool asks its limiter for admission before every attempt. With several endpoints that limiter
is a :class:`Fleet`: it admits the attempt to whichever endpoint has room *now* (a free
concurrency slot and tokens in its buckets), and the permit it returns carries that endpoint's
client, so the pool sends there. Idle capacity therefore pulls the next request, and a slow or
rate-limited endpoint never holds the others back, as round-robin would.

Each endpoint keeps everything the single-endpoint path has, of its own: RPM/TPM buckets synced
from its ``x-ratelimit-*`` headers, AIMD concurrency halved on its 429s and timeouts, and here also
on rising latency, since self-hosted servers (vLLM, llama.cpp) signal overload by slowing down
rather than with 429s. An endpoint that keeps failing (connection errors, 5xx, timeouts:
``STREAK`` in a row) is taken out for a backoff that doubles up to ``BACKOFF_CAP``, then probed
with one request; its failed attempts go back to the pool, which retries them like any failed
attempt, and the fleet admits the retries elsewhere. Nothing is lost, and every attempt is in the
store.

Cache keys: every endpoint's answer is stored under the request's planned model. Replicas of one
model plan with that model's name, so they share cache keys with each other and with a run on a
single replica; a fleet of different models plans with the models' names joined by ``+``, so its
answers are never served to a run on one of those models, nor theirs to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from promptbake.specification.models import TeacherConfig
from promptbake.teacher.client import AttemptError, ChatClient, ChatResult, Endpoint, RateInfo, RateLimited
from promptbake.teacher.config import model_name, remote_endpoint
from promptbake.teacher.limiter import Clock, Limiter, Permit

STREAK = 3  # consecutive failures that take an endpoint out
BACKOFF_START, BACKOFF_CAP = 1.0, 60.0  # seconds out of rotation, doubling while probes fail
# Latency: an endpoint whose recent latency (EWMA over ~20 answers, smooth enough that 50-500 ms
# of ordinary spread never doubles it) exceeds LATENCY_RISE x its lowest is overloaded: its
# concurrency is halved, as on a 429. LATENCY_SAMPLES answers first, to learn the floor.
LATENCY_RISE, LATENCY_ALPHA, LATENCY_SAMPLES = 2.0, 0.05, 40
LATENCY_SLACK_S = 0.02  # rises smaller than this are jitter, not overload


@dataclass
class EndpointStats:
    """What one endpoint did: for the summary (``requests`` counts attempts sent to it)."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: list[float] = field(default_factory=list)  # successful attempts
    taken_out: int = 0

    def merge(self, other: EndpointStats) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.errors.update(other.errors)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_s.extend(other.latency_s)
        self.taken_out += other.taken_out

    def describe(self) -> str:
        latency = sorted(self.latency_s)
        if latency:
            p50, p95 = latency[len(latency) // 2], latency[min(len(latency) - 1, math.ceil(0.95 * len(latency)) - 1)]
            timing = f"latency p50 {p50 * 1000:,.0f} ms, p95 {p95 * 1000:,.0f} ms"
        else:
            timing = "no answers"
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items())) or "none"
        out = f", taken out {self.taken_out}x" if self.taken_out else ""
        return (f"{self.requests} requests, {self.ok} ok, {self.prompt_tokens + self.completion_tokens:,} tokens, "
                f"{timing}, errors: {errors}{out}")


class _Member:
    """One endpoint of the fleet: its client, its limiter, its health."""

    def __init__(self, endpoint: Endpoint, client: ChatClient, limiter: Limiter, weight: float) -> None:
        self.endpoint = endpoint
        self.client = client
        self.limiter = limiter
        self.weight = weight
        self.stats = EndpointStats()
        self.streak = 0
        self.out_until = float("-inf")
        self.out_since = float("-inf")  # when it was last taken out
        self.probing = False  # back from a time-out: one request at a time until one succeeds
        self.backoff = BACKOFF_START
        self.recent: float | None = None  # EWMA of latency, seconds
        self.floor = float("inf")  # lowest EWMA seen

    def wait(self, tokens: int, now: float) -> float:
        """Seconds until this endpoint could take a request of ``tokens`` (inf: when a slot frees)."""
        if self.out_until > now:
            return self.out_until - now
        slots = self.limiter.concurrency
        if slots.inflight >= int(slots.limit) or (self.probing and slots.inflight > 0):
            return math.inf
        limiter = self.limiter
        return max(limiter.paused_until - now,
                   limiter.requests.wait_time(1) if limiter.requests else 0.0,
                   limiter.tokens.wait_time(tokens) if limiter.tokens else 0.0, 0.0)

    def load(self) -> float:
        slots = self.limiter.concurrency
        return (slots.inflight + 1) / (slots.limit * self.weight)


class _MemberClient:
    """The client an admitted attempt is sent through: the endpoint's own, plus health accounting."""

    def __init__(self, fleet: Fleet, member: _Member) -> None:
        self.fleet = fleet
        self.member = member

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        member = self.member
        if body.get("model") != member.endpoint.model:
            body = {**body, "model": member.endpoint.model}
        member.stats.requests += 1
        start = self.fleet.clock()
        try:
            result = await member.client.chat(body)
        except AttemptError as exc:
            self.fleet.failed(member, exc, start)
            raise
        self.fleet.answered(member, result, start)
        return result


@dataclass
class _Slots:
    """What the pool reads from a limiter to size its workers."""

    cap: int


class Fleet:
    """The pool's limiter over several endpoints (same methods as :class:`Limiter`)."""

    def __init__(self, members: list[tuple[Endpoint, ChatClient, Limiter, float]],
                 clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.members = [_Member(*m) for m in members]
        self._clients = {id(m): _MemberClient(self, m) for m in self.members}
        self.concurrency = _Slots(sum(m.limiter.concurrency.cap for m in self.members))
        self._lock = asyncio.Lock()  # FIFO: only the head waiter watches the endpoints
        self._changed = asyncio.Event()

    async def acquire(self, tokens: int) -> Permit:
        async with self._lock:
            while True:
                now = self.clock()
                waits = [(m.wait(tokens, now), m.load(), i) for i, m in enumerate(self.members)]
                wait, _, at = min(waits)
                if wait <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    # a slot freed (release) wakes us at once; a bucket refill or a probe time we sleep to
                    await asyncio.wait_for(self._changed.wait(), timeout=min(wait, 1.0))
            member = self.members[at]
            permit = await member.limiter.acquire(tokens)
        permit.client = self._clients[id(member)]
        return permit

    def _member(self, permit: Permit) -> _Member:
        assert isinstance(permit.client, _MemberClient)
        return permit.client.member

    def release(self, permit: Permit) -> None:
        self._member(permit).limiter.release(permit)
        self._changed.set()

    def observe(self, permit: Permit, rate: RateInfo | None) -> None:
        self._member(permit).limiter.observe(permit, rate)

    def adjust(self, permit: Permit, actual: int) -> None:
        self._member(permit).limiter.adjust(permit, actual)

    def succeeded(self) -> None:
        """Nothing: the pool does not say which endpoint; :meth:`answered` already counted it."""

    def timed_out(self, permit: Permit) -> None:
        self._member(permit).limiter.timed_out(permit)

    def throttled(self, permit: Permit, retry_after: float) -> None:
        # only this endpoint pauses: the others keep serving
        self._member(permit).limiter.throttled(permit, retry_after)

    # ---- health, from the member clients ---------------------------------------------------

    def answered(self, member: _Member, result: ChatResult, start: float) -> None:
        now = self.clock()
        stats = member.stats
        stats.ok += 1
        stats.prompt_tokens += result.prompt_tokens
        stats.completion_tokens += result.completion_tokens
        stats.latency_s.append(now - start)
        member.streak = 0
        if member.probing and member.out_until <= now:
            member.probing, member.backoff = False, BACKOFF_START
        member.limiter.succeeded()
        self._latency(member, now - start, start)

    def _latency(self, member: _Member, latency: float, start: float) -> None:
        member.recent = latency if member.recent is None else (
            LATENCY_ALPHA * latency + (1 - LATENCY_ALPHA) * member.recent)
        if len(member.stats.latency_s) < LATENCY_SAMPLES:
            return
        member.floor = min(member.floor, member.recent)
        if member.recent > LATENCY_RISE * member.floor and member.recent - member.floor > LATENCY_SLACK_S:
            member.limiter.concurrency.decrease(start)  # once per round trip, like a 429

    def failed(self, member: _Member, exc: AttemptError, start: float) -> None:
        member.stats.errors[exc.kind] += 1
        unhealthy = exc.kind in ("connection", "timeout") or (exc.status or 0) >= 500
        if not unhealthy or isinstance(exc, RateLimited) or start < member.out_since:
            return  # an attempt sent before the last take-out says nothing new about the endpoint
        member.streak += 1
        if member.probing or member.streak >= STREAK:
            member.out_since = self.clock()
            member.out_until = member.out_since + member.backoff
            member.backoff = min(member.backoff * 2, BACKOFF_CAP)
            member.probing = True
            member.streak = 0
            member.stats.taken_out += 1

    def summary(self) -> dict[str, EndpointStats]:
        """Per endpoint (``base_url model``), what it did."""
        return {f"{m.endpoint.base_url} {m.endpoint.model}": m.stats for m in self.members}


def fleet_model(config: TeacherConfig) -> str:
    """The model requests are planned (and cached) under: see the module docstring."""
    models = sorted({e.model or model_name(config) for e in config.endpoints})
    return "+".join(models)


@contextlib.asynccontextmanager
async def connect(endpoint: Endpoint, config: TeacherConfig) -> AsyncIterator[tuple[ChatClient, Limiter | Fleet]]:
    """The client and limiter the pool runs with: one endpoint's, or a :class:`Fleet` over
    ``config.endpoints`` (then the client is only a fallback; each permit names its own)."""
    if not config.endpoints:
        async with ChatClient(endpoint, concurrency=config.concurrency, timeout=config.timeout) as client:
            yield client, Limiter(rpm=config.rpm, tpm=config.tpm, concurrency=config.concurrency)
        return
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for spec in config.endpoints:
            own = config.model_copy(update={
                "base_url": spec.base_url, "model": spec.model or model_name(config),
                "api_key_env": spec.api_key_env or config.api_key_env,
            })
            concurrency = spec.concurrency or config.concurrency
            # the local servers we started get no API key (the remote check would send one)
            where = remote_endpoint(own) if config.kind == "remote" else Endpoint(spec.base_url, own.model or "",
                                                                                 one_choice=True)
            client = await stack.enter_async_context(
                ChatClient(where, concurrency=concurrency, timeout=config.timeout))
            limiter = Limiter(rpm=spec.rpm or config.rpm, tpm=spec.tpm or config.tpm, concurrency=concurrency)
            members.append((client.endpoint, client, limiter, spec.weight))
        fleet = Fleet(members)
        yield members[0][1], fleet

