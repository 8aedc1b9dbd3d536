"""The HTTP transport to an OpenAI-compatible teacher.

Why not the openai SDK: on this machine its per-request CPU cost caps it at ~280-550 req/s, while a
bare aiohttp session does ~3,300 req/s (FACTS.md); the pool has to sustain 1,000 req/s with the
store writing. So we speak the wire format ourselves and keep the SDK's conventions:
``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``Authorization: Bearer``, the same retryable statuses.

Every failed attempt becomes an :class:`AttemptError` that says whether retrying can help; the pool
decides what to do with it. The API key lives only in the session's default headers: it is never
in a repr, an exception message or anything the server echoes back to us: the whole body is
scrubbed of the key, and of any long-enough prefix or suffix of it, before anything reads it.

Servers misbehave in ways the SDK hides: bodies are read through a size cap (a gzip bomb or a
30 MB answer is refused, never held whole in memory, and asked again), lone UTF-16 surrogates become
U+FFFD (SQLite cannot store them), junk ``usage`` values count as missing, and a body no client
could read (SSE that was not asked for, an HTML page, JSON without ``choices``) is a fatal error
naming the server and model, since every other request would get the same. A 200 carrying an error
is retried: proxies send one for a passing upstream failure, and only its repetition on the same
request says more.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from promptbake import errors, fastjson

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
CANNOT_CONNECT = "cannot connect"  # how a refused or unresolvable address's error starts
MAX_BODY = 16 * 1024 * 1024  # bytes, after decompression: far above any real chat completion
KEY_PIECE = 6  # characters: a prefix or suffix of the key this long is scrubbed too
# 400s that concern one request, not the setup: other requests may well succeed
PER_REQUEST_CODES = frozenset({"context_length_exceeded", "string_above_max_length", "content_filter",
                               "content_policy_violation", "invalid_prompt"})
# a 5xx whose text says this is the server refusing the request, not failing to serve it
_SAYS_INVALID = re.compile(r"invalid|validation|not supported|unsupported|unrecognized|unknown (?:param|field|arg)",
                           re.I)
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. Build with :meth:`from_env` to follow the SDK's conventions."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold an Azure api-key
    api_key_env: str | None = None  # the variable the key came from: a 401 names it
    # a server that gives one choice per request (the local teacher): n choices are n requests
    one_choice: bool = False

    @classmethod
    def from_env(cls, model: str, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY") -> Endpoint:
        return cls(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            model=model,
            api_key=os.environ.get(api_key_env) or None,
            api_key_env=api_key_env,
        )

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def where(self, model: str | None = None) -> str:
        """``the teacher at URL (model M)``: how every fatal message names the server."""
        return f"the teacher at {self.base_url} (model {model or self.model})"


@dataclass(frozen=True)
class RateInfo:
    """What the server's ``x-ratelimit-*`` headers said; ``None`` where a header was missing."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None  # seconds
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Any) -> RateInfo | None:
        if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
            return None
        return cls(
            limit_requests=_number(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=_number(headers.get("x-ratelimit-remaining-requests")),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_number(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=_number(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )


@dataclass
class ChatResult:
    contents: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    model: str
    response: dict[str, Any]  # the decoded JSON answer, for the store
    rate: RateInfo | None = None
    usage_known: bool = True  # False: no usable ``usage``; the tokens are 0 and the pool charges a worst case


class AttemptError(Exception):
    """One attempt failed. ``kind`` is a short stable name for stores and progress counters;
    ``fatal`` errors stop the whole run, since every other request would fail the same way."""

    retryable = False
    fatal = False

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None, rate: RateInfo | None = None,
                 final_if_repeated: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.rate = rate
        # why the same error twice in a row on one request ends it (a 5xx blaming the request, a
        # 200 carrying an error): what it means, for the message; None: retried like any other
        self.final_if_repeated = final_if_repeated


class RetryableError(AttemptError):
    """408/409/5xx, timeouts, dropped connections, unparseable or oversized bodies, a 200 carrying
    an error: trying again may work."""

    retryable = True


class RateLimited(RetryableError):
    """A 429; ``retry_after`` (seconds) is what the server asked us to wait, if it said."""


class RequestFailed(AttemptError, errors.TeacherError):
    """400/422/other 4xx: the request itself is wrong; sending it again would fail the same way.
    Its kind is ``http_<status>``, which the pool, seeing it on two requests, takes for a wrong
    setup; errors about one request only (a prompt too long for the context) are named by their
    code (``context_length_exceeded``)."""


class ServerMismatch(AttemptError, errors.TeacherError):
    """404 (no such model or path) or an answer no client could read (SSE, HTML, no ``choices``,
    tool calls instead of text): every request would get the same."""

    fatal = True


class Unauthorized(AttemptError, errors.AuthError):
    """401/403: the run must stop at once; the message never contains the key."""

    fatal = True


class QuotaExhausted(AttemptError, errors.TeacherError):
    """A 429 with ``insufficient_quota``: billing, not pacing — waiting will not bring it back."""

    fatal = True


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset headers: ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` → seconds."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts:
        return _number(text)
    return sum(float(value) * _UNITS[unit] for value, unit in parts)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred, finer) or ``retry-after`` (s or date).

    Negative values mean now; ``inf`` stays ``inf`` (the pool caps it, see ``max_retry_after``);
    NaN and garbage mean the server said nothing usable."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (ValueError, TypeError):
        return None
    return None if math.isnan(value) else value


def clean_text(text: str) -> str:
    """Lone UTF-16 surrogates (``"\\ud800"`` in JSON) cannot be encoded as UTF-8, so SQLite
    refuses them: each becomes U+FFFD. Valid pairs were already joined by the JSON decoder."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


class KeyScrubber:
    """Replaces the key, and any prefix or suffix of it at least ``KEY_PIECE`` long, by ``***``.

    Servers echo keys whole, cut (``sk-proj-abc...``) or masked (``...wxyz``); scrubbing runs on
    the whole text before anything truncates it, so a cut can never leave a piece behind."""

    def __init__(self, key: str | None) -> None:
        self.key = key or ""
        self.piece = min(KEY_PIECE, len(self.key))

    def __call__(self, text: str) -> str:
        return self._scrub(text, self.key, "***") if self.key else text

    def raw(self, data: bytes) -> bytes:
        return self._scrub(data, self.key.encode(), b"***") if self.key else data

    def _scrub(self, text: Any, key: Any, mask: Any) -> Any:
        head, tail = key[: self.piece], key[-self.piece :]
        if head not in text and tail not in text:
            return text
        spans: list[tuple[int, int]] = []
        start = text.find(head)
        while start >= 0:  # extend each prefix occurrence as far as it keeps matching the key
            end = start + self.piece
            while end - start < len(key) and end < len(text) and text[end] == key[end - start]:
                end += 1
            spans.append((start, end))
            start = text.find(head, end)
        end = text.find(tail)
        while end >= 0:  # and each suffix occurrence backwards
            stop = end + self.piece
            begin = end
            while stop - begin < len(key) and begin > 0 and text[begin - 1] == key[len(key) - (stop - begin) - 1]:
                begin -= 1
            spans.append((begin, stop))
            end = text.find(tail, stop)
        out, last = [], 0
        for begin, stop in sorted(spans):
            if stop <= last:
                continue
            out.append(text[last:max(begin, last)])
            out.append(mask)
            last = stop
        out.append(text[last:])
        return text[:0].join(out)


class ChatClient:
    """One aiohttp session, its connection pool sized to the concurrency cap."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 120.0, concurrency: int = 64,
                 max_body: int = MAX_BODY) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_body = max_body
        self._scrub = KeyScrubber(endpoint.api_key)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.endpoint!r}, timeout={self.timeout})"

    async def __aenter__(self) -> ChatClient:
        # we decompress ourselves, under a cap: aiohttp would inflate a gzip bomb whole
        headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate", **self.endpoint.headers}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            raise_for_status=False,
            auto_decompress=False,
            # an API keeps no session in cookies; filtering and updating an empty jar was about
            # 5 % of the client's CPU per request (the bare loop's 84 µs against 80 without)
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """Send one chat completion. Raises an :class:`AttemptError` subclass on any failure."""
        if self._session is None:
            raise RuntimeError("ChatClient must be used as 'async with ChatClient(...)'")
        n = body.get("n")
        if self.endpoint.one_choice and isinstance(n, int) and n > 1:
            return await self._choice_by_choice(body, n)
        return await self._chat(body)

    async def _choice_by_choice(self, body: dict[str, Any], n: int) -> ChatResult:
        """``n`` choices from a server that gives one per request: ``n`` requests, each with the
        next seed (the seed, or none when the body has none), merged into one answer. Why not the
        server's own ``n``: llama-server decodes a request's choices side by side in its slots,
        and their bytes then depend on what its cache held before, so a fresh run would not
        repeat; one choice per request repeats byte for byte (README, quick start)."""
        seed = body.get("seed")
        results = []
        for i in range(n):
            one = {**body, "n": 1}
            if isinstance(seed, int) and not isinstance(seed, bool):
                one["seed"] = seed + i
            results.append(await self._chat(one))
        first = results[0]
        choices = [{**choice, "index": i} for i, r in enumerate(results) for choice in r.response.get("choices", [])]
        return ChatResult(
            contents=[c for r in results for c in r.contents],
            finish_reasons=[f for r in results for f in r.finish_reasons],
            prompt_tokens=sum(r.prompt_tokens for r in results),
            completion_tokens=sum(r.completion_tokens for r in results),
            model=first.model,
            response={**first.response, "choices": choices},
            rate=results[-1].rate,
            usage_known=all(r.usage_known for r in results),
        )

    async def _chat(self, body: dict[str, Any]) -> ChatResult:
        assert self._session is not None
        data = fastjson.dumps(body)
        model = str(body.get("model") or self.endpoint.model)
        try:
            async with self._session.post(self.endpoint.chat_url, data=data) as response:
                status = response.status
                headers = response.headers
                raw = self._scrub.raw(await self._read(response))
        except TimeoutError:
            raise RetryableError("timeout", f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            # nobody listens there (refused, unknown host): distinct from a dropped connection
            raise RetryableError("connection", self._scrub(f"{CANNOT_CONNECT}: {exc}")) from None
        except (aiohttp.ClientError, zlib.error) as exc:
            raise RetryableError("connection", self._scrub(f"{type(exc).__name__}: {exc}")) from None
        rate = RateInfo.from_headers(headers)
        if status != 200:
            raise self._http_error(status, raw, headers, rate, model)
        self._check_shape(raw, headers, rate, model)
        try:
            decoded = fastjson.loads(raw)
        except ValueError:
            snippet = raw[:120].decode("utf-8", "replace")
            raise RetryableError("bad_body", clean_text(f"unparseable answer: {snippet!r}"),
                                 status=status, rate=rate) from None
        return self._result(decoded, body, rate, model)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, decompressed, at most ``max_body`` bytes: anything larger is refused whole."""
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if not encoding and response.content_length is not None and response.content_length <= self.max_body:
            # the common case in one read: aiohttp's parser stops at Content-Length, so it is the cap
            return await response.read()
        inflate = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None  # 47: gzip or zlib
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            over = False
            if inflate is not None:
                chunk = inflate.decompress(chunk, self.max_body + 1 - len(body))
                over = bool(inflate.unconsumed_tail)  # output stopped at the cap with input left
            body += chunk
            if over or len(body) > self.max_body:
                # the same request asked again (or with another seed) usually gets a normal answer
                raise RetryableError("too_large", f"the answer is larger than {self.max_body // 2**20} MiB "
                                    "(after decompression); refused", status=response.status)
        return bytes(body)

    def _check_shape(self, raw: bytes, headers: Any, rate: RateInfo | None, model: str) -> None:
        """Answers no chat client can read; sending the same request again would get the same."""
        kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
        start = raw.lstrip()[:16].lower()
        if kind == "text/event-stream" or start.startswith((b"data:", b"event:")):
            what = "a server-sent event stream, which was not asked for"
        elif kind == "text/html":  # HTML sent as JSON is a garbled answer, retried like one
            what = f"an HTML page ({clean_text(raw[:80].decode('utf-8', 'replace'))!r}...), not JSON"
        else:
            return
        raise ServerMismatch("bad_shape", f"{self.endpoint.where(model)} answered {what}; "
                             "check --base-url (it should end in /v1)", status=200, rate=rate)

    def _result(self, decoded: Any, body: dict[str, Any], rate: RateInfo | None, model: str) -> ChatResult:
        return read_result(decoded, body, rate, self.endpoint.where(model))

    def _key_hint(self) -> str:
        """What to check after a 401: the key variable by name, and whether it is set at all."""
        name = self.endpoint.api_key_env
        if name is None:
            return "check the API key variable (--api-key-env)"
        if self.endpoint.api_key is None:
            return f"{name} is not set (export {name}=..., or name another variable with --api-key-env)"
        return f"check the key in {name}"

    def _http_error(self, status: int, raw: bytes, headers: Any, rate: RateInfo | None, model: str) -> AttemptError:
        text, code = _error_details(raw)
        message = f"HTTP {status}: {text}"
        if status == 429 and code == "insufficient_quota":
            return QuotaExhausted("insufficient_quota", message, status=status, rate=rate)
        if status == 429:
            return RateLimited("rate_limited", message, status=status,
                               retry_after=parse_retry_after(headers), rate=rate)
        if status in RETRYABLE_STATUSES or status >= 500:
            invalid = "the server says the request is invalid" if _SAYS_INVALID.search(text) else None
            return RetryableError(f"http_{status}", message, status=status,
                                  retry_after=parse_retry_after(headers), rate=rate, final_if_repeated=invalid)
        if status in (401, 403):
            return Unauthorized("auth", f"the teacher at {self.endpoint.base_url} refused the "
                                f"credentials ({message}); {self._key_hint()}", status=status, rate=rate)
        if status == 404:
            return ServerMismatch("not_found", f"{self.endpoint.where(model)} answered {message}; "
                                  "check --model and --base-url", status=status, rate=rate)
        if code in PER_REQUEST_CODES:  # named by its code: the pool tells it from a setup error
            return RequestFailed(str(code), message, status=status, rate=rate)
        return RequestFailed(f"http_{status}", message, status=status, rate=rate)


def read_result(decoded: Any, body: dict[str, Any], rate: RateInfo | None, where: str) -> ChatResult:
    """A chat completion body as a ``ChatResult``, or the error that says why it cannot be one
    (``where`` names the server and model in it). Shared by the online client and batch output."""
    if isinstance(decoded, dict) and "error" in decoded and not decoded.get("choices"):
        text, code = _error_fields(decoded["error"])
        status = code if isinstance(code, int) else None
        message = clean_text(f"HTTP 200 carrying an error: {text}")
        if status is not None and (status in RETRYABLE_STATUSES or status >= 500):
            raise RetryableError(f"http_{status}", message, status=200, rate=rate)
        # often a passing upstream failure behind a proxy: retried; the same twice ends the request
        raise RetryableError("error_body", message, status=200, rate=rate,
                             final_if_repeated="the server answers this request with an error")
    choices = decoded.get("choices") if isinstance(decoded, dict) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        shape = "no choices" if choices in (None, []) else "unreadable choices"
        raise ServerMismatch("bad_shape", f"{where} answered JSON with {shape} "
                             f"({clean_text(json.dumps(decoded)[:100])}...)", status=200, rate=rate)
    choices = sorted(choices, key=_index)
    contents = [_content(choice) for choice in choices]
    tools = any(isinstance(c.get("message"), dict) and c["message"].get("tool_calls") for c in choices)
    if tools and all(text is None for text in contents):
        raise ServerMismatch("tool_calls", f"{where} answered with tool calls instead of text; "
                                 "promptbake asks for text (remove tools from the request)", status=200, rate=rate)
    usage = decoded.get("usage") if isinstance(decoded.get("usage"), dict) else {}
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    name = decoded.get("model")
    return ChatResult(
        contents=[text or "" for text in contents],
        finish_reasons=[clean_text(str(c.get("finish_reason") or "")) for c in choices],
        prompt_tokens=prompt or 0,
        completion_tokens=completion or 0,
        model=clean_text(name) if isinstance(name, str) and name else str(body.get("model", "")),
        response=decoded,
        rate=rate,
        usage_known=prompt is not None and completion is not None,
    )


def _error_fields(error: Any) -> tuple[str, Any]:
    """OpenAI's ``{"message": ..., "code": ...}``, or whatever the server put there."""
    if isinstance(error, dict):
        message = error.get("message") if "message" in error else json.dumps(error)
        return " ".join(str(message).split()), error.get("code")
    return " ".join(str(error).split()), None


def _error_details(raw: bytes) -> tuple[str, Any]:
    """OpenAI's ``{"error": {"message": ..., "code": ...}}`` when present, else the body's start.
    ``raw`` is already scrubbed, so cutting it here cannot leave a piece of the key."""
    try:
        text, code = _error_fields(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError, IndexError):
        text, code = " ".join(raw[:200].decode("utf-8", "replace").split()), None
    return clean_text(text[:500]), code


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index", 0)
    return index if isinstance(index, int) else 0


def _content(choice: dict[str, Any]) -> str | None:
    """A choice's text: a string, or a list of parts (``[{"type": "text", "text": ...}]``) joined;
    ``None`` when there is no text (a refusal, tool calls)."""
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else choice.get("text")
    if isinstance(content, list):
        parts = [part.get("text") if isinstance(part, dict) else part for part in content]
        content = "".join(part for part in parts if isinstance(part, str)) if parts else None
    elif content is not None and not isinstance(content, str):
        content = json.dumps(content)
    return clean_text(content) if content is not None else None


def _count(value: Any) -> int | None:
    """A usage count, or None when it is missing or unusable (Infinity, NaN, negatives, fractions,
    absurd sizes, strings): then the tokens count as 0 and the pool charges the answer's worst case,
    so junk never makes an answer free."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isfinite(value) and 0 <= value < 2**31 and value == int(value):
        return int(value)
    return None
