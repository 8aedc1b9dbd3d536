"""Check a fine-tuning file the way the trainer will, before anyone pays for a failed job.

Error keys follow OpenAI's cookbook (``Chat_finetuning_data_prep``): ``data_type``,
``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``,
``unrecognized_role``, ``missing_content``, ``example_missing_assistant_message``; plus
``invalid_json`` and the rules the other targets document (``roles_not_alternating`` for Together,
``system_not_first`` for Fireworks, ``invalid_weight``, ``missing_field``,
``field_type``, ``invalid_output`` for the non-chat formats, ``format_not_accepted``,
``too_few_examples``, ``file_too_large``). Every key maps to the 1-based line numbers it occurs on, so a user can jump
straight to them. Rules come from ``targets.TARGETS``.

Examples over the model's token limit are a warning, not an error: OpenAI truncates them (and
bills at most the limit), as the cookbook says.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError
from promptbake.output.targets import Target, get_target
from promptbake.output.training_cost import billed_tokens, default_epochs
from promptbake.teacher import tokens

HYPERPARAMETER_RULE = (
    "batch size ~0.2% of the examples, between 1 and 256; learning-rate multiplier 0.05 up to "
    "batch 8, 0.1 up to 64, 0.2 above (OpenAI documents these values and that larger batches take "
    "larger rates; the cut points are ours)"
)

_SHOWN_LINES = 20


def suggest_hyperparameters(n_examples: int) -> tuple[int, float]:
    """(batch size, learning-rate multiplier) by ``HYPERPARAMETER_RULE``."""
    batch = min(256, max(1, round(n_examples * 0.002)))
    lr = 0.05 if batch <= 8 else 0.1 if batch <= 64 else 0.2
    return batch, lr


@dataclass
class TokenStats:
    min: int
    max: int
    mean: float
    median: float
    p5: float
    p95: float

    @classmethod
    def of(cls, values: list[int]) -> TokenStats | None:
        if not values:
            return None
        if len(values) == 1:
            p5 = p95 = float(values[0])
        else:
            cuts = statistics.quantiles(values, n=20, method="inclusive")
            p5, p95 = cuts[0], cuts[-1]
        return cls(
            min=min(values),
            max=max(values),
            mean=statistics.fmean(values),
            median=float(statistics.median(values)),
            p5=p5,
            p95=p95,
        )


@dataclass
class ValidationReport:
    """What ``validate`` found. ``ok`` is False on any format error; warnings never fail it."""

    path: str
    target: str
    model: str | None
    file_format: str | None  # the line format detected (openai-chat, sharegpt, ...)
    n_examples: int = 0
    errors: dict[str, list[int]] = field(default_factory=dict)
    warnings: dict[str, list[int]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # first explanation per key
    tokens: TokenStats | None = None
    token_limit: int | None = None
    tokens_per_epoch: int = 0
    epochs: int | None = None
    billed_tokens: int | None = None
    price_per_1m: float | None = None
    cost_usd: float | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    hyperparameter_rule: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_count(self) -> int:
        return sum(max(1, len(lines)) for lines in self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        head = f"{self.path}: {self.n_examples} examples, format {self.file_format or 'unknown'}, target {self.target}"
        if self.model:
            head += f", model {self.model}"
        if self.token_limit:
            head += f" (limit {self.token_limit:,} tokens per example)"
        out = [head]
        out.append("No format errors." if self.ok else "Format errors:")
        out += self._listing(self.errors)
        if self.warnings:
            out.append("Warnings:")
            out += self._listing(self.warnings)
        if self.tokens:
            t = self.tokens
            out.append(
                f"Tokens per example: min {t.min:,}, max {t.max:,}, mean {t.mean:,.1f}, "
                f"median {t.median:,.1f}, p5 {t.p5:,.1f}, p95 {t.p95:,.1f}"
            )
        if self.epochs is not None and self.billed_tokens is not None:
            out.append(
                f"Billed training tokens: {self.tokens_per_epoch:,} per epoch x {self.epochs} epochs "
                f"(default for {self.n_examples} examples) = {self.billed_tokens:,}"
            )
        else:
            out.append(f"Training tokens per epoch: {self.tokens_per_epoch:,}")
        if self.cost_usd is not None:
            out.append(f"Estimated training cost: ${self.cost_usd:,.2f} at ${self.price_per_1m:,.2f} per 1M tokens")
        if self.batch_size is not None:
            out.append(
                f"Suggested batch size {self.batch_size}, learning-rate multiplier "
                f"{self.learning_rate_multiplier} (rule: {self.hyperparameter_rule})"
            )
        out += [f"Note: {n}" for n in self.notes]
        return "\n".join(out)

    def _listing(self, found: dict[str, list[int]]) -> list[str]:
        lines = []
        for key, where in sorted(found.items()):
            text = f"  {key}: {len(where) if where else 1}"
            if where:
                shown = ", ".join(map(str, where[:_SHOWN_LINES]))
                more = f" and {len(where) - _SHOWN_LINES} more" if len(where) > _SHOWN_LINES else ""
                text += f" (line{'s' if len(where) > 1 else ''} {shown}{more})"
            if key in self.details:
                text += f" - {self.details[key]}"
            lines.append(text)
        return lines


# --- reading ---------------------------------------------------------------------------------


def read_text_lines(path: Path) -> Iterator[str]:
    """The file's lines, one at a time (a training file of a million lines is never held whole),
    or a one-line DataFileError naming the file (and line for bad bytes)."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, not a JSONL file") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror})") from None
    # Split on \n only (as binary files are): JSON strings may hold U+2028 and friends, which
    # str.splitlines() splits on.
    with fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFileError(f"{path}:{number}: not UTF-8 (byte 0x{raw[exc.start]:02x})") from None
            yield line.removesuffix("\n").removesuffix("\r")


