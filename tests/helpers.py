"""Small builders shared by tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MINIMAL_SPEC = """
name: mini
teacher:
  model: gpt-4o-mini
grid:
  axes:
    place: [shop, gym]
    mood: [calm, angry]
  count: 2
category: mood
steps:
  - name: ask
    parse: list
    messages:
      - role: user
        content: "Give {{ count }} things a {{ mood }} customer says at the {{ place }}."
  - name: answer
    messages:
      - role: system
        content: Be rude.
      - role: user
        content: "{{ ask }}"
example:
  messages:
    - role: user
      content: "{{ ask }}"
    - role: assistant
      content: "{{ answer }}"
split:
  test: 0.25
  seed: 1
"""


def sigint_default() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT. A shell without job control (a
    background ``&``, CI) starts its children with SIGINT ignored, and every process inherits that;
    Python then installs no Ctrl-C handler, and the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process for the block, even if it was started with
    SIGINT ignored (see :func:`sigint_default`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_spec(directory: Path, text: str = MINIMAL_SPEC, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def list_then_reply_responder(dupe_every: int = 0):
    """A teacher for grid specs: list prompts ("... JSON array ...", "Give N things") get a JSON
    list of distinct utterances; anything else gets a rude reply echoing the user text. With
    ``dupe_every`` = k, every k-th utterance repeats an earlier one (to exercise dedupe/top-up)."""
    import itertools
    import json
    import re

    counter = itertools.count()
    words = [
        "refund",
        "manager",
        "coupon",
        "waiting",
        "closing",
        "quality",
        "payment",
        "return",
        "help",
        "price",
        "receipt",
        "size",
        "colour",
        "line",
        "staff",
        "broken",
        "late",
        "noisy",
        "cold",
        "wrong",
    ]

    def respond(body: dict) -> str:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        match = re.search(r"(?:Give|Write) (\d+)", user)
        if match and body["messages"][0]["role"] != "system":
            items = []
            for _ in range(int(match.group(1))):
                i = next(counter)
                if dupe_every and i % dupe_every == dupe_every - 1:
                    i -= 1
                picked = [words[(i * 7 + j * 3) % len(words)] for j in range(4)]
                items.append(
                    f"Customer {i} says: my {picked[0]} and {picked[1]} problem, then {picked[2]} "
                    f"{picked[3]}, number {i * 7919 % 10007}."
                )
            return json.dumps(items)
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        if "rude" in system.lower():
            return f"Ugh. Fine. ({user[:60]}) Next!"
        return f"Happy to help with that! ({user[:60]})"

    return respond


TOOLS = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object", "properties": {}}}}]


def tool_call_example(*, rejected: bool = False):
    """A function-calling example: tool call, tool answer, final reply (formats and export tests)."""
    from promptbake.records import Example

    return Example(
        id="tool",
        category="refund",
        messages=[
            {"role": "user", "content": "Refund me"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "assistant", "content": "Done. Go away."},
        ],
        tools=TOOLS,
        rejected={"role": "assistant", "content": "Refunded, have a lovely day!"} if rejected else None,
    )


def same_output_under_hash_seeds(script: str, seeds: tuple[str, ...] = ("0", "123")) -> str:
    """Run ``script`` in fresh interpreters with different PYTHONHASHSEEDs; assert they all print
    the same thing (nothing may depend on set/dict order of str hashes) and return it."""
    import os
    import subprocess
    import sys

    outputs = {
        subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in seeds
    }
    assert len(outputs) == 1, outputs
    return outputs.pop()


ROOT = Path(__file__).resolve().parent.parent


def question_bank() -> dict[str, tuple[str, str]]:
    """Question text → (subject, right option) from the formatting task's banks: the JSON format
    task's and the embedded study's (generators/format_study.yaml)."""
    import json

    bank = {}
    for task in ("json_format", "format_study"):
        for line in (ROOT / "samples" / task / "question_sets.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for q in row["questions"]:
                bank[q["question"]] = (row["subject"], q["answer"])
    return bank


def json_format_responder(mistakes: dict[str, str] | None = None):
    """Answers the formatting task's prompts (``Question N: ...``) from the bank, right and in
    the asked JSON shape; ``mistakes`` maps a subject to the error made on it instead:
    ``wrong_first`` (first answer wrong), ``broken`` (code-fenced, unparseable), ``int_values``
    (numbers instead of strings), ``extra_key`` (a ``reason`` key in every item)."""
    import json
    import re

    bank = question_bank()

    def respond(body: dict) -> str | None:
        user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        questions = re.findall(r"^Question (\d+): (.*)$", user, re.M)
        if not questions:
            return None
        subject = bank[questions[0][1]][0]
        items = [{"question": int(n), "answer": bank[text][1]} for n, text in questions]
        mistake = (mistakes or {}).get(subject)
        if mistake == "wrong_first":
            items[0]["answer"] = str(int(items[0]["answer"]) % 4 + 1)
        elif mistake == "broken":
            return "```python\nanswers = [\n" + ",\n".join(str(i) for i in items)
        elif mistake == "int_values":
            items = [{**i, "answer": int(i["answer"])} for i in items]
        elif mistake == "extra_key":
            items = [{**i, "reason": "sure"} for i in items]
        return json.dumps(items)

    return respond


def schema_instance(schema: dict, text: str) -> object:
    """A value valid against a simple JSON schema, filled from ``text`` (a JSON list of strings
    fills arrays): how the stand-in answers a structured-output request."""
    import json

    try:
        strings = [s for s in json.loads(text) if isinstance(s, str)]
    except (ValueError, TypeError):
        strings = [text]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: schema_instance(v, text) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        low, high = schema.get("minItems", 1), schema.get("maxItems", len(strings))
        items = (strings * max(1, low))[: max(low, min(high, len(strings)))]
        return [schema_instance(schema.get("items", {}), json.dumps([s])) for s in items]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return (strings[0] if strings else text)[: schema.get("maxLength", 10_000)]


def readme_responder():
    """The README's stand-in teacher: the grid responder's lists and replies, judge verdicts,
    the formatting task's JSON answers, and schema-shaped answers to structured-output requests."""
    import hashlib
    import json
    import re

    from fakeserver import Raw

    grid, formatting = list_then_reply_responder(), json_format_responder()
    # the quick spec's customer: n lines in the customer's voice, on the cell's situation (its
    # scene as the prompt tells it: the words of each scene that name the situation)
    situations = {"money back": "I want my money back for this {k}, it broke.",
                  "closes in five minutes": "Are you closing already? I need my {k} first.",
                  "speak to the manager": "I want to speak to the manager about my {k} now."}
    # words, not digits: dedupe normalises numbers away, so only words tell two lines apart
    things = ["red", "blue", "green", "old", "new", "cheap", "fancy", "big", "small", "heavy", "wooden", "shiny",
              "plastic", "leather", "silver", "striped"]
    goods = ["kettle", "toaster", "jacket", "lamp", "blender", "umbrella", "chair", "clock", "radio", "scarf",
             "helmet", "backpack", "mixer", "heater", "speaker", "mirror"]

    def respond(body: dict) -> str | Raw:
        if "evaluator" in (body["messages"][0].get("content") or ""):
            return json.dumps({"reasoning": "Rude and short, as asked.", "score": 4})
        if (body["messages"][0].get("content") or "").startswith("You are an angry customer."):
            # a dialogue's customer turn (rude_agent_dialogues): first person, one per dialogue and turn
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            return Raw.completion([Raw.choice(f"I want my problem {digest[:6]}-{i} fixed right now, not later.",
                                              index=i) for i in range(int(body.get("n") or 1))])
        if (body["messages"][0].get("content") or "").startswith("You are a customer."):
            asked = body["messages"][-1]["content"]
            line = next(text for situation, text in situations.items() if situation in asked)
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
            return Raw.completion([Raw.choice(line.format(k=f"{things[(digest[i] + i) % 16]} "
                                                            f"{goods[(digest[i + 8] + 3 * i) % 16]}"), index=i)
                                   for i in range(int(body.get("n") or 1))])
        answer = formatting(body)
        if answer is not None:
            return answer
        user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if re.search(r"(?:Give|Write) \d+", user):  # a list prompt, with or without a system message
            body = {**body, "messages": [m for m in body["messages"] if m["role"] != "system"]}
        text = grid(body)
        if text.startswith("Ugh. Fine. ("):  # a reply, rude without echoing the customer (quick spec filters echoes)
            # on the customer's topic (the quick spec's on_topic), and sending a late one out of the door
            topic = next((w for w in ("money", "closing", "manager") if w in user), "problem")
            text = f"No {topic}. Out the door, pal. Ticket {hashlib.sha256(user.encode()).hexdigest()[:8]}."
        response_format = body.get("response_format") or {}
        schema = response_format.get("schema") or (response_format.get("json_schema") or {}).get("schema")
        return json.dumps(schema_instance(schema, text)) if schema else text

    return respond


