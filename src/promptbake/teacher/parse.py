"""Turn a teacher's answer into a step's outputs, or reject it so the pool retries.

Small teachers rarely follow list-format instructions exactly (FACTS: SmolLM2 often ignores them),
so ``list`` accepts JSON, a Python literal, and numbered or bulleted lines. Every parse returns a
list of outputs; each output fans out into its own row for the next step.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from promptbake.errors import ResponseRejected

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.S)
_FENCE_LINE = re.compile(r"^\s*```")
_PUNCTUATION = re.compile(r"^[\s\[\]{}(),:]*$")  # a line of JSON or code structure, no content
_MARKER = re.compile(r"^\s*(?:\d{1,3}[.)\]:]|[-*•–]|\(\d{1,3}\)|#\d{1,3}[.:]?)\s+(.*\S)\s*$")


def _unfence(text: str) -> str:
    match = _FENCE.match(text)
    if match:
        return match.group(1)
    if _FENCE_LINE.match(text):  # an opening fence whose answer was cut off before the closing one
        return text.split("\n", 1)[1] if "\n" in text else ""
    return text


def _load_json(text: str) -> Any:
    text = _unfence(text).strip()
    try:
        return json.loads(text, strict=False)  # llama.cpp grammars allow raw control characters
    except json.JSONDecodeError:
        # tolerate prose around one JSON value: take the outermost {...} or [...]
        for open_, close in (("{", "}"), ("[", "]")):
            start, end = text.find(open_), text.rfind(close)
            if 0 <= start < end:
                try:
                    return json.loads(text[start : end + 1], strict=False)
                except json.JSONDecodeError:
                    continue
        raise


def _check_schema(value: Any, schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    import jsonschema  # here: most steps have no schema, and jsonschema is slow to import

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        raise ResponseRejected(f"answer does not match the schema: {exc.message}") from exc


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _clean_item(item: Any) -> Any:
    if isinstance(item, str):
        item = item.strip().strip('"').strip("'").strip()
    return item


def _structured(body: str) -> bool:
    lines = [line.rstrip() for line in body.splitlines() if line.strip()]
    return body[:1] in ("[", "{") or any(_PUNCTUATION.match(line) or line.endswith(("[", "{")) for line in lines)


def parse_list(text: str, schema: dict[str, Any] | None = None) -> list[Any]:
    """Items of a list answer, in order; raises ResponseRejected when no list can be found."""
    body = _unfence(text).strip()
    items: list[Any] | None = None
    try:
        value = _load_json(body)
        _check_schema(value, schema)
        items = _as_list(value)
    except (json.JSONDecodeError, ValueError):
        if schema is not None:
            raise ResponseRejected("answer is not JSON, and the step has a schema") from None
    if items is None:
        try:
            items = _as_list(ast.literal_eval(body))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            items = None
    if items is None:
        marked = [m.group(1) for line in body.splitlines() if (m := _MARKER.match(line))]
        items = marked if len(marked) >= 2 else None
    if items is None and _structured(body):
        # a list, object or code that does not parse (cut off, say): its lines are fragments
        # like `{` or `"a",`, never items
        raise ResponseRejected("the answer is broken JSON or code, not a list")
    if items is None:
        lines = [line for line in body.splitlines() if line.strip() and not _FENCE_LINE.match(line)]
        items = lines if len(lines) >= 2 else None
    if items is None:
        raise ResponseRejected("no list found in the answer")
    cleaned = [c for c in (_clean_item(i) for i in items) if c not in ("", None)]
    if not cleaned:
        raise ResponseRejected("the list is empty")
    return cleaned


def parse_output(text: str, mode: str, schema: dict[str, Any] | None = None, min_items: int = 1) -> list[Any]:
    """Outputs of one choice: one element for ``text``/``json``, the items for ``list``."""
    if mode == "text":
        stripped = text.strip()
        if not stripped:
            raise ResponseRejected("empty answer")
        return [stripped]
    if mode == "json":
        try:
            value = _load_json(text)
        except json.JSONDecodeError as exc:
            raise ResponseRejected(f"answer is not JSON: {exc.msg}") from exc
        _check_schema(value, schema)
        return [value]
    items = parse_list(text, schema)
    if len(items) < min_items:
        raise ResponseRejected(f"list has {len(items)} items, the step needs at least {min_items}")
    return items


CUT_OFF = "answer was cut off (finish_reason: length)"


def parse_choices(
    contents: list[str],
    finish_reasons: list[str],
    mode: str,
    schema: dict[str, Any] | None = None,
    min_items: int = 1,
) -> list[Any]:
    """All outputs of a response (choices in order). A cut-off answer is rejected; of several
    choices (``n`` > 1: independent samples, alternatives to each other) a cut-off one is left out
    instead, and only an answer whose choices are all cut off is rejected, so one long choice does
    not make the other n - 1 be paid for again. A short ``max_tokens`` thus keeps only the choices
    that finish within it: concise ones."""
    outputs: list[Any] = []
    several = len(contents) > 1
    cut = 0
    for content, reason in zip(contents, finish_reasons, strict=False):
        if reason == "length":
            if not several:
                raise ResponseRejected(CUT_OFF)
            cut += 1
            continue
        outputs.extend(parse_output(content or "", mode, schema, min_items))
    if not outputs:
        raise ResponseRejected(CUT_OFF if cut else "no choices in the answer")
    return outputs