def _detect(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "chat"
    if "input" in obj and "preferred_output" in obj:
        return "preference-openai"
    if "chosen" in obj and "rejected" in obj:
        return "preference-trl"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "openai-completion"
    return None


_SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}

# --- checking --------------------------------------------------------------------------------


class _Checker:
    """Walks a file line by line, recording error keys with line numbers and token lengths."""

    def __init__(self, target: Target, model: str | None) -> None:
        self.target = target
        self.model = model
        self.errors: dict[str, list[int]] = defaultdict(list)
        self.warnings: dict[str, list[int]] = defaultdict(list)
        self.details: dict[str, str] = {}
        self.lengths: list[int] = []  # token length of each countable example
        self.length_lines: list[int] = []

    def measure(self, line: int, n: int) -> None:
        self.lengths.append(n)
        self.length_lines.append(line)

    def error(self, key: str, line: int | None, detail: str) -> None:
        where = self.errors[key]
        if line is not None and line not in where:
            where.append(line)
        self.details.setdefault(key, detail)

    def warn(self, key: str, line: int | None, detail: str) -> None:
        where = self.warnings[key]
        if line is not None and line not in where:
            where.append(line)
        self.details.setdefault(key, detail)

    # -- chat messages (shared by chat, both preference formats) --

    def messages(self, line: int, messages: Any, *, need_assistant: bool = True) -> bool:
        t = self.target
        if not isinstance(messages, list) or not messages:
            self.error("missing_messages_list", line, "no non-empty 'messages' list")
            return False
        valid = True
        for m in messages:
            if not isinstance(m, dict):
                self.error("data_type", line, "a message is not a JSON object")
                valid = False
                continue
            calls = m.get("tool_calls") or m.get("function_call")
            if "role" not in m or ("content" not in m and not calls):
                self.error("message_missing_key", line, "a message lacks 'role' or 'content'")
            extra = set(m) - t.message_keys
            if extra:
                self.error(
                    "message_unrecognized_key", line, f"message key {sorted(extra)[0]!r} is not accepted by {t.name}"
                )
            role = m.get("role")
            if not isinstance(role, str) or role not in t.roles:
                self.error("unrecognized_role", line, f"role {role!r} is not one of {sorted(t.roles)}")
            content = m.get("content")
            text_ok = isinstance(content, str) and content != ""
            parts_ok = (
                isinstance(content, list)
                and bool(content)
                and all(isinstance(p, dict) and "type" in p for p in content)
                and t.openai_epochs  # content-part arrays are OpenAI's (vision) extension
            )
            if not (text_ok or parts_ok or (calls and content in (None, ""))):
                self.error("missing_content", line, "message content is missing, empty or not a string")
            weight = m.get("weight")
            bad_weight = weight not in (0, 1) or isinstance(weight, bool) or role != "assistant"
            if "weight" in m and t.allows_weight and bad_weight:
                self.error("invalid_weight", line, "weight must be 0 or 1 and only on assistant messages")
        if need_assistant and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            self.error("example_missing_assistant_message", line, "no assistant message to learn from")
        dicts = [m for m in messages if isinstance(m, dict)]
        if t.system_first_only and any(m.get("role") == "system" for m in dicts[1:]):
            self.error("system_not_first", line, f"{t.name} accepts a system message only as the first message")
        if t.alternating_roles:
            roles = [m.get("role") for m in dicts if m.get("role") != "system" or m is not dicts[0]]
            if dicts and dicts[0].get("role") not in ("system", "user"):
                self.error("roles_not_alternating", line, f"{t.name} conversations start with system or user")
            elif any(a == b and a != "tool" for a, b in itertools.pairwise(roles)):
                self.error("roles_not_alternating", line, f"{t.name} needs user and assistant turns to alternate")
        return valid

    def top_keys(self, line: int, obj: dict[str, Any], allowed: set[str]) -> None:
        extra = set(obj) - allowed - {"tools"}
        if extra:
            detail = f"top-level key {sorted(extra)[0]!r} is not part of the format"
            if self.target.strict_columns:
                self.error("example_unrecognized_key", line, detail + f" ({self.target.name} rejects extra columns)")
            else:
                self.warn("example_unrecognized_key", line, detail + " (ignored or rejected by the trainer)")

    def count(self, messages: list[Any], extra: Any = None) -> int:
        dicts = [m for m in messages if isinstance(m, dict)]
        n = tokens.count_messages(dicts, self.model)
        calls = [m["tool_calls"] for m in dicts if m.get("tool_calls")]
        for payload in (*calls, extra):
            if payload:
                n += tokens.count_tokens(json.dumps(payload), self.model)
        return n

    # -- one checker per line shape --

    def chat(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"messages", "parallel_tool_calls", "functions"})
        if self.messages(line, obj.get("messages")):
            self.measure(line, self.count(obj["messages"], obj.get("tools")))

    def preference_openai(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"input", "preferred_output", "non_preferred_output"})
        prompt = obj.get("input")
        if not isinstance(prompt, dict):
            self.error("missing_field", line, "'input' must be an object holding 'messages'")
            return
        ok = self.messages(line, prompt.get("messages"), need_assistant=False)
        for key in ("preferred_output", "non_preferred_output"):
            out = obj.get(key)
            if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict)
                    and out[0].get("role") == "assistant"):
                self.error("invalid_output", line, f"'{key}' must be a list of exactly one assistant message")
                ok = False
            else:
                ok = self.messages(line, out) and ok
        if ok:
            self.measure(line, self.count(prompt["messages"] + obj["preferred_output"], prompt.get("tools")))

    def preference_trl(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"prompt", "chosen", "rejected"})
        ok = self.messages(line, obj.get("prompt"), need_assistant=False)
        for key in ("chosen", "rejected"):
            out = obj.get(key)
            if not (isinstance(out, list) and out and all(isinstance(m, dict) for m in out)):
                self.error("invalid_output", line, f"'{key}' must be a non-empty list of messages")
                ok = False
            else:
                ok = self.messages(line, out) and ok
        if ok:
            self.measure(line, self.count(obj["prompt"] + obj["chosen"]))

    def sharegpt(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"conversations", "system"})
        turns = obj.get("conversations")
        if not isinstance(turns, list) or not turns:
            self.error("missing_messages_list", line, "no non-empty 'conversations' list")
            return
        as_messages = []
        for turn in turns:
            if not isinstance(turn, dict):
                self.error("data_type", line, "a turn is not a JSON object")
                return
            if "from" not in turn or "value" not in turn:
                self.error("message_missing_key", line, "a turn lacks 'from' or 'value'")
            if set(turn) - {"from", "value"}:
                self.error("message_unrecognized_key", line, "ShareGPT turns have only 'from' and 'value'")
            source = turn.get("from")
            role = _SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
            if role is None:
                self.error("unrecognized_role", line, "'from' must be system, human or gpt")
            if not (isinstance(turn.get("value"), str) and turn["value"]):
                self.error("missing_content", line, "'value' is missing, empty or not a string")
            as_messages.append({"role": role or "user", "content": str(turn.get("value", ""))})
        if not any(m["role"] == "assistant" for m in as_messages):
            self.error("example_missing_assistant_message", line, "no gpt turn to learn from")
        self.measure(line, self.count(as_messages))

    def fields(self, line: int, obj: dict[str, Any], required: dict[str, bool]) -> bool:
        """Plain string fields; ``required[name]`` says whether the string may be empty."""
        ok = True
        for name, may_be_empty in required.items():
            if name not in obj:
                self.error("missing_field", line, f"field {name!r} is missing")
                ok = False
            elif not isinstance(obj[name], str) or (not may_be_empty and not obj[name]):
                self.error("field_type", line, f"field {name!r} must be a{'' if may_be_empty else ' non-empty'} string")
                ok = False
        return ok

    def alpaca(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"instruction", "input", "output", "system"})
        if self.fields(line, obj, {"instruction": False, "input": True, "output": False}):
            self.measure(line, tokens.count_tokens(obj["instruction"] + obj["input"] + obj["output"], self.model))

    def completion(self, line: int, obj: dict[str, Any]) -> None:
        self.top_keys(line, obj, {"prompt", "completion"})
        if self.fields(line, obj, {"prompt": False, "completion": False}):
            if not obj["completion"][:1].isspace():
                self.warn("completion_no_leading_space", line, "legacy completions should start with a space")
            self.measure(line, tokens.count_tokens(obj["prompt"] + obj["completion"], self.model))