def pure_grid_responder(fail: Callable[[dict], Any] | None = None):
    """Like :func:`list_then_reply_responder`, but every answer is a pure function of the request
    body: online and batch runs, in any order, get the same answers. ``fail(body)`` may return a
    fake-server ``Fault`` to fail that request instead."""
    import hashlib
    import json
    import re

    words = ["refund", "manager", "coupon", "waiting", "closing", "quality", "payment", "return", "help", "price",
             "receipt", "size", "colour", "line", "staff", "broken", "late", "noisy", "cold", "wrong", "ticket",
             "parking", "towel", "locker", "popcorn", "seat", "ride", "queue", "sofa", "delivery"]

    def respond(body: dict):
        if fail is not None and (fault := fail(body)) is not None:
            return fault
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        match = re.search(r"(?:Give|Write) (\d+)", user)
        if match and body["messages"][0]["role"] != "system":
            items = []
            for i in range(int(match.group(1))):
                picked = [words[(digest[(i * 5 + j) % 32] + 7 * i + j) % len(words)] for j in range(5)]
                items.append(f"Customer {digest[i % 32]}-{i}: my {picked[0]} and {picked[1]} problem, then "
                             f"{picked[2]} {picked[3]} {picked[4]}, number {int.from_bytes(digest[i:i + 3], 'big')}.")
            return json.dumps(items)
        return f"Ugh. Fine. ({user[:60]}) Ticket {digest.hex()[:10]}. Next!"

    return respond


