"""The HTTP transport to an OpenAI-compatible teacher.

Why not the openai SDK: on this machine its per-request CPU cost caps it at ~280-550 req/s, while a
bare aiohttp session does ~3,300 req/s (FACTS.md); the pool has to sustain 1,000 req/s with the
store writing. So we speak the wire format ourselves and keep the SDK's conventions:
``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``Authorization: Bearer``, the same retryable statuses.

Every failed attempt becomes an :class:`AttemptError` that says whether retrying can help; the pool
decides what to do with it. The API key lives only in the session's default headers: it is never
in a repr, an exception message or anything the server echoes back to us (we scrub it).
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from promptbake import errors

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. Build with :meth:`from_env` to follow the SDK's conventions."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold an Azure api-key

    @classmethod
    def from_env(cls, model: str, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY") -> Endpoint:
        return cls(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            model=model,
            api_key=os.environ.get(api_key_env) or None,
        )

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


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
                 retry_after: float | None = None, rate: RateInfo | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.rate = rate


class RetryableError(AttemptError):
    """408/409/5xx, timeouts, dropped connections, unparseable bodies: trying again may work."""

    retryable = True


class RateLimited(RetryableError):
    """A 429; ``retry_after`` (seconds) is what the server asked us to wait, if it said."""


class RequestFailed(AttemptError, errors.TeacherError):
    """400/404/other 4xx: the request itself is wrong; sending it again would fail the same way."""


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
    """Seconds to wait from ``retry-after-ms`` (preferred, finer) or ``retry-after`` (s or date)."""
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
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class ChatClient:
    """One aiohttp session, its connection pool sized to the concurrency cap."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 120.0, concurrency: int = 64) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.endpoint!r}, timeout={self.timeout})"

    async def __aenter__(self) -> ChatClient:
        headers = {"Content-Type": "application/json", **self.endpoint.headers}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            raise_for_status=False,
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
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self._session.post(self.endpoint.chat_url, data=data) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except TimeoutError:
            raise RetryableError("timeout", f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise RetryableError("connection", self._scrub(f"{type(exc).__name__}: {exc}")) from None
        rate = RateInfo.from_headers(headers)
        if status != 200:
            raise self._http_error(status, raw, headers, rate)
        try:
            decoded = json.loads(raw)
            return _result(decoded, body, rate)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            snippet = raw[:120].decode("utf-8", "replace")
            raise RetryableError("bad_body", self._scrub(f"unparseable answer: {snippet!r}"),
                                 status=status, rate=rate) from None

    def _http_error(self, status: int, raw: bytes, headers: Any, rate: RateInfo | None) -> AttemptError:
        text, code = _error_details(raw)
        message = self._scrub(f"HTTP {status}: {text}")
        if status == 429 and code == "insufficient_quota":
            return QuotaExhausted("insufficient_quota", message, status=status, rate=rate)
        if status == 429:
            return RateLimited("rate_limited", message, status=status,
                               retry_after=parse_retry_after(headers), rate=rate)
        if status in RETRYABLE_STATUSES or status >= 500:
            return RetryableError(f"http_{status}", message, status=status,
                                  retry_after=parse_retry_after(headers), rate=rate)
        if status in (401, 403):
            return Unauthorized("auth", f"the teacher at {self.endpoint.base_url} refused the "
                                f"credentials ({message}); check the API key variable",
                                status=status, rate=rate)
        return RequestFailed(f"http_{status}", message, status=status, rate=rate)

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key
        return text.replace(key, "***") if key else text


def _error_details(raw: bytes) -> tuple[str, str | None]:
    """OpenAI's ``{"error": {"message": ..., "code": ...}}`` when present, else the body's start."""
    code = None
    try:
        error = json.loads(raw)["error"]
        if isinstance(error, dict):
            message, code = error["message"], error.get("code")
        else:
            message = str(error)
    except (ValueError, KeyError, TypeError):
        message = raw[:200].decode("utf-8", "replace")
    return " ".join(str(message).split()), code


def _result(decoded: dict[str, Any], body: dict[str, Any], rate: RateInfo | None) -> ChatResult:
    choices = sorted(decoded["choices"], key=lambda choice: choice.get("index", 0))
    if not choices:
        raise ValueError("no choices")
    usage = _usage(decoded.get("usage"))
    return ChatResult(
        contents=[choice["message"].get("content") or "" for choice in choices],
        finish_reasons=[choice.get("finish_reason") or "" for choice in choices],
        prompt_tokens=usage[0] if usage else 0,
        completion_tokens=usage[1] if usage else 0,
        model=decoded.get("model") or body.get("model", ""),
        response=decoded,
        rate=rate,
        usage_known=usage is not None,
    )


def _usage(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens when the server reported both as whole numbers ≥ 0; None for a
    missing, partial or nonsensical ``usage`` (strings, NaN, negative), which must not count as free."""
    if not isinstance(usage, dict):
        return None
    counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    if not all(isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) and n >= 0
               and n == int(n) for n in counts):
        return None
    return int(counts[0]), int(counts[1])
