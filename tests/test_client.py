"""The aiohttp transport against a real loopback server: parsing, the error taxonomy, no key leaks."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from typing import Any

import pytest
from fakeserver import FakeServer, Fault, Raw

from promptbake import errors
from promptbake.teacher.client import (
    ChatClient,
    ChatResult,
    Endpoint,
    QuotaExhausted,
    RateLimited,
    RequestFailed,
    RetryableError,
    Unauthorized,
    parse_duration,
    parse_retry_after,
)

KEY = "sk-test-0123456789abcdef"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}


def chat(server: FakeServer, body: dict[str, Any] = BODY, *, timeout: float = 5.0,
         key: str | None = KEY) -> ChatResult:
    async def go() -> ChatResult:
        endpoint = Endpoint(server.base_url, "fake-model", api_key=key)
        async with ChatClient(endpoint, timeout=timeout, concurrency=4) as client:
            return await client.chat(body)

    return asyncio.run(go())


def test_a_one_choice_server_gets_n_requests_with_the_next_seeds():
    """The local teacher answers one choice per request: n choices are n requests, seed after seed,
    merged into one answer (its own n > 1 gave bytes that changed from one fresh run to the next)."""
    with FakeServer(responder=lambda body: f"choice at seed {body['seed']}").running() as server:
        async def go() -> ChatResult:
            async with ChatClient(Endpoint(server.base_url, "fake-model", one_choice=True)) as client:
                return await client.chat({**BODY, "n": 3, "seed": 5})

        result = asyncio.run(go())
    assert [b["n"] for b in server.bodies] == [1, 1, 1] and [b["seed"] for b in server.bodies] == [5, 6, 7]
    assert result.contents == ["choice at seed 5", "choice at seed 6", "choice at seed 7"]
    assert result.finish_reasons == ["stop"] * 3 and result.completion_tokens == 4 * 3
    assert [c["index"] for c in result.response["choices"]] == [0, 1, 2]


def failure(fault: Fault, expected: type[Exception], *, timeout: float = 5.0) -> Any:
    """The exception one request raises when the server answers with ``fault``."""
    with FakeServer(script=[fault]).running() as server, pytest.raises(expected) as caught:
        chat(server, timeout=timeout)
    return caught.value


def test_answer_is_parsed_with_usage_and_choices():
    with FakeServer().running() as server:
        result = chat(server, {**BODY, "n": 3})
    assert result.contents == [f"echo 0 {i}: hello there" for i in range(3)]
    assert result.finish_reasons == ["stop"] * 3
    assert result.prompt_tokens > 0
    assert result.completion_tokens == 5 * 3  # words
    assert result.model == "fake-model"
    assert result.rate is None  # this server enforces no limits, so sends no headers
    assert server.auth_headers == [f"Bearer {KEY}"]
    assert server.bodies == [{**BODY, "n": 3}]


def test_no_key_sends_no_authorization_header():
    with FakeServer().running() as server:
        chat(server, key=None)
    assert server.auth_headers == [None]


def test_cookies_a_server_sets_are_not_sent_back():
    """The client keeps no cookie jar (it cost about 5 % of a request's CPU): a cookie a proxy
    sets on one answer never rides along on the requests after it."""
    cookie = dataclasses.replace(Raw.completion([Raw.choice("hi")]), headers={"Set-Cookie": "session=abc; Path=/"})
    with FakeServer(script=[cookie]).running() as server:
        async def go() -> list[ChatResult]:
            # by name: a cookie jar keeps no cookie that an IP address set
            url = server.base_url.replace("127.0.0.1", "localhost")
            async with ChatClient(Endpoint(url, "fake-model"), concurrency=1) as client:
                return [await client.chat(BODY) for _ in range(3)]

        results = asyncio.run(go())
    assert results[0].contents == ["hi"] and len(results) == 3
    assert server.cookies == [None, None, None]


def test_rate_limit_headers_are_parsed():
    with FakeServer(rpm=600, tpm=60_000).running() as server:
        result = chat(server)
    assert result.rate is not None
    assert result.rate.limit_requests == 600
    assert result.rate.remaining_requests == 599
    assert result.rate.limit_tokens == 60_000
    assert result.rate.remaining_tokens is not None and result.rate.remaining_tokens < 60_000
    assert result.rate.reset_requests is not None and 0 < result.rate.reset_requests <= 0.2


def test_finish_reason_length_when_max_tokens_cuts_the_answer():
    with FakeServer(responder=lambda body: "one two three four five").running() as server:
        result = chat(server, {**BODY, "max_tokens": 2})
    assert result.contents == ["one two"]
    assert result.finish_reasons == ["length"]


def test_429_is_retryable_with_retry_after_ms():
    error = failure(Fault("429", retry_after_ms=1500), RateLimited)
    assert error.retryable
    assert error.status == 429
    assert error.retry_after == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(Fault("500"), "http_500"), (Fault("garbage"), "bad_body"), (Fault("drop"), "connection")],
)
def test_transient_failures_are_retryable(fault: Fault, kind: str):
    error = failure(fault, RetryableError)
    assert error.kind == kind
    assert error.retryable


def test_hang_becomes_a_retryable_timeout():
    assert failure(Fault("hang"), RetryableError, timeout=0.3).kind == "timeout"


def test_exhausted_quota_is_fatal_not_a_rate_limit():
    error = failure(Fault("quota"), QuotaExhausted)
    assert error.fatal and not error.retryable
    assert isinstance(error, errors.TeacherError)
    assert "check your plan and billing" in str(error)


def test_400_is_final():
    error = failure(Fault("400"), RequestFailed)
    assert not error.retryable
    assert isinstance(error, errors.TeacherError)
    assert "Invalid value for 'messages'" in str(error)


def test_401_is_an_auth_error_that_never_shows_the_key():
    error = failure(Fault("401", message=f"Incorrect API key provided: {KEY}."), Unauthorized)
    assert isinstance(error, errors.AuthError)
    assert not error.retryable
    assert "Incorrect API key provided" in str(error)
    assert KEY not in str(error)
    assert KEY not in repr(error.args)


def test_endpoint_repr_hides_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    endpoint = Endpoint.from_env("gpt-4o-mini")
    assert endpoint.api_key == KEY
    assert endpoint.base_url == "http://127.0.0.1:9/v1"
    assert KEY not in repr(endpoint) and KEY not in str(endpoint)
    assert KEY not in repr(ChatClient(endpoint))


def test_endpoint_defaults_to_openai():
    endpoint = Endpoint.from_env("gpt-4o-mini")
    assert endpoint.chat_url == "https://api.openai.com/v1/chat/completions"
    assert endpoint.api_key is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.250s", 0.25),
     ("7", 7.0), (None, None), ("soon", None)],
)
def test_parse_duration(text: str | None, seconds: float | None):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_retry_after_prefers_milliseconds():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == pytest.approx(0.25)
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 < parse_retry_after({"retry-after": in_ten}) <= 10  # type: ignore[operator]
