"""Cheap quality filters: deterministic gates that run before any judge is paid.

A spec names them in ``filters:`` as bare names (``no_echo``) or one-key mappings
(``max_chars: 300``). Each failure is a short reason naming the filter, so the manifest can count
drops per gate and ``dropped.jsonl`` can say why every example went.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

from pydantic import RootModel, model_validator

from promptbake.curate.checks import last_assistant
from promptbake.curate.normalise import plain_quotes
from promptbake.curate.patterns import Pattern, check_pattern
from promptbake.curate.phrases import polite_phrase, staff_phrase
from promptbake.curate.sentiment import SentimentRange, parse_range, sentiment
from promptbake.curate.topic import shared_stems


@cache
def refusals() -> re.Pattern[str]:
    """Refusal and apology boilerplate of chat-tuned models: an answer carrying one did not do the task.
    (Compiled by its first use, not on import, as ``phrases.py``'s expressions.)"""
    return re.compile(
        r"\bas an ai\b|\bas a (large )?language model\b|\bi(?:'| a)m sorry,? but i (?:can(?:no|')t|won't)\b"
        r"|\bi can(?:no|')t (?:help|assist|comply|provide|do that)\b|\bi(?:'m| am) (?:unable|not able) to "
        r"(?:help|assist|comply)\b|\bi apologi[sz]e,? but\b",
        re.IGNORECASE,
    )


ECHO_THRESHOLD = 0.6  # share of the user's word trigrams the answer repeats


def last_user(messages: list[dict[str, Any]]) -> str:
    """The prompt an answer could echo: the last user message's text."""
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            return content
    return ""


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.findall(r"\w+", folded)


def echo_score(prompt: str, answer: str) -> float:
    """How much of the prompt the answer repeats: the share of the prompt's word trigrams (words,
    for prompts under three words) that also occur in the answer. Case and punctuation are ignored,
    so "Where is the manager?" echoed as "where is the manager" scores 1.0."""
    p, a = _words(prompt), _words(answer)
    n = 3 if len(p) >= 3 else 1
    grams = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
    if not grams:
        return 0.0
    seen = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    return len(grams & seen) / len(grams)


LANGUAGE_CONFIDENCE = 0.9  # below this the detector is unsure (short answers): keep the example


@cache
def _language_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """ISO 639-1 code and confidence, from py3langid (a maintained langid.py that ships its model:
    nothing is downloaded)."""
    lang, prob = _language_identifier().classify(text)
    return str(lang), float(prob)


Check = Callable[[str, str], str | None]  # (prompt, answer) -> reason it fails, or None


def _no_echo(threshold: float) -> Check:
    def check(prompt: str, answer: str) -> str | None:
        score = echo_score(prompt, answer)
        return f"no_echo: repeats {score:.0%} of the user's words" if score >= threshold else None

    return check


def _no_refusal(prompt: str, answer: str) -> str | None:
    match = refusals().search(plain_quotes(answer))  # "I’m sorry, but I can’t" is a refusal too
    return f"no_refusal: {answer[match.start():match.end()]!r}" if match else None


def _no_empty(prompt: str, answer: str) -> str | None:
    return "no_empty: empty answer" if not answer.strip() else None


def _max_chars(limit: int) -> Check:
    return lambda prompt, answer: f"max_chars: {len(answer)} > {limit}" if len(answer) > limit else None


def _min_chars(limit: int) -> Check:
    return lambda prompt, answer: f"min_chars: {len(answer)} < {limit}" if len(answer.strip()) < limit else None


def _language(code: str) -> Check:
    def check(prompt: str, answer: str) -> str | None:
        lang, confidence = detect_language(answer)
        if lang != code and confidence >= LANGUAGE_CONFIDENCE:
            return f"language: {lang} ({confidence:.2f}), not {code}"
        return None

    return check


def _regex(pattern: str) -> Check:
    compiled = Pattern(pattern, "filters: regex")
    return lambda prompt, answer: None if compiled.search(answer) else f"regex: no match for {pattern!r}"


def _not_regex(pattern: str) -> Check:
    compiled = Pattern(pattern, "filters: not_regex")

    def check(prompt: str, answer: str) -> str | None:
        match = compiled.search(answer)
        return f"not_regex: {match.group(0)!r}" if match else None

    return check


def _no_politeness(prompt: str, answer: str) -> str | None:
    phrase = polite_phrase(answer)
    return f"no_politeness: {phrase!r}" if phrase else None


def _customer_voice(prompt: str, answer: str) -> str | None:
    phrase = staff_phrase(answer)
    return f"customer_voice: {phrase!r} is the staff's line" if phrase else None


def _on_topic(least: int) -> Check:
    def check(prompt: str, answer: str) -> str | None:
        shared = len(shared_stems(prompt, answer))
        return f"on_topic: {shared} content words shared with the user's line, < {least}" if shared < least else None

    return check


def _at_least_one(value: Any) -> int:
    if value is True:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("on_topic takes true or the number of content words (>= 1) the answer shares with the prompt")
    return value


def _sentiment(bounds: SentimentRange) -> Check:
    return lambda prompt, answer: bounds.failure(sentiment(answer))


def _threshold(value: Any) -> float:
    if value is True:
        return ECHO_THRESHOLD
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError("no_echo takes true or a threshold in (0, 1]")


def _count(name: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} takes a whole number of characters >= 0")
        return value

    return parse


def _pattern(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{name} takes a regular expression")
        try:
            return check_pattern(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc

    return parse


def _code(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z]{2,3}", value):
        raise ValueError("language takes an ISO 639-1 code such as 'en'")
    return value


# name -> (parse the value, make the check); a bare name means the value True
BUILTINS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Check]]] = {
    "no_echo": (_threshold, _no_echo),
    "no_refusal": (lambda v: v, lambda _: _no_refusal),
    "no_empty": (lambda v: v, lambda _: _no_empty),
    "max_chars": (_count("max_chars"), _max_chars),
    "min_chars": (_count("min_chars"), _min_chars),
    "language": (_code, _language),
    "regex": (_pattern("regex"), _regex),
    "not_regex": (_pattern("not_regex"), _not_regex),
    "no_politeness": (lambda v: v, lambda _: _no_politeness),
    "customer_voice": (lambda v: v, lambda _: _customer_voice),
    "sentiment": (parse_range, _sentiment),
    "on_topic": (_at_least_one, _on_topic),
}
# filters that make sense on one side only check it unless told otherwise: a customer's voice is
# the user's line
DEFAULT_ROLES = {"customer_voice": "user"}


