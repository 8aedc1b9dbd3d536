"""Fine-tuning line formats: one ``Example`` in, one JSON object per JSONL line out.

Every trainer wants the same conversation in a slightly different shape. Each format is a pure
function of (example, output config), registered in ``FORMATS``; an example a format cannot
express faithfully is refused with ``FormatRefused`` naming the example and the reason, never cut
down silently. ``write_split`` collects refusals instead of stopping at the first, so the caller
(build or export) decides whether a partly refused split is acceptable.

Which targets read which format is in ``targets.TARGETS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptbake.errors import InputError
from promptbake.output.atomic import ensure_dir, write_jsonl_atomic
from promptbake.records import Example
from promptbake.specification.models import OutputConfig

Row = dict[str, Any]


class FormatRefused(InputError):
    """An example that a format cannot express (multi-turn for alpaca, no rejected answer for DPO)."""

    def __init__(self, example_id: str, fmt: str, reason: str) -> None:
        super().__init__(f"example {example_id!r} cannot be written as {fmt}: {reason}")
        self.example_id = example_id
        self.format = fmt
        self.reason = reason


@dataclass(frozen=True)
class Format:
    """A named line format. ``kind`` says what the trainer does with it: ``sft`` or ``preference``."""

    name: str
    kind: str
    doc: str
    _convert: Callable[[Example, OutputConfig], Row]
    needs: str = "nothing: train on the file as it is"  # what a trainer needs beyond the file

    def convert(self, example: Example, config: OutputConfig | None = None) -> Row:
        return self._convert(example, config or OutputConfig())


# --- shared pieces ---------------------------------------------------------------------------

# Keys an OpenAI-compatible chat message may carry; anything else (our own bookkeeping) is dropped.
_CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")


def _refuse(example: Example, fmt: str, reason: str) -> FormatRefused:
    return FormatRefused(example.id, fmt, reason)


def _has_tools(example: Example) -> bool:
    return bool(example.tools) or any(
        m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function")
        for m in example.messages
    )


def _chat_message(message: dict[str, Any], *, keep_weight: bool) -> dict[str, Any]:
    """One message in OpenAI chat shape.

    ``developer`` becomes ``system``: fine-tuning files (OpenAI's data-prep rules, Together,
    Fireworks, chat templates) know ``system`` but not ``developer``, which is only a request-time
    alias of it.
    """
    out = {k: message[k] for k in _CHAT_KEYS if k in message}
    if out.get("role") == "developer":
        out["role"] = "system"
    if keep_weight and message.get("weight") is not None:
        out["weight"] = message["weight"]
    return out


def _split_last_turn(example: Example, fmt: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages before the final assistant turn, that turn): what prompt/completion pairs need."""
    if not example.messages or example.messages[-1].get("role") != "assistant":
        raise _refuse(example, fmt, "the conversation does not end with an assistant message")
    return example.messages[:-1], example.messages[-1]


