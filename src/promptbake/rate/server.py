"""The rating page: one aiohttp app on 127.0.0.1, one self-contained page, a small JSON API.

Nothing in what the browser receives names a source: the page is the same for every study, and the
API answers with an opaque showing number, the prompt and two answer texts. Texts reach the page
as JSON and are put in with ``textContent``, never parsed as HTML, and the page's content security
policy allows only its own inline script (by nonce), so an answer holding ``<script>`` shows as
text. On 127.0.0.1 the Host header must name the loopback (no DNS rebinding); with ``--host`` a
random token is needed in the URL and in every POST. POSTs must be JSON, which a form on another
site cannot send without the browser asking first.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from promptbake.errors import InputError, PromptbakeError
from promptbake.rate.assign import Assigner
from promptbake.rate.store import RatingStore

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
MAX_NAME = 100
TOKEN_HEADER = "X-Promptbake-Token"


def _text(content: Any) -> str:
    """A message's content as text (a list of parts keeps its text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def page_html(token: str | None, nonce: str) -> str:
    from promptbake.rate.html import environment

    return environment().get_template("page.html.j2").render(token=token or "", nonce=nonce)


class RatingApp:
    """The request handlers over one open ratings store."""

    def __init__(self, store: RatingStore, token: str | None = None) -> None:
        self.store = store
        self.assigner = Assigner(store)
        self.token = token

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/api/next", self._next)
        app.router.add_post("/api/rate", self._rate)
        app.router.add_post("/api/undo", self._undo)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.token is None:
            host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
            if host not in LOOPBACK_NAMES:
                return web.json_response({"error": "this server answers only on 127.0.0.1"}, status=403)
        if request.method == "POST" and request.content_type != "application/json":
            return web.json_response({"error": "send JSON"}, status=415)
        if self.token is not None:
            given = request.headers.get(TOKEN_HEADER) if request.method == "POST" else request.query.get("token")
            if not given or not hmac.compare_digest(given, self.token):
                return web.json_response({"error": "a valid token is needed: use the URL printed at start"},
                                         status=403)
        try:
            response = await handler(request)
        except PromptbakeError as exc:
            response = web.json_response({"error": str(exc)}, status=400)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def _page(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        response = web.Response(text=page_html(self.token, nonce), content_type="text/html")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return response

    @staticmethod
    def _rater(value: Any) -> str:
        name = value.strip() if isinstance(value, str) else ""
        if not name or len(name) > MAX_NAME:
            raise InputError(f"give a rater name of 1 to {MAX_NAME} characters")
        return name

    def _state(self, rater: str) -> web.Response:
        """What the page shows next for ``rater``: the item, or that they are done, and progress."""
        shown = self.assigner.current(rater)
        progress = self.assigner.progress(rater)
        body: dict[str, Any] = {"rater": rater, "done": progress.done, "left": progress.left, "item": None}
        if shown is not None:
            body["item"] = {
                "id": shown.id,
                "prompt": [{"role": str(m.get("role", "")), "content": _text(m.get("content"))}
                           for m in self.store.prompt(shown.item)],
                "left": self.store.answer(shown.item, shown.left),
                "right": self.store.answer(shown.item, shown.right),
            }
        return web.json_response(body)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise InputError("the request is not JSON") from None
        if not isinstance(body, dict):
            raise InputError("the request must be a JSON object")
        return body

    async def _next(self, request: web.Request) -> web.Response:
        return self._state(self._rater(request.query.get("rater")))

    async def _rate(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        rater = self._rater(body.get("rater"))
        shown, comment = body.get("item"), body.get("comment") or ""
        if not isinstance(shown, int) or not isinstance(comment, str):
            raise InputError("a rating needs 'item' (a number) and an optional 'comment' (text)")
        self.assigner.rate(rater, shown, str(body.get("verdict")), comment)
        return self._state(rater)

    async def _undo(self, request: web.Request) -> web.Response:
        rater = self._rater((await self._json(request)).get("rater"))
        self.assigner.undo(rater)
        return self._state(rater)


async def serve(store: RatingStore, *, host: str | None = None, port: int = 0,
                on_ready: Callable[[str], None] | None = None, token: str | None = None) -> None:
    """Serve the page until cancelled. ``host`` other than the default needs a token (made here
    unless given); ``on_ready`` receives the URL to open, token included."""
    bind = host or LOOPBACK
    if host is not None and token is None:
        token = secrets.token_urlsafe(16)
    runner = web.AppRunner(RatingApp(store, token).app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port)
        try:
            await site.start()
        except OSError as exc:
            raise InputError(f"cannot listen on {bind}:{port}: {exc.strerror}; choose another --port") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        shown_host = f"[{bind}]" if ":" in bind else bind
        url = f"http://{shown_host}:{bound}/" + (f"?token={token}" if token else "")
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
