"""The Batch API's file formats: input lines out, output lines in.

One input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``; a
file holds at most 50,000 lines and 200 MB. OpenAI, Azure OpenAI, other providers and vLLM's
offline ``run_batch`` all read that shape and answer with lines of
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``, in any order.
The custom_id is the request's cache key, so identical requests go out once and an answer lands
where online mode would have put it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from promptbake.errors import DataFileError
from promptbake.store.batches import SentItem
from promptbake.teacher.client import RETRYABLE_STATUSES

CHAT_URL = "/v1/chat/completions"
MAX_LINES = 50_000
MAX_BYTES = 200_000_000  # "200 MB": counted in decimal megabytes, the smaller reading

# error codes (lines without a response) that a later batch can fix: the request never ran
RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout",
                             "not_run", "batch_failed", "malformed"})
_CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*"([^"\\]{1,500})"')


def input_line(custom_id: str, body: dict[str, Any]) -> bytes:
    record = {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


@dataclass
class InputFile:
    """An input file being filled; ``fits`` says whether one more line stays within the limits."""

    handle: IO[bytes]
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    lines: int = 0
    size: int = 0
    reserved: float = 0.0
    items: list[SentItem] = field(default_factory=list)

    def fits(self, line: bytes) -> bool:
        return self.lines < self.max_lines and self.size + len(line) <= self.max_bytes

    def add(self, line: bytes, reserve: float) -> None:
        self.handle.write(line)
        self.lines += 1
        self.size += len(line)
        self.reserved += reserve


@dataclass
class LineResult:
    """One output (or error file) line: an answer, or why the request has none."""

    custom_id: str
    status: int | None  # the request's HTTP status; None when it never ran (expired, cancelled)
    body: dict[str, Any] | None = None  # the chat completion, when status is 200
    error: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict)

    @property
    def retryable(self) -> bool:
        """Worth another try: the same rules as online mode (429, 408, 409, 5xx), plus requests
        the batch never ran. A 400 or 404 would fail the same way again."""
        if self.status is not None:
            return self.status in RETRYABLE_STATUSES or self.status >= 500
        return self.code in RETRYABLE_CODES


def parse_line(text: str, where: str) -> LineResult:
    """Parse one output line; ``where`` (file:line) names it in the error if it is malformed."""
    try:
        record = json.loads(text)
        custom_id = record["custom_id"]
        if not isinstance(custom_id, str):
            raise TypeError("custom_id is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataFileError(f"{where}: not a batch output line ({type(exc).__name__}: {exc})") from None
    response = record.get("response") if isinstance(record.get("response"), dict) else None
    status = response.get("status_code") if response else None
    body = response.get("body") if response else None
    if status == 200 and isinstance(body, dict) and "error" not in body:
        return LineResult(custom_id, 200, body)
    message, code = _error(record.get("error"))
    if isinstance(body, dict) and message is None:
        message, code = _error(body.get("error", body))
    if status == 200:  # a 200 whose body is no completion: unreadable, like a garbage body online
        status, message = 502, f"unreadable answer: {json.dumps(body)[:120]}"
    return LineResult(custom_id, int(status) if isinstance(status, int) else None, None,
                      message or f"HTTP {status}", code)


def unreadable(text: str, problem: DataFileError) -> LineResult | None:
    """A line of a provider's output that cannot be read (malformed, cut off): a failure of its
    request, worth another try, when its custom_id can still be found in it; else None."""
    found = _CUSTOM_ID.search(text)
    if found is None:
        return None
    return LineResult(found.group(1), None, None, f"its answer could not be read: {problem}", "malformed")


def _error(error: Any) -> tuple[str | None, str | None]:
    """The message and code of an error in any of the shapes providers write: a string (vLLM),
    ``{"code", "message"}`` (OpenAI's error file), ``{"error": {...}}`` or vLLM's ErrorResponse."""
    if error is None:
        return None, None
    if isinstance(error, str):
        return " ".join(error.split())[:500], None
    if isinstance(error, dict):
        inner = error.get("error")
        if isinstance(inner, dict):
            return _error(inner)
        message = error.get("message") or inner or json.dumps(error)[:200]
        code = error.get("code")
        return " ".join(str(message).split())[:500], str(code) if code is not None else None
    return str(error)[:500], None


def read_lines(path: str | Path) -> Iterator[LineResult]:
    """Every answer in an output file (vLLM ``run_batch -o``, or a provider's output/error file)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                if text.strip():
                    yield parse_line(text, f"{path}:{number}")
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
