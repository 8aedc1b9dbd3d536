"""What a reader would hold against an example, measured without a judge: the built-in heuristics.

The report's quality panel flags every example with them whether or not the spec gated on them, so
a dataset whose gates let politeness through still shows it. The phrase lists are ``phrases.py``'s,
shared with the filters and the committed sample's test."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from promptbake.curate.checks import last_assistant
from promptbake.curate.filters import (
    ECHO_THRESHOLD,
    LANGUAGE_CONFIDENCE,
    detect_language,
    echo_score,
    last_user,
    refusals,
)
from promptbake.curate.phrases import apology, polite, staff_voice

# The heuristics the report's quality panel shows, in order: (key, label, what it means)
HEURISTICS: tuple[tuple[str, str, str], ...] = (
    ("echo", "echo", f"the answer repeats ≥ {ECHO_THRESHOLD:.0%} of the user's word trigrams"),
    ("refusal", "refusal / apology", "the answer refuses like a chat model or apologizes (sorry, apolog…, "
                                     "inconvenience)"),
    ("polite", "politeness", "the answer carries a polite or service phrase (you're welcome, no worries, "
                             "how can I help, thank you, please, …)"),
    ("staff_voice", "customer sounds like staff", "the user's line says what the staff say (how can I help, "
                                                  "sorry for the inconvenience, you're welcome, …)"),
    ("non_english", "non-English", f"the user's line or the answer is detected as another language "
                                   f"(confidence ≥ {LANGUAGE_CONFIDENCE})"),
)


def _foreign(text: str) -> bool:
    if not text.strip():
        return False
    lang, confidence = detect_language(text)
    return lang != "en" and confidence >= LANGUAGE_CONFIDENCE


def flags(messages: list[dict[str, Any]]) -> list[str]:
    """The heuristics (keys of :data:`HEURISTICS`) an example's last user line and answer trip."""
    prompt, answer = last_user(messages), last_assistant(messages)
    found = []
    if prompt and echo_score(prompt, answer) >= ECHO_THRESHOLD:
        found.append("echo")
    if refusals().search(answer) or apology().search(answer):
        found.append("refusal")
    if polite().search(answer):
        found.append("polite")
    if staff_voice().search(prompt):
        found.append("staff_voice")
    if _foreign(prompt) or _foreign(answer):
        found.append("non_english")
    return found


def flag_counts(rows: Iterable[list[str]]) -> dict[str, int]:
    """How many rows carry each heuristic's flag (every heuristic listed, zeros included)."""
    counts = {key: 0 for key, _, _ in HEURISTICS}
    for row in rows:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    return counts
