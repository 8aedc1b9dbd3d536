"""The eval's input: a test split read back into prompts and reference answers, and the
``--sweep`` grid of sampling settings each prompt is answered under."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptbake.errors import DataFileError, InputError
from promptbake.output.jsonl import read_jsonl
from promptbake.output.sidecar import split_metadata
from promptbake.specification.models import SamplingParams

SWEEPABLE = ("temperature", "top_p", "max_tokens", "seed", "presence_penalty", "frequency_penalty")
_SENT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")  # no training-only "weight"


@dataclass(frozen=True)
class TestItem:
    """One test example: what is sent (everything before the last assistant turn) and the
    reference answer (that turn), which ``exact`` checks and the judge compare against."""

    id: str
    category: str
    prompt: list[dict[str, Any]]
    reference: str | None
    tools: list[dict[str, Any]] | None = None
    cell: dict[str, Any] = field(default_factory=dict)


def load_test(data: str | Path, metadata: str | Path | None = None) -> list[TestItem]:
    """Read an openai-chat test file; ids and categories come from the metadata sidecar (default:
    the one next to it), else ids are ``line<N>`` and every category is ``all``."""
    data = Path(data)
    lines = list(read_jsonl(data, "test"))
    if not lines:
        raise DataFileError(f"{data}: no examples")
    metas = split_metadata(data, len(lines), metadata) or [{}] * len(lines)
    items = []
    for (number, row), meta in zip(lines, metas, strict=True):
        messages = row.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataFileError(f"{data}:{number}: no 'messages' list (eval reads openai-chat files)")
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        prompt = messages if last is None else messages[:last]
        if not prompt:
            raise DataFileError(f"{data}:{number}: nothing before the assistant answer to send")
        reference = messages[last].get("content") if last is not None else None
        items.append(TestItem(
            id=str(meta.get("id") or f"line{number}"),
            category=str(meta.get("category") or "all"),
            prompt=[{k: m[k] for k in _SENT_KEYS if k in m} for m in prompt],
            reference=reference if isinstance(reference, str) else None,
            tools=row.get("tools") or None,
            cell=meta.get("cell") or {},
        ))
    return items


def _value(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None


def _sweepable(name: str) -> str:
    if name not in SWEEPABLE:
        raise InputError(f"--sweep {name}: not a sweepable sampling parameter (use {', '.join(SWEEPABLE)})")
    return name


def parse_sweeps(sweeps: Sequence[str] | Mapping[str, Sequence[int | float]]) -> list[dict[str, Any]]:
    """``["temperature=0,0.7", "top_p=1,0.9"]`` (the ``--sweep`` flags) or ``{"temperature": [0, 0.7],
    "top_p": [1, 0.9]}`` → the Cartesian grid of settings (``[{}]``: none)."""
    axes: dict[str, list[int | float]] = {}
    if isinstance(sweeps, Mapping):
        axes = {_sweepable(name): list(values) for name, values in sweeps.items()}
    else:
        for text in sweeps:
            name, sep, values = (part.strip() for part in text.partition("="))
            if not sep or not values:
                raise InputError(f"--sweep {text!r}: write NAME=V1,V2,...")
            if _sweepable(name) in axes:
                raise InputError(f"--sweep {name} is given twice")
            axes[name] = [_value(v.strip(), f"--sweep {name}") for v in values.split(",")]
    grid = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    for settings in grid:
        try:
            SamplingParams.model_validate(settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"--sweep {err['loc'][0]}={err['input']}: {err['msg']}") from None
    return grid

