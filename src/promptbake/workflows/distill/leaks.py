"""The long prompt's own few-shot examples, kept out of the training data.

A student evaluated on the prompt's own examples would look better than it is, so inputs copying
them (exactly or nearly) never become training data. Two conventions are recognised:

* ``<example>`` … ``</example>`` blocks; inside, ``<input>``/``<output>`` tags, else labels as
  below, else the whole block is the input;
* labelled pairs: a line starting with ``Input:`` or ``User:`` (optionally decorated as
  ``**Input:**``, ``### Input:``, ``- Input:``) opens an input that runs until a line starting
  with ``Output:``, ``Assistant:`` or ``Answer:``, whose text runs to the next blank line (an
  input with no output label after it is not taken as an example).

A Markdown heading, a ``---`` rule or an ``<example>`` tag also ends an input or output. Examples
that quote a long run of the prompt itself are counted as traces of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from promptbake.records import Example

EXAMPLE_ID = "prompt-example-"  # ids of the prompt's own examples in dropped.jsonl
TRACE_CHARS = 40  # a shared run this long between an example and the long prompt is a trace


@dataclass(frozen=True)
class PromptExample:
    input: str
    output: str
    line: int  # 1-based line of the prompt where the example starts


_LABEL = re.compile(
    r"^[ \t#>*_-]*(?P<label>input|user|output|assistant|answer)[ \t*_]*:[ \t*_]*(?P<rest>.*)$", re.IGNORECASE
)
_INPUT_LABELS = {"input", "user"}
_BLOCK = re.compile(r"<example>(?P<body>.*?)</example>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<(?P<tag>input|output)>(?P<body>.*?)</(?P=tag)>", re.IGNORECASE | re.DOTALL)
_STOP = re.compile(r"^\s*(#|---|\*\*\*|</?example>)", re.IGNORECASE)


def _clean(lines: list[str]) -> str:
    text = "\n".join(line for line in lines if not line.strip().startswith("```"))
    return text.strip()


def _labelled(text: str, first_line: int) -> list[PromptExample]:
    """``Input:`` / ``Output:`` pairs in ``text`` (see the module docstring for the rules)."""
    found: list[PromptExample] = []
    state, start = "", 0
    inp: list[str] = []
    out: list[str] = []

    def flush() -> None:
        # without its output label, an "Input:" or "User:" line is more likely prose than an example
        if state == "output" and _clean(inp):
            found.append(PromptExample(_clean(inp), _clean(out), start))

    for number, line in enumerate(text.splitlines(), first_line):
        match = _LABEL.match(line)
        if match and match["label"].lower() in _INPUT_LABELS:
            flush()
            state, start, inp, out = "input", number, [match["rest"]], []
        elif match and state == "input":
            state, out = "output", [match["rest"]]
        elif _STOP.match(line) or (state == "output" and not line.strip() and _clean(out)):
            if state:
                flush()
            state, inp, out = "", [], []
        elif state == "input":
            inp.append(line)
        elif state == "output":
            out.append(line)
    if state:
        flush()
    return found


def prompt_examples(text: str) -> list[PromptExample]:
    """The few-shot examples written inside a long prompt, in order of appearance."""
    found: list[PromptExample] = []
    outside = text
    for block in _BLOCK.finditer(text):
        line = text.count("\n", 0, block.start()) + 1
        body = block["body"]
        tags = {m["tag"].lower(): m["body"].strip() for m in _TAG.finditer(body)}
        if "input" in tags:
            found.append(PromptExample(tags["input"], tags.get("output", ""), line))
        else:
            found.extend(_labelled(body, line) or [PromptExample(body.strip(), "", line)])
        # blank the block out (keeping line numbers) so labels inside it are not read twice
        outside = outside.replace(block.group(0), "\n" * block.group(0).count("\n"), 1)
    found.extend(_labelled(outside, 1))
    return sorted(found, key=lambda e: e.line)


def leakage_guard(examples: list[PromptExample]) -> list[Example]:
    """The prompt's examples as records for ``build(existing=...)``: dedupe then drops every
    training example whose input equals or nearly equals one of them."""
    return [
        Example(id=f"{EXAMPLE_ID}{i}", category="prompt", messages=[
            {"role": "user", "content": e.input}, {"role": "assistant", "content": e.output}])
        for i, e in enumerate(examples, 1)
    ]


def quotes_prompt(rows: list[dict[str, Any]], windows: set[str]) -> int:
    """Examples whose user/assistant text shares a ``TRACE_CHARS`` run with the long prompt."""
    hits = 0
    for row in rows:
        texts = [m.get("content") for m in row.get("messages", []) if m.get("role") in ("user", "assistant")]
        if any(isinstance(t, str) and any(t[i:i + TRACE_CHARS] in windows for i in range(len(t) - TRACE_CHARS + 1))
               for t in texts):
            hits += 1
    return hits


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list) else []


def prompt_windows(prompt: str, examples: list[PromptExample]) -> set[str]:
    """Every ``TRACE_CHARS``-long run of the prompt. In a JSON example output only the string
    values count: an answer in the required format legitimately shares its keys and layout, but
    copying the example's summary is a trace."""
    for e in examples:
        try:
            kept = _strings(json.loads(e.output))
        except json.JSONDecodeError:
            continue
        prompt = prompt.replace(e.output, "\0" + "\0".join(kept) + "\0")
    runs = (prompt[i:i + TRACE_CHARS] for i in range(len(prompt) - TRACE_CHARS + 1))
    return {run for run in runs if "\0" not in run}