def _text(example: Example, fmt: str, message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(p.get("text", "") for p in content)
    raise _refuse(example, fmt, f"a {message.get('role')} message has no plain-text content")


def _rejected(example: Example, fmt: str) -> dict[str, Any]:
    if not example.rejected:
        raise _refuse(
            example, fmt, "it has no rejected answer: build it from a spec with an example.rejected template "
            "(generators/rude_agent_dpo.yaml is one)"
        )
    rejected = {**example.rejected, "role": example.rejected.get("role", "assistant")}
    if rejected["role"] != "assistant":
        raise _refuse(example, fmt, "its rejected answer is not an assistant message")
    return _chat_message(rejected, keep_weight=False)


# --- the formats -----------------------------------------------------------------------------


def _openai_chat(example: Example, config: OutputConfig) -> Row:
    row: Row = {"messages": [_chat_message(m, keep_weight=True) for m in example.messages]}
    if example.tools:
        row["tools"] = example.tools
    return row


def _messages(example: Example, config: OutputConfig) -> Row:
    row: Row = {"messages": [_chat_message(m, keep_weight=False) for m in example.messages]}
    if example.tools:
        row["tools"] = example.tools
    return row


_ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def _openai_completion(example: Example, config: OutputConfig) -> Row:
    name = "openai-completion"
    if _has_tools(example):
        raise _refuse(example, name, "tool calls cannot be rendered as a plain-text prompt")
    before, last = _split_last_turn(example, name)
    if not any(m.get("role") == "user" for m in before):
        raise _refuse(example, name, "there is no user message to build a prompt from")
    if len(before) == 1:
        prompt = _text(example, name, before[0])
    else:
        prompt = "\n\n".join(
            f"{_ROLE_LABELS.get(m['role'], m['role'].title())}: {_text(example, name, m)}" for m in before
        )
    answer = _text(example, name, last)
    # Either marker inside the text would move the boundary the model learns to stop at.
    if config.completion_separator and config.completion_separator in prompt:
        raise _refuse(example, name, f"its prompt contains the separator {config.completion_separator!r}")
    if config.completion_stop and config.completion_stop in answer:
        raise _refuse(example, name, f"its answer contains the stop sequence {config.completion_stop!r}")
    completion = answer if answer[:1].isspace() else " " + answer
    return {"prompt": prompt + config.completion_separator, "completion": completion + config.completion_stop}


_SHAREGPT_ROLES = {"system": "system", "developer": "system", "user": "human", "assistant": "gpt"}


def _sharegpt(example: Example, config: OutputConfig) -> Row:
    name = "sharegpt"
    if _has_tools(example):
        raise _refuse(example, name, "ShareGPT has no tool-call turns (use the messages format)")
    unknown = {m.get("role") for m in example.messages} - set(_SHAREGPT_ROLES)
    if unknown:
        raise _refuse(example, name, f"ShareGPT has no role for {sorted(map(str, unknown))}")
    return {
        "conversations": [
            {"from": _SHAREGPT_ROLES[m["role"]], "value": _text(example, name, m)} for m in example.messages
        ]
    }


def _alpaca(example: Example, config: OutputConfig) -> Row:
    name = "alpaca"
    if _has_tools(example):
        raise _refuse(example, name, "alpaca has no tool calls (use the messages format)")
    roles = [m.get("role") for m in example.messages]
    system = [m for m in example.messages if m.get("role") in ("system", "developer")]
    turns = [m for m in example.messages if m.get("role") not in ("system", "developer")]
    if [m.get("role") for m in turns] != ["user", "assistant"]:
        raise _refuse(
            example,
            name,
            f"alpaca is single-turn (one user, one assistant message) but this conversation has "
            f"roles {roles}; export it as messages or sharegpt instead",
        )
    user, answer = (_text(example, name, m) for m in turns)
    if len(system) > 1:
        raise _refuse(example, name, "it has more than one system message")
    # With a system prompt, it is the task (instruction) and the user turn its input.
    if system:
        return {"instruction": _text(example, name, system[0]), "input": user, "output": answer}
    return {"instruction": user, "input": "", "output": answer}


def _preference_openai(example: Example, config: OutputConfig) -> Row:
    name = "preference-openai"
    rejected = _rejected(example, name)
    before, last = _split_last_turn(example, name)
    prompt: Row = {"messages": [_chat_message(m, keep_weight=False) for m in before]}
    if example.tools:
        prompt["tools"] = example.tools
    return {
        "input": prompt,
        "preferred_output": [_chat_message(last, keep_weight=False)],
        "non_preferred_output": [rejected],
    }


def _preference_trl(example: Example, config: OutputConfig) -> Row:
    name = "preference-trl"
    rejected = _rejected(example, name)
    if example.tools:
        raise _refuse(example, name, "TRL's preference columns have no documented tools field")
    before, last = _split_last_turn(example, name)
    return {
        "prompt": [_chat_message(m, keep_weight=False) for m in before],
        "chosen": [_chat_message(last, keep_weight=False)],
        "rejected": [rejected],
    }


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "openai-chat",
            "sft",
            "OpenAI chat fine-tuning: {messages, tools?}; weight 0/1 kept on assistant turns.",
            _openai_chat,
        ),
        Format(
            "messages",
            "sft",
            "Conversational JSONL {messages, tools?} with role/content (plus tool_calls, "
            "tool_call_id): TRL SFTTrainer, Axolotl chat_template (field_messages: messages), "
            "Together and Fireworks. weight is dropped (TRL and Axolotl ignore it); use "
            "openai-chat to keep it for Together/Fireworks.",
            _messages,
            "TRL: `load_dataset(\"json\", ...)`, as is; Axolotl: `type: chat_template`.",
        ),
        Format(
            "openai-completion",
            "sft",
            "Legacy {prompt, completion}: prompt ends with the separator, completion starts with "
            "a space and ends with the stop sequence (OpenAI babbage/davinci, Together instruction).",
            _openai_completion,
        ),
        Format(
            "sharegpt",
            "sft",
            "{conversations: [{from, value}]} with from system/human/gpt (Axolotl, LLaMA-Factory, "
            "Unsloth). No tool turns.",
            _sharegpt,
            "Axolotl and LLaMA-Factory map `human`/`gpt` to user/assistant; TRL keeps them as roles, so "
            "map them for TRL (or use `messages`).",
        ),
        Format(
            "alpaca",
            "sft",
            "{instruction, input, output}: single-turn only; a system prompt becomes the "
            "instruction and the user message its input.",
            _alpaca,
            "Axolotl `type: alpaca`, LLaMA-Factory as is; for TRL it is a prompt/completion dataset: "
            "`prompt` = instruction + input, `completion` = output.",
        ),
        Format(
            "preference-openai",
            "preference",
            "OpenAI DPO {input: {messages, tools?}, preferred_output, non_preferred_output} "
            "(also Azure, Together, Fireworks).",
            _preference_openai,
            "this is OpenAI's DPO shape, not TRL's: for DPOTrainer use `preference-trl` or `hf-preference`.",
        ),
        Format(
            "preference-trl",
            "preference",
            "TRL conversational preference {prompt, chosen, rejected} (DPOTrainer; Axolotl "
            "rl: dpo with type chat_template.default and field_messages: prompt).",
            _preference_trl,
            "TRL DPOTrainer: `load_dataset(\"json\", ...)`, as is.",
        ),
    )
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown format {name!r}: choose one of {', '.join(FORMATS)}") from None