_CHECKS = {
    "chat": _Checker.chat,
    "preference-openai": _Checker.preference_openai,
    "preference-trl": _Checker.preference_trl,
    "sharegpt": _Checker.sharegpt,
    "alpaca": _Checker.alpaca,
    "openai-completion": _Checker.completion,
}


def validate_file(path: str | Path, *, model: str | None = None, target: str = "openai") -> ValidationReport:
    """Validate one JSONL file for a target (and model, for its token limit and price).

    Raises ``DataFileError`` (exit 2) when the file cannot be read as UTF-8 text; everything
    about its content goes in the report.
    """
    path = Path(path)
    tgt = get_target(target)
    model = model or tgt.default_model
    lines = read_text_lines(path)
    check = _Checker(tgt, model)

    shape: str | None = None
    n_examples = 0
    for lineno, raw in enumerate(lines, 1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            check.error("invalid_json", lineno, f"not valid JSON ({exc.msg})")
            continue
        n_examples += 1
        if not isinstance(obj, dict):
            check.error("data_type", lineno, "the line is not a JSON object")
            continue
        shape = shape or _detect(obj) or "chat"
        _CHECKS[shape](check, lineno, obj)

    report = ValidationReport(path=str(path), target=tgt.name, model=model, file_format=_format_name(shape, tgt))
    report.n_examples = n_examples
    if shape and not _accepts(tgt, shape):
        accepted = ", ".join(tgt.formats)
        detail = f"{report.file_format} files are not read by {tgt.name}; it takes {accepted}"
        check.error("format_not_accepted", None, detail)
    _count_rules(check, tgt, n_examples)
    size = path.stat().st_size
    if tgt.max_file_bytes is not None and size > tgt.max_file_bytes:
        check.error("file_too_large", None, f"{size:,} bytes; {tgt.name} takes files up to {tgt.max_file_bytes:,}")

    limits = tgt.limits(model)
    report.token_limit = limits.context if limits else None
    if limits:
        over = [line for line, n in zip(check.length_lines, check.lengths, strict=True) if n > limits.context]
        for line in over:
            check.warn(
                "example_over_token_limit",
                line,
                f"longer than {limits.context:,} tokens: truncated in training (and billed up to the limit)",
            )
    report.errors = dict(check.errors)
    report.warnings = dict(check.warnings)
    report.details = check.details
    report.tokens = TokenStats.of(check.lengths)
    report.tokens_per_epoch = billed_tokens(check.lengths, report.token_limit, 1)
    if tgt.openai_epochs:
        report.epochs = default_epochs(n_examples)
        report.billed_tokens = report.tokens_per_epoch * report.epochs
        if limits and limits.train_usd_per_1m is not None:
            report.price_per_1m = limits.train_usd_per_1m
            report.cost_usd = report.billed_tokens * limits.train_usd_per_1m / 1_000_000
        report.batch_size, report.learning_rate_multiplier = suggest_hyperparameters(n_examples)
        report.hyperparameter_rule = HYPERPARAMETER_RULE
    if tgt.openai_epochs and model and not limits:
        report.notes.append(f"{model} is not in the {tgt.name} table: no token limit or price checked")
    note = tokens.encoding_note(model)
    if note:
        report.notes.append(note)
    if tgt.notes and not limits:
        report.notes.append(tgt.notes)
    return report


def _format_name(shape: str | None, target: Target) -> str | None:
    if shape == "chat":
        return "openai-chat" if "openai-chat" in target.formats or "messages" not in target.formats else "messages"
    return shape


def _accepts(target: Target, shape: str) -> bool:
    if shape == "chat":
        return "openai-chat" in target.formats or "messages" in target.formats
    return shape in target.formats


def _count_rules(check: _Checker, target: Target, n: int) -> None:
    if target.min_examples is not None and n < target.min_examples:
        check.error("too_few_examples", None, f"{n} examples; {target.name} needs at least {target.min_examples}")
    elif target.recommended_examples and n < target.recommended_examples[0]:
        low, high = target.recommended_examples
        check.warn(
            "below_recommended_examples", None, f"{n} examples; {target.name} sees improvements from {low}-{high}"
        )
    if target.max_examples is not None and n > target.max_examples:
        check.error("too_many_examples", None, f"{n} examples; {target.name} takes at most {target.max_examples:,}")


def overlapping_lines(train: str | Path, validation: str | Path) -> list[int]:
    """1-based lines of ``validation`` whose example is also in ``train`` (same JSON, key order
    aside): providers that take a validation file want it disjoint from the training file, or its
    loss says nothing about examples the model has not seen."""
    def canonical(raw: str) -> str | None:
        try:
            return json.dumps(json.loads(raw), sort_keys=True, ensure_ascii=False)
        except json.JSONDecodeError:
            return None

    seen = {canonical(raw) for raw in read_text_lines(Path(train))} - {None}
    return [n for n, raw in enumerate(read_text_lines(Path(validation)), 1) if canonical(raw) in seen]
