"""Deterministic answer checks, shared by build (drop failing examples) and eval (score them).

One ``Checks`` block names every condition an answer must meet; ``failures`` lists the ones it
misses, so a reject can always say why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from promptbake.curate.patterns import check_pattern, compiled
from promptbake.errors import DataFileError
from promptbake.specification.strict import Strict


class Checks(Strict):
    """Each field that is set is one check on the assistant's answer."""

    json_valid: bool = Field(default=False, alias="json")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    values: dict[str, list[Any]] | None = None  # JSON field → allowed values
    regex: str | None = None  # re.search on the answer
    max_length: int | None = Field(default=None, ge=1)  # characters
    exact: bool = False  # equals the reference answer (eval, where a reference exists)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else check_pattern(value)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema  # here: most specs have no schema, and jsonschema is slow to import

            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"invalid JSON schema: {exc.message}") from exc
        return value

    def active(self) -> bool:
        return bool(self.json_valid or self.json_schema or self.values or self.regex or self.max_length or self.exact)

    def failures(self, answer: str, reference: str | None = None) -> list[str]:
        """Why ``answer`` fails, one short reason per failed check; empty when it passes."""
        failed: list[str] = []
        if self.max_length is not None and len(answer) > self.max_length:
            failed.append(f"max_length: {len(answer)} > {self.max_length}")
        if self.regex is not None and not compiled(self.regex, "example.checks: regex").search(answer):
            failed.append("regex: no match")
        if self.exact and reference is not None and answer.strip() != reference.strip():
            failed.append("exact: differs from the reference")
        if self.json_valid or self.json_schema is not None or self.values:
            try:
                value = json.loads(answer)
            except json.JSONDecodeError as exc:
                failed.append(f"json: {exc.msg}")
                return failed
            if self.json_schema is not None:
                import jsonschema

                error = jsonschema.exceptions.best_match(
                    jsonschema.Draft202012Validator(self.json_schema).iter_errors(value)
                )
                if error is not None:
                    failed.append(f"schema: {error.message}")
            for key, allowed in (self.values or {}).items():
                got = value.get(key) if isinstance(value, dict) else None
                if got not in allowed:
                    failed.append(f"values: {key}={got!r} not in the allowed set")
        return failed


class AnswerList(Strict):
    """An answer that is a JSON list of items, one per question, scored on the formatting study's
    five metrics: ``list`` (valid JSON list), ``keys`` (every item has exactly ``keys``),
    ``values`` (every ``field`` is one of ``values``, asked only of answers passing the first two),
    ``correct`` (the whole list equals the reference) and ``items`` (share of items right)."""

    keys: list[str] = Field(min_length=1)
    field: str = "answer"
    values: list[Any] | None = None

    METRICS: ClassVar[tuple[str, ...]] = ("list", "keys", "values", "correct", "items")

    def expected(self, reference: Any) -> list[Any] | None:
        """The right ``field`` per position, from a list of values or of items (``None``: unknown)."""
        if isinstance(reference, str):
            try:
                reference = json.loads(reference)
            except json.JSONDecodeError:
                return None
        if not isinstance(reference, list):
            return None
        return [r.get(self.field) if isinstance(r, dict) else r for r in reference]

    def metrics(self, answer: str, reference: Any = None) -> dict[str, float | None]:
        """Each metric 0 or 1 (``items``: a share); ``None`` where it does not apply."""
        try:
            items = json.loads(answer)
        except json.JSONDecodeError:
            items = None
        is_list = isinstance(items, list)
        keyed = is_list and all(isinstance(i, dict) and set(i) == set(self.keys) for i in items)
        out: dict[str, float | None] = {"list": float(is_list), "keys": float(keyed), "values": None}
        if keyed and self.values is not None:
            out["values"] = float(all(i[self.field] in self.values for i in items))
        expected = self.expected(reference)
        if expected is None or not expected:
            out["correct"] = out["items"] = None
            return out
        got = [i.get(self.field) if isinstance(i, dict) else None for i in items] if is_list else []
        right = sum(1 for g, e in zip(got, expected, strict=False) if g == e)
        out["correct"] = float(keyed and len(got) == len(expected) and right == len(expected))
        out["items"] = right / len(expected)
        return out


def last_assistant(messages: list[dict[str, Any]]) -> str:
    """The answer a check looks at: the last assistant message's text."""
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, str):
            return content
    return ""


def read_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON schema file for a ``schema`` check (``--check-schema``), as bad input when unreadable."""
    path = Path(path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read the JSON schema: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(f"{path}: the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise DataFileError(f"{path}: a JSON schema must be a JSON object")
    return schema