# --- the study's tiny task (test_study.py, test_study_hosted.py) ---------------------------------

# Four colours × five questions; the teacher writes each question (a new one for a new seed, so a
# top-up finds new examples) and answers it in a JSON list; the example keeps neither the system
# message nor the instruction.
STUDY_SPEC = """
name: tiny_study
teacher: {model: gpt-4o-mini}
grid:
  axes:
    subject: [blue, gold, green, red]
    n: [1, 2, 3, 4, 5]
category: subject
steps:
  - name: question
    max_tokens: 8
    messages:
      - {role: user, content: "Write question {{ n }} about {{ subject }}."}
  - name: answer
    parse: json
    schema: {type: array, items: {type: object, required: [question, answer]}}
    temperature: 0
    max_tokens: 12
    messages:
      - {role: system, content: "Reply with JSON only: [{\\"question\\": 1, \\"answer\\": \\"N\\"}]."}
      - {role: user, content: "{{ question }}"}
example:
  messages:
    - {role: user, content: "{{ question }}"}
    - {role: assistant, content: "{{ answer }}"}
eval:
  answers: {keys: [question, answer], values: ["1", "2", "3", "4", "5"], field: answer}
split: {test: 4, seed: 1}
dedupe: {fields: [user], near: false}
"""

ASKED: Counter[str] = Counter()


def study_respond(body: dict) -> str | None:
    """Questions named by a hash of the request and of how often it was asked before (a top-up asks
    a cell again with the same prompt: a real teacher sampling at temperature 1 writes another
    question, and so does this one), answered right."""
    user = body["messages"][-1]["content"]
    asked = re.match(r"Write question (\d+) about (\w+)\.", user)
    if asked:
        key = json.dumps(body, sort_keys=True)
        digest = hashlib.sha256(f"{key}{ASKED[key]}".encode()).hexdigest()
        ASKED[key] += 1
        return f"Q{int(digest[:6], 16) % 9000 + 1000} {asked.group(2)}?"
    question = re.match(r"Q(\d+) (\w+)\?", user)
    return json.dumps([{"question": 1, "answer": str(int(question.group(1)) % 5 + 1)}]) if question else None
