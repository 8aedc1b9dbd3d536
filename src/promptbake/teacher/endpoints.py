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
store. When every endpoint has failed ``DOWN_PROBES`` probes in a row (about 7 s of backoff), no
retry has anywhere left to go: the fleet raises :class:`FleetDown`, naming each endpoint and its
last error, as one unreachable server stops a single-endpoint run.

Routing: a request names its model when it is planned (:mod:`promptbake.plan.routing`) and is
admitted only to the endpoints that serve that model: those naming it, and those naming none
(they serve whatever they are asked). Nothing rewrites the model at send time, so an answer is
stored, cached and billed as the model that gave it. Replicas of one model share cache keys with
each other and with a run on a single replica; different models never share an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptbake.errors import TeacherError
from promptbake.plan.routing import label, serves
from promptbake.specification.models import TeacherConfig
from promptbake.teacher.client import AttemptError, ChatClient, ChatResult, Endpoint, RateInfo, RateLimited
from promptbake.teacher.config import remote_endpoint
from promptbake.teacher.limiter import Clock, Limiter, Permit

STREAK = 3  # consecutive failures that take an endpoint out
BACKOFF_START, BACKOFF_CAP = 1.0, 60.0  # seconds out of rotation, doubling while probes fail
DOWN_PROBES = 3  # failed probes in a row on every endpoint (1 + 2 + 4 s out) and the fleet gives up
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


class FleetDown(TeacherError):
    """Every endpoint keeps failing its probes: no attempt has anywhere left to go."""


class _Member:
    """One endpoint of the fleet: its client, its limiter, its health."""

    def __init__(self, endpoint: Endpoint, client: ChatClient, limiter: Limiter, weight: float,
                 model: str | None) -> None:
        self.endpoint = endpoint
        self.model = model  # the one model it serves; None: whatever it is asked
        self.client = client
        self.limiter = limiter
        self.weight = weight
        self.stats = EndpointStats()
        self.streak = 0
        self.out_until = float("-inf")
        self.out_since = float("-inf")  # when it was last taken out
        self.probing = False  # back from a time-out: one request at a time until one succeeds
        self.backoff = BACKOFF_START
        self.outs = 0  # times taken out since its last answer: 1 + the probes that failed
        self.last_error = ""
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
        member = self.member  # admitted for the body's model: sent as planned, never rewritten
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
                 clock: Clock = time.monotonic, models: Sequence[str | None] | None = None) -> None:
        """``models``: the one model each endpoint serves (None, or no list: whatever it is asked)."""
        self.clock = clock
        models = models or [None] * len(members)
        self.members = [_Member(*m, model) for m, model in zip(members, models, strict=True)]
        self._clients = {id(m): _MemberClient(self, m) for m in self.members}
        self.concurrency = _Slots(sum(m.limiter.concurrency.cap for m in self.members))
        self._lock = asyncio.Lock()  # FIFO: only the head waiter watches the endpoints
        self._changed = asyncio.Event()

    async def acquire(self, tokens: int, model: str | None = None) -> Permit:
        """A permit on an endpoint serving ``model`` (any endpoint when None)."""
        serving = [i for i, m in enumerate(self.members) if model is None or serves(m.model, model)]
        if not serving:  # planning refuses such a request (plan/routing.py): this is a guard
            raise TeacherError(f"no endpoint serves model {model!r}: "
                               + ", ".join(f"{m.endpoint.base_url} ({m.model})" for m in self.members))
        async with self._lock:
            while True:
                self._check_alive(serving)
                now = self.clock()
                waits = [(self.members[i].wait(tokens, now), self.members[i].load(), i) for i in serving]
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

    def _check_alive(self, serving: list[int]) -> None:
        """Raise :class:`FleetDown` once every endpoint serving the request (its model's) has failed
        ``DOWN_PROBES`` probes in a row: the others cannot take it."""
        members = [self.members[i] for i in serving]
        if all(m.outs > DOWN_PROBES for m in members):
            each = "; ".join(f"{m.endpoint.where()}: {m.last_error[:200]}" for m in members)
            raise FleetDown(f"every endpoint is down ({DOWN_PROBES} probes in a row failed on each): {each}")

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
        member.outs = 0
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
        member.last_error = str(exc)
        member.streak += 1
        if member.probing or member.streak >= STREAK:
            member.out_since = self.clock()
            member.out_until = member.out_since + member.backoff
            member.backoff = min(member.backoff * 2, BACKOFF_CAP)
            member.probing = True
            member.streak = 0
            member.outs += 1
            member.stats.taken_out += 1
            self._changed.set()  # the head waiter looks again: this may have been the last one up

    def summary(self) -> dict[str, EndpointStats]:
        """Per endpoint (``base_url model``), what it did."""
        return {f"{m.endpoint.base_url} {m.endpoint.model}": m.stats for m in self.members}


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
            # named by the model it serves, or, serving any, by the teacher's (messages only)
            own = config.model_copy(update={
                "base_url": spec.base_url, "model": spec.model or label(config), "models": None, "endpoints": [],
                "api_key_env": spec.api_key_env or config.api_key_env,
            })
            concurrency = spec.concurrency or config.concurrency
            # the local servers we started get no API key (the remote check would send one)
            named = spec.api_key_env is not None or "api_key_env" in config.model_fields_set
            where = (remote_endpoint(own, key_named=named) if config.kind == "remote"
                     else Endpoint(spec.base_url, own.model or "", one_choice=True))
            client = await stack.enter_async_context(
                ChatClient(where, concurrency=concurrency, timeout=config.timeout))
            limiter = Limiter(rpm=spec.rpm or config.rpm, tpm=spec.tpm or config.tpm, concurrency=concurrency)
            members.append((client.endpoint, client, limiter, spec.weight))
        fleet = Fleet(members, models=[spec.model for spec in config.endpoints])
        yield members[0][1], fleet