@dataclass
class WriteReport:
    """What one split file received: counts, and enough refused ids to find the culprits."""

    path: Path
    format: str
    written: int = 0
    refused: int = 0
    refusals: list[FormatRefused] = field(default_factory=list)  # the first few

    KEEP = 5

    @property
    def refused_ids(self) -> list[str]:
        return [r.example_id for r in self.refusals]

    def summary(self) -> str:
        text = f"{self.path}: {self.written} written as {self.format}"
        if self.refused:
            text += f", {self.refused} refused (first: {self.refusals[0].reason}; ids {', '.join(self.refused_ids)})"
        return text


def convert_all(
    examples: Iterable[Example], fmt: Format | str, config: OutputConfig | None = None
) -> tuple[list[Row], list[FormatRefused]]:
    """Convert every example; refusals are collected, not raised."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    config = config or OutputConfig()
    rows: list[Row] = []
    refused: list[FormatRefused] = []
    for example in examples:
        try:
            rows.append(fmt.convert(example, config))
        except FormatRefused as exc:
            refused.append(exc)
    return rows, refused


def write_rows(path: str | Path, fmt: str, rows: list[Row], refused: list[FormatRefused]) -> WriteReport:
    """Write converted rows atomically (temp file + rename) and report what was left out."""
    path = Path(path)
    ensure_dir(path.parent)
    write_jsonl_atomic(path, rows)
    return WriteReport(path, fmt, len(rows), len(refused), refused[: WriteReport.KEEP])


def write_split(
    examples: Iterable[Example], fmt: Format | str, path: str | Path, config: OutputConfig | None = None
) -> WriteReport:
    """Write one split in one format; refused examples are counted and skipped, not fatal. Each
    example is converted and written as it comes: ``examples`` may be read from disk one by one."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    config = config or OutputConfig()
    path = Path(path)
    report = WriteReport(path, fmt.name)

    def rows() -> Iterator[Row]:
        for example in examples:
            try:
                row = fmt.convert(example, config)
            except FormatRefused as exc:
                report.refused += 1
                if len(report.refusals) < WriteReport.KEEP:
                    report.refusals.append(exc)
                continue
            yield row

    ensure_dir(path.parent)
    report.written = write_jsonl_atomic(path, rows())
    return report
