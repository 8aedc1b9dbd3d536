"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

Teacher doubles must be real servers (STYLE.md): a monkeypatched SDK would hide exactly the bugs we
care about (header parsing, dropped connections, timeouts, the 429 dance). The server speaks
``POST /v1/chat/completions`` and ``GET /v1/models``, can inject every fault the pool must survive,
can enforce RPM/TPM like OpenAI (token buckets refilled continuously, with the
``x-ratelimit-*`` headers on every answer), and records what it was asked so tests can prove that
nothing was paid for twice.

Three ways to use it:

* sync tests: ``with FakeServer(...).running() as srv: ... srv.base_url``
  (the server runs on its own event loop in a background thread);
* async code: ``async with FakeServer(...) as srv: ...``;
* a separate process (benchmarks, ``kill -9`` tests):
  ``python tests/fakeserver.py --port 0 --latency-ms 50-500 --rpm 6000`` prints
  ``READY http://127.0.0.1:PORT/v1`` on stdout; ``GET /_stats`` returns what it recorded
  (``paid_by_hash`` counts successful answers per :func:`body_hash`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import web

FaultKind = Literal["429", "quota", "500", "garbage", "hang", "drop", "401", "400", "404"]
FAULT_KINDS: tuple[FaultKind, ...] = ("429", "quota", "500", "garbage", "hang", "drop", "401", "400", "404")


@dataclass(frozen=True)
class Fault:
    """One injected failure. A responder may return one to fail a specific request."""

    kind: FaultKind
    retry_after_ms: float | None = 250.0  # for 429: sent as retry-after-ms and retry-after
    hang_s: float = 3600.0  # for hang: how long before the server gives up on its own
    message: str | None = None  # overrides the error message (e.g. to echo a key back)


@dataclass(frozen=True)
class Raw:
    """An answer sent exactly as given: any status, headers and bytes. For the shapes a real
    server should never send (SSE nobody asked for, HTML, ``choices: []``, a gzip bomb, lone
    surrogates, ``usage`` of Infinity) and for odd headers (``retry-after: inf``). A 200 counts as
    paid."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def completion(cls, choices: list[dict[str, Any]], usage: Any = None, **extra: Any) -> Raw:
        """A chat completion with these ``choices`` written as JSON text (``usage`` may hold
        ``float("inf")``: Python writes it as the non-standard ``Infinity``)."""
        payload = {"id": "chatcmpl-raw", "object": "chat.completion", "model": "fake-model",
                   "choices": choices, **({"usage": usage} if usage is not None else {}), **extra}
        return cls(json.dumps(payload).encode())

    @staticmethod
    def choice(content: Any, index: int = 0, **message: Any) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop"}


Responder = Callable[[dict[str, Any]], "str | dict[str, Any] | Fault | Raw"]


def body_hash(body: dict[str, Any]) -> str:
    """Hash of a request body independent of key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Roughly 4 characters a token plus the chat format's per-message overhead."""
    chars = 0
    messages = body.get("messages") or []
    for message in messages:
        content = message.get("content")
        chars += len(content) if isinstance(content, str) else len(json.dumps(content))
    return chars // 4 + 3 * len(messages) + 3


def max_completion(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return int(value) if value is not None else None


class Bucket:
    """A continuously refilled token bucket: what OpenAI-style limits look like from outside."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.rate)

    def headers(self, kind: str) -> dict[str, str]:
        reset = max(0.0, (self.capacity - self.level) / self.rate)
        return {
            f"x-ratelimit-limit-{kind}": str(int(self.limit)),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{kind}": f"{reset:.3f}s",
        }


@dataclass
class FakeServer:
    """Configure, then start with ``running()`` (sync) or ``async with`` (async)."""

    responder: Responder | None = None
    latency_ms: float | tuple[float, float] = 0.0
    latency_per_inflight_ms: float = 0.0  # overload as self-hosted servers show it: slower, no 429
    fault_rates: dict[FaultKind, float] = field(default_factory=dict)
    script: list[Fault | None] = field(default_factory=list)  # consumed in arrival order
    rpm: float | None = None
    tpm: float | None = None
    burst_s: float = 60.0  # how many seconds of the limit the buckets hold
    finish_reason: str = "stop"
    model: str = "fake-model"
    # how answers report usage: "normal"; "omit" (no usage key, as some proxies do); "garbage"
    # (strings and NaN, which must not count as free)
    usage_mode: Literal["normal", "omit", "garbage"] = "normal"
    record_bodies: bool = True
    seed: int = 0
    port: int = 0
    # Batch API: how many status checks find a batch still running, how each created batch ends
    # (in creation order; "completed" when the list runs out): "completed", "expired:N" or
    # "cancelled:N" (N requests answered first), "failed" (refused at validation); upload limits
    batch_polls: int = 1
    batch_ends: list[str] = field(default_factory=list)
    max_file_lines: int = 50_000
    max_file_bytes: int = 200_000_000

    # what the server saw
    count: int = field(default=0, init=False)
    bodies: list[dict[str, Any]] = field(default_factory=list, init=False)
    by_hash: Counter[str] = field(default_factory=Counter, init=False)  # every request
    paid_by_hash: Counter[str] = field(default_factory=Counter, init=False)  # 200s with usage
    statuses: Counter[str] = field(default_factory=Counter, init=False)
    auth_headers: list[str | None] = field(default_factory=list, init=False)
    cookies: list[str | None] = field(default_factory=list, init=False)  # each chat request's Cookie header
    arrivals: list[float] = field(default_factory=list, init=False)  # time.monotonic() per request
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict, init=False)
    uploads: list[str] = field(default_factory=list, init=False)  # ids of accepted batch input files
    batches: dict[str, FakeBatch] = field(default_factory=dict, init=False)  # in creation order
    batch_lines: int = field(default=0, init=False)  # requests answered inside batches
    connections: Counter[str] = field(default_factory=Counter, init=False)  # requests per client host:port

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._answered = 0
        self._inflight = 0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._rpm = Bucket(self.rpm, self.burst_s) if self.rpm else None
        self._tpm = Bucket(self.tpm, self.burst_s) if self.tpm else None
        self.base_url = ""

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stats", self._stats)
        self._add_batch_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        self._closing.set()  # wakes hung handlers so shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def running(self) -> contextlib.AbstractContextManager[FakeServer]:
        """Run on a private loop in a daemon thread, so sync tests can drive any client."""
        return in_background(self)

    # ---- recorded facts --------------------------------------------------------------------

    def paid_twice(self) -> list[str]:
        """Hashes of bodies answered successfully more than once."""
        return [h for h, n in self.paid_by_hash.items() if n > 1]

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.count,
            "statuses": dict(self.statuses),
            "paid": sum(self.paid_by_hash.values()),
            "paid_by_hash": dict(self.paid_by_hash),
        }

    # ---- handlers --------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def _next_fault(self, body: dict[str, Any]) -> Fault | Raw | str | dict[str, Any] | None:
        if self.script:
            scripted = self.script.pop(0)
            if scripted is not None:
                return scripted
        for kind, rate in self.fault_rates.items():
            if rate and self._rng.random() < rate:
                return Fault(kind)
        if self.responder is not None:
            return self.responder(body)
        return None

    async def _sleep_latency(self) -> None:
        latency = self.latency_ms
        delay = self._rng.uniform(*latency) if isinstance(latency, tuple) else latency
        self._inflight += 1
        delay += self.latency_per_inflight_ms * self._inflight
        try:
            if delay > 0:
                await asyncio.sleep(delay / 1000)
        finally:
            self._inflight -= 1

    def _limit_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._rpm:
            headers.update(self._rpm.headers("requests"))
        if self._tpm:
            headers.update(self._tpm.headers("tokens"))
        return headers

    def _throttle(self, reserve: int) -> float:
        """Take this request from the buckets, or return the seconds to wait (a 429)."""
        wait = 0.0
        for bucket, amount in ((self._rpm, 1), (self._tpm, reserve)):
            if bucket is not None:
                bucket.refill()
                wait = max(wait, bucket.wait_for(amount))
        if wait > 0:
            return wait
        if self._rpm:
            self._rpm.level -= 1
        if self._tpm:
            self._tpm.level -= reserve
        return 0.0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.count += 1
        if self.record_bodies:
            self.arrivals.append(time.monotonic())
        self.auth_headers.append(request.headers.get("Authorization"))
        self.cookies.append(request.headers.get("Cookie"))
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.connections[f"{peer[0]}:{peer[1]}" if peer else "?"] += 1
        try:
            body = json.loads(raw)
        except ValueError:
            self.statuses["400"] += 1
            return _error(400, "invalid_request_error", "could not parse the JSON body", None)
        if self.record_bodies:
            self.bodies.append(body)
        digest = body_hash(body)
        self.by_hash[digest] += 1

        # Limits are counted on arrival (as OpenAI does), so a 429 comes back without latency.
        prompt_tokens = estimate_prompt_tokens(body)
        n = int(body.get("n") or 1)
        wait = self._throttle(prompt_tokens + (max_completion(body) or 0) * n)
        limit_headers = self._limit_headers()
        if wait > 0:
            self.statuses["429"] += 1
            return _error(
                429, "requests", f"Rate limit reached; try again in {wait * 1000:.0f}ms.",
                "rate_limit_exceeded", {**limit_headers, **_retry_headers(wait * 1000)},
            )

        await self._sleep_latency()
        decision = self._next_fault(body)
        if isinstance(decision, Fault):
            return await self._fault(request, decision)
        if isinstance(decision, Raw):
            self.statuses[str(decision.status)] += 1
            if decision.status == 200:
                self.paid_by_hash[digest] += 1
            headers = {"Content-Type": decision.content_type, **decision.headers}
            return web.Response(body=decision.body, status=decision.status, headers=headers)

        payload = self._completion(body, decision, digest, prompt_tokens)
        return web.json_response(payload, headers=limit_headers)

    def _completion(self, body: dict[str, Any], decision: str | dict[str, Any] | None, digest: str,
                    prompt_tokens: int) -> dict[str, Any]:
        """A successful chat completion for ``body``, counted as paid (online or in a batch)."""
        n = int(body.get("n") or 1)
        contents = [self._content(body, decision, i) for i in range(n)]
        cap = max_completion(body)
        choices = []
        completion_tokens = 0
        for i, content in enumerate(contents):
            words = content.split()
            finish = self.finish_reason
            if cap is not None and len(words) > cap:
                content, finish = " ".join(words[:cap]), "length"
            completion_tokens += len(content.split())
            choices.append({
                "index": i,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
                "logprobs": None,
            })
        self._answered += 1
        self.paid_by_hash[digest] += 1
        self.statuses["200"] += 1
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{self._answered}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_fake",
        }
        if self.usage_mode == "omit":
            del payload["usage"]
        elif self.usage_mode == "garbage":
            payload["usage"] = {"prompt_tokens": "many", "completion_tokens": math.nan, "total_tokens": None}
        return payload

    def _content(self, body: dict[str, Any], decision: str | dict[str, Any] | None, i: int) -> str:
        if isinstance(decision, dict):
            return json.dumps(decision)
        if isinstance(decision, str):
            return decision
        last_user = next(
            (m.get("content") for m in reversed(body.get("messages") or []) if m.get("role") == "user"),
            "",
        )
        return f"echo {self._answered} {i}: {last_user}"

    async def _fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        self.statuses[fault.kind] += 1
        if fault.kind == "429":
            headers = _retry_headers(fault.retry_after_ms) if fault.retry_after_ms is not None else {}
            return _error(429, "requests", fault.message or "Rate limit reached for requests.",
                          "rate_limit_exceeded", {**self._limit_headers(), **headers})
        if fault.kind == "quota":
            return _error(429, "insufficient_quota",
                          "You exceeded your current quota, please check your plan and billing details.",
                          "insufficient_quota", self._limit_headers())
        if fault.kind == "500":
            return _error(500, "server_error",
                          fault.message or "The server had an error processing your request.", None,
                          self._limit_headers())
        if fault.kind == "401":
            return _error(401, "invalid_request_error", fault.message or "Incorrect API key provided.",
                          "invalid_api_key", self._limit_headers())
        if fault.kind == "400":
            return _error(400, "invalid_request_error",
                          fault.message or "Invalid value for 'messages'.", None, self._limit_headers())
        if fault.kind == "404":
            return _error(404, "invalid_request_error",
                          fault.message or "The model does not exist or you do not have access to it.",
                          "model_not_found", self._limit_headers())
        if fault.kind == "garbage":
            return web.Response(status=200, text="<html>upstream proxy says hello</html>",
                                content_type="application/json")
        if fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.hang_s)
            return _error(504, "server_error", "gave up hanging", None)
        # drop: start a chunked answer, then cut the connection halfway through it
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"id": "chatcmpl-dropped", "choices": [')
        if request.transport is not None:
            request.transport.close()
        return response


    # ---- Batch API -------------------------------------------------------------------------
    # Files and batches as OpenAI serves them. A batch answers its lines with the same responder,
    # faults and accounting as online requests, a share of them on each status check, and ends
    # after ``batch_polls`` checks the way ``batch_ends`` says.

    def _add_batch_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._file_upload)
        app.router.add_get("/v1/files", self._file_list)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._batch_create)
        app.router.add_get("/v1/batches", self._batch_list)
        app.router.add_get("/v1/batches/{id}", self._batch_get)
        app.router.add_post("/v1/batches/{id}/cancel", self._batch_cancel)

    def _add_file(self, name: str, purpose: str, data: bytes) -> str:
        file_id = f"file-{len(self.files) + 1:04d}"
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}
        self.files[file_id] = (meta, data)
        return file_id

    async def _file_upload(self, request: web.Request) -> web.Response:
        self.auth_headers.append(request.headers.get("Authorization"))
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose"))
        if not isinstance(upload, web.FileField) or purpose != "batch":
            return _error(400, "invalid_request_error", "expected a file with purpose=batch", None)
        data = upload.file.read()
        lines = data.count(b"\n")
        if lines > self.max_file_lines or len(data) > self.max_file_bytes:
            self.statuses["file_refused"] += 1
            return _error(400, "invalid_request_error",
                          f"File is too large: {lines} requests, {len(data)} bytes (limits: {self.max_file_lines} "
                          f"requests, {self.max_file_bytes} bytes).", "file_too_large")
        file_id = self._add_file(upload.filename, purpose, data)
        self.uploads.append(file_id)
        return web.json_response(self.files[file_id][0])

    async def _file_list(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [meta for meta, _ in reversed(self.files.values()) if purpose in (None, meta["purpose"])]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _file_content(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["id"])
        if found is None:
            return _error(404, "invalid_request_error", "No such File object", None)
        return web.Response(body=found[1], content_type="application/octet-stream")

    async def _batch_create(self, request: web.Request) -> web.Response:
        params = await request.json()
        found = self.files.get(params.get("input_file_id", ""))
        if found is None:
            return _error(404, "invalid_request_error", "No such File object", None)
        lines = [json.loads(line) for line in found[1].splitlines() if line.strip()]
        ends = self.batch_ends[len(self.batches)] if len(self.batches) < len(self.batch_ends) else "completed"
        batch = FakeBatch(f"batch_{len(self.batches) + 1:04d}", params["input_file_id"], lines, ends,
                          params.get("metadata"))
        self.batches[batch.id] = batch
        return web.json_response(batch.view())

    async def _batch_list(self, request: web.Request) -> web.Response:
        data = [b.view() for b in reversed(self.batches.values())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _batch_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "invalid_request_error", "No such Batch object", None)
        self._advance(batch)
        return web.json_response(batch.view())

    async def _batch_cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "invalid_request_error", "No such Batch object", None)
        if batch.status not in FakeBatch.TERMINAL:
            batch.status = "cancelling"
        return web.json_response(batch.view())

    def _advance(self, batch: FakeBatch) -> None:
        """One status check's worth of progress: a share of the lines, or the end."""
        if batch.status in FakeBatch.TERMINAL:
            return
        batch.polls += 1
        if batch.status == "cancelling":
            self._end(batch, "cancelled")
            return
        kind, _, limit = batch.ends.partition(":")
        if kind == "failed":
            batch.errors = {"object": "list", "data": [
                {"code": "invalid_request", "message": "The batch was refused at validation.", "line": 1}]}
            batch.status = "failed"
            return
        answer_upto = len(batch.lines) if kind == "completed" else min(int(limit), len(batch.lines))
        if batch.polls > self.batch_polls:
            self._answer(batch, answer_upto)
            self._end(batch, kind)
        else:
            batch.status = "in_progress"
            self._answer(batch, min(answer_upto, len(batch.lines) * batch.polls // (self.batch_polls + 1)))

    def _answer(self, batch: FakeBatch, upto: int) -> None:
        for line in batch.lines[batch.answered:upto]:
            body = line["body"]
            digest = body_hash(body)
            self.by_hash[digest] += 1
            self.batch_lines += 1
            decision = self._next_fault(body)
            record: dict[str, Any] = {"id": f"batch_req_{self.batch_lines}", "custom_id": line["custom_id"],
                                      "error": None}
            if isinstance(decision, Fault):
                status = {"429": 429, "quota": 429, "401": 401, "400": 400}.get(decision.kind, 500)
                self.statuses[f"batch_{status}"] += 1
                error = {"message": decision.message or f"injected {decision.kind}", "type": "server_error",
                         "param": None, "code": None}
                record["response"] = {"status_code": status, "request_id": f"req_{self.batch_lines}",
                                      "body": {"error": error}}
                batch.failed.append(record)
            else:
                payload = self._completion(body, decision, digest, estimate_prompt_tokens(body))
                record["response"] = {"status_code": 200, "request_id": f"req_{self.batch_lines}", "body": payload}
                batch.output.append(record)
        batch.answered = max(batch.answered, upto)

    def _end(self, batch: FakeBatch, status: str) -> None:
        """Finish: requests never run go to the error file; output order is not the input's."""
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        if code is not None:
            for line in batch.lines[batch.answered:]:
                batch.failed.append({"id": f"batch_req_x{len(batch.failed)}", "custom_id": line["custom_id"],
                                     "response": None,
                                     "error": {"code": code, "message": f"This request was not run: {status}."}})
        for records, attr in ((batch.output, "output_file_id"), (batch.failed, "error_file_id")):
            if records:
                data = "".join(json.dumps(r) + "\n" for r in reversed(records)).encode()
                setattr(batch, attr, self._add_file(f"{batch.id}_{attr}.jsonl", "batch_output", data))
        batch.status = status


@dataclass
class FakeBatch:
    """A batch at the stand-in: its input lines and what has been answered so far."""

    TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

    id: str
    input_file_id: str
    lines: list[dict[str, Any]]
    ends: str
    metadata: dict[str, str] | None = None
    status: str = "validating"
    polls: int = 0
    answered: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict[str, Any] | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "metadata": self.metadata,
            "request_counts": {"total": len(self.lines), "completed": len(self.output), "failed": len(self.failed)},
        }


def _retry_headers(ms: float) -> dict[str, str]:
    return {"retry-after-ms": f"{ms:.0f}", "retry-after": str(max(1, math.ceil(ms / 1000)))}


S = TypeVar("S", bound="Startable")


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@contextlib.contextmanager
def in_background(server: S) -> Iterator[S]:
    """Serve ``server`` on a private loop in a daemon thread until the block ends (every loopback
    stand-in's ``running()``)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _error(status: int, type_: str, message: str, code: str | None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@contextlib.asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[FakeServer]:
    async with FakeServer(**config) as server:
        yield server


def _latency(text: str) -> float | tuple[float, float]:
    if "-" in text:
        low, high = text.split("-", 1)
        return (float(low), float(high))
    return float(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=_latency, default=0.0, help="N or LOW-HIGH")
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    parser.add_argument("--burst-s", type=float, default=60.0,
                        help="seconds of the limit a bucket holds (OpenAI enforces per second: 1)")
    parser.add_argument("--fail", action="append", default=[], metavar="KIND=RATE",
                        help=f"fault rate, KIND in {', '.join(FAULT_KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--responder", choices=["echo", "grid", "readme"], default="echo",
                        help="grid: JSON lists for list prompts, short replies otherwise; readme: also judge "
                             "verdicts, the formatting task's answers and structured output (tests/helpers.py)")
    args = parser.parse_args(argv)
    responder = None
    if args.responder == "grid":
        from helpers import list_then_reply_responder

        responder = list_then_reply_responder()
    elif args.responder == "readme":
        from helpers import readme_responder

        responder = readme_responder()
    rates = {kind: float(rate) for kind, rate in (item.split("=", 1) for item in args.fail)}
    server = FakeServer(responder=responder, latency_ms=args.latency_ms, rpm=args.rpm, tpm=args.tpm,
                        burst_s=args.burst_s, fault_rates=rates, record_bodies=False, seed=args.seed,
                        port=args.port)

    async def serve() -> None:
        await server.start()
        print(f"READY {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