class FilterEntry(NamedTuple):
    """One ``filters:`` item with its defaults filled in."""

    name: str
    value: Any
    role: str  # the message it checks: "assistant" (the answer) or "user" (the generated prompt)
    category: str | None  # only examples of this category; None: every example


class FilterSet(RootModel[list[str | dict[str, Any]]]):
    """The spec's ``filters:`` list, validated up front so a typo is a spec error, not a run-time one.

    A filter checks the last assistant answer, or with ``role: user`` the last user message (the
    generated prompt): ``{regex: "\\bI\\b", role: user}``. With ``category:`` it checks only the
    examples of that category: ``{regex: "(?i)refund|return", role: user, category: wants a refund}``."""

    root: list[str | dict[str, Any]] = []

    @model_validator(mode="after")
    def _known(self) -> FilterSet:
        for entry in self.entries():
            BUILTINS[entry.name][0](entry.value)
        return self

    def entries(self) -> list[FilterEntry]:
        return [_entry(entry) for entry in self.root]

    def compile(self) -> Filters:
        checks = []
        for name, value, role, category in self.entries():
            parse, make = BUILTINS[name]
            checks.append(CompiledFilter(make(parse(value)), role, category))
        return Filters(checks)


class CompiledFilter(NamedTuple):
    check: Check
    role: str
    category: str | None


class Filters:
    """The compiled filters of one spec, built once per build or plan."""

    def __init__(self, checks: list[CompiledFilter]) -> None:
        self.checks = checks

    def failures(self, messages: list[dict[str, Any]], category: str | None = None) -> list[str]:
        """Why an example of ``category`` fails the filters (one reason per filter); empty when it
        passes."""
        if not self.checks:
            return []
        prompt, answer = last_user(messages), last_assistant(messages)
        reasons = []
        for check, role, only in self.checks:
            if only is not None and only != category:
                continue
            reason = check(prompt, answer) if role == "assistant" else check("", prompt)
            if reason is not None:
                reasons.append(reason if role == "assistant" else f"{reason} (user)")
        return reasons

    def turn_failures(self, messages: list[dict[str, Any]], category: str | None = None) -> list[str]:
        """Why a conversation of ``category`` fails the filters, turn by turn: each agent turn
        against the customer turn before it (``no_echo``: it repeats the customer), each customer
        turn (``role: user``) against the agent turn before it (the customer parroting the agent)."""
        if not self.checks:
            return []
        reasons = []
        turn, before = 0, {"user": "", "assistant": ""}
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if role not in ("user", "assistant") or not isinstance(content, str):
                continue
            turn += role == "user"
            other = before["assistant" if role == "user" else "user"]
            for check, checked, only in self.checks:
                if only is not None and only != category:
                    continue
                reason = check(other, content) if checked == role else None
                if reason is not None:
                    reasons.append(f"turn {turn}: {reason}" + (" (user)" if role == "user" else ""))
            before[role] = content
        return reasons


def _entry(entry: str | dict[str, Any]) -> FilterEntry:
    """The filter name, its value, the role it checks and the category it is for, of one
    ``filters:`` item."""
    if isinstance(entry, str):
        name, value, role, category = entry, True, DEFAULT_ROLES.get(entry, "assistant"), None
    else:
        rest = dict(entry)
        role = rest.pop("role", None)
        category = rest.pop("category", None)
        if len(rest) != 1:
            raise ValueError("a filter is a name or a one-key mapping such as {max_chars: 300} (plus an optional "
                             "role and category)")
        name, value = next(iter(rest.items()))
        role = role or DEFAULT_ROLES.get(name, "assistant")
        if role not in ("assistant", "user"):
            raise ValueError("a filter's role is 'assistant' (the default) or 'user'")
        if category is not None and not isinstance(category, str):
            raise ValueError("a filter's category is the name of one category")
    if name not in BUILTINS:
        raise ValueError(f"unknown filter {name!r} (known: {', '.join(BUILTINS)})")
    return FilterEntry(name, value, role, category)
