"""The ``promptbake`` command line: a thin Click layer over the library.

Every command turns library exceptions into one-line messages here and nowhere else; set
``PROMPTBAKE_RAISE_ERRORS=1`` (or pass ``--debug``) to see the real traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__
from .errors import PromptbakeError

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns library errors into ``Error: <one line>`` and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PromptbakeError as exc:
            if os.environ.get("PROMPTBAKE_RAISE_ERRORS") or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="promptbake")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Bake prompts into fine-tuning data."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def teacher_options(fn: F) -> F:
    """The teacher flags shared by every command that calls a model: same flag, same meaning."""
    options = [
        click.option("--teacher", "teacher_kind", type=click.Choice(["remote", "local"]), default=None,
                     help="remote: an OpenAI-compatible server; local: the embedded SmolLM2 on llama.cpp."),
        click.option("--base-url", default=None, help="Server URL (default: $OPENAI_BASE_URL or OpenAI)."),
        click.option("--model", default=None, help="Model name sent to the server."),
        click.option("--api-key-env", default=None,
                     help="Name of the environment variable holding the key (default OPENAI_API_KEY)."),
        click.option("--rpm", type=float, default=None, help="Requests per minute limit."),
        click.option("--tpm", type=float, default=None, help="Tokens per minute limit."),
        click.option("--concurrency", type=int, default=None, help="Most requests in flight at once."),
        click.option("--max-attempts", type=int, default=None, help="Attempts per request before it is recorded as failed."),
        click.option("--timeout", type=float, default=None, help="Seconds before a request is abandoned and retried."),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .teacher import TeacherOverrides

        keys = ["teacher_kind", "base_url", "model", "api_key_env", "rpm", "tpm", "concurrency",
                "max_attempts", "timeout"]
        kwargs["overrides"] = TeacherOverrides(**{k: kwargs.pop(k) for k in keys})
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
