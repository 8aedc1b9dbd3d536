"""The project's exception hierarchy.

Library code raises these; only ``cli.py`` turns them into one-line messages and exit codes, so the
library stays usable (and testable) without Click.

Messages name an option the way the command line spells it (``--max-cost 2``), since a flag and a
keyword argument of the Python API always mean the same thing. Read from Python, an error spells
it as the keyword argument instead (``max_cost=2``): a notebook user never typed a flag. The CLI
reads its errors inside :func:`cli_spelling`.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

_CLI = contextvars.ContextVar("promptbake_cli_spelling", default=False)
# a flag, and the space before its value (a number, a quoted or capitalised word, or a word ending
# the message's subject: "--sweep temp: ..."), which the keyword spelling drops: max_cost=2
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)( (?=[^a-z\s]|[^\s:]+:|(?:nan|inf)\b))?")
# flags whose keyword argument has another name (the rest: --max-cost → max_cost)
_KEYWORDS = {"teacher": "Teacher(kind=...)", "base-url": "Teacher(base_url=...)", "model": "model",
             "api-key-env": "Teacher(api_key_env=...)"}


@contextlib.contextmanager
def cli_spelling() -> Iterator[None]:
    """Within this block, errors name options as flags (``--max-cost``): the CLI's edge."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def python_spelling(text: str) -> str:
    """``--max-cost 2: ...`` → ``max_cost=2: ...``, ``pass --allow-shortfall`` → ``pass allow_shortfall``."""
    def keyword(match: re.Match[str]) -> str:
        name = _KEYWORDS.get(match.group(1), match.group(1).replace("-", "_"))
        return name + "=" if match.group(2) and not name.endswith(")") else name

    return _FLAG.sub(keyword, text)


class PromptbakeError(Exception):
    """Base of every error promptbake reports to a user.

    ``exit_code`` is what the CLI exits with: 2 for bad input (spec, template, data file), 1 for
    failures at run time (teacher, budget, disk), 3 for a run that finished short of the spec.
    """

    exit_code = 1

    def __str__(self) -> str:
        text = super().__str__()
        return text if _CLI.get() else python_spelling(text)


class InputError(PromptbakeError):
    """Something the user gave us is wrong; the message names the file, line or field."""

    exit_code = 2


class SpecError(InputError):
    """A generator spec that does not parse or validate."""


class TemplateError(InputError):
    """A Jinja template that does not compile or render (missing variable, sandbox violation)."""


class DataFileError(InputError):
    """A JSONL/CSV/text input or an axis file that cannot be read."""


class TeacherError(PromptbakeError):
    """The teacher server failed in a way retrying cannot fix."""


class AuthError(TeacherError):
    """401/403 from the teacher: the run stops at once, nothing more is sent."""


class Shortfall(PromptbakeError):
    """The run finished but got less than the spec asked for (cells short, requests failed).
    What it got is stored and built; ``--allow-shortfall`` accepts it with exit 0."""

    exit_code = 3


class BudgetExceeded(PromptbakeError):
    """``--max-cost`` would be exceeded by the next request; the run stopped cleanly."""


class StoreError(PromptbakeError):
    """The SQLite store cannot be opened, is locked by another run, or cannot be written."""


class StoreTooNew(StoreError):
    """The store was written by a newer promptbake (it holds migrations this one does not know):
    refused untouched, since this version would write rows the newer schema does not expect."""

    exit_code = 2


class IndexUnavailable(PromptbakeError):
    """The shared dedupe index (``dedupe.storage``) cannot be reached or answered with an error."""


class OutputError(PromptbakeError):
    """An output file or directory cannot be written (read-only, disk full)."""


class TrainingError(PromptbakeError):
    """Training could not run or finish: a hosted provider refused a call or its job failed (the
    message carries the provider's own words, the key scrubbed out, and the store keeps the ids
    already returned), or local training could not load, convert or train the student (what a
    killed or failed run had checkpointed is kept, so the same command resumes)."""


class ValidationFailed(InputError):
    """A fine-tuning file has format errors: bad input like any other (exit 2), with the report
    naming every rejected line."""


class ResponseRejected(PromptbakeError):
    """A teacher answer the step cannot use (unparseable, cut off): the pool retries it and, when
    attempts run out, records it as failed with ``raw`` kept."""

    def __init__(self, reason: str, raw: str = "") -> None:
        super().__init__(reason)
        self.raw = raw
