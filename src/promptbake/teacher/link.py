"""One connection to each endpoint for a whole run: its HTTP client and its limiter.

What the limiter learns about a server (the limits its ``x-ratelimit-*`` headers announce, the
AIMD concurrency after a 429 or a timeout, a pause a 429 asked for) is only worth anything if the
next request sees it. A run therefore opens one ``Link`` per endpoint and every step, top-up round
and eval phase (the answers and the judge, when they share a server) sends through it, instead of
each starting from a fresh client and an empty limiter.
"""

from __future__ import annotations

import contextlib
from typing import Any

from promptbake.specification.models import TeacherConfig
from promptbake.teacher.client import ChatClient, Endpoint
from promptbake.teacher.config import endpoint_identity, open_teacher
from promptbake.teacher.endpoints import Fleet, connect
from promptbake.teacher.limiter import Limiter


class Link:
    """An endpoint's client (one aiohttp session) and limiter, open for an ``async with``."""

    def __init__(self, endpoint: Endpoint, config: TeacherConfig) -> None:
        self.endpoint = endpoint
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self.client: ChatClient
        self.limiter: Limiter | Fleet | None = None  # a Fleet over teacher.endpoints

    async def __aenter__(self) -> Link:
        # opened on the running loop: the sessions, locks and waiters belong to it
        self.client, self.limiter = await self._stack.enter_async_context(connect(self.endpoint, self.config))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.aclose()


class Links:
    """The links of one run, keyed by endpoint (base URL, or the embedded teacher) and key
    variable. A link is opened on first use, so a run served entirely from the store never starts
    a local teacher or needs an API key; all are closed when the run ends."""

    def __init__(self) -> None:
        self._teachers = contextlib.ExitStack()
        self._clients = contextlib.AsyncExitStack()
        self._links: dict[tuple[str, str], Link] = {}

    async def get(self, config: TeacherConfig) -> Link:
        key = (endpoint_identity(config), config.api_key_env)
        if key not in self._links:
            endpoint, limited = self._teachers.enter_context(open_teacher(config))
            self._links[key] = await self._clients.enter_async_context(Link(endpoint, limited))
        return self._links[key]

    async def __aenter__(self) -> Links:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._clients.aclose()
        finally:
            self._teachers.close()
