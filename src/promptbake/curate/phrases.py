"""Phrases a reader holds against a chat example, as regular expressions: politeness in an answer
that should not be polite, and the staff's side of the counter in a customer's line.

One home for them, so that the filters a spec gates on (``no_politeness``, ``customer_voice``), the
report's quality panel and the committed sample's test cannot drift apart. Why phrase lists and not
a classifier: the failures of small chat teachers are formulaic. A reply that should be rude slips
back into "You're welcome", "No worries at all", "How can I help you?"; a customer line written by
the same model says "I'm sorry for the inconvenience" like the staff. A reader spots these at once,
and so does a regular expression.

Each expression is compiled by its first use (``polite()``...), not on import: a dry run or a
generate that gates on none of them does not pay for compiling them.
"""

from __future__ import annotations

import re
from functools import cache

_A = "['\u2019]"  # a straight or a typographic apostrophe: "you're" and "you’re" read the same


@cache
def polite() -> re.Pattern[str]:
    """Politeness and service boilerplate in an answer: the phrases a reader calls polite."""
    return re.compile(
        rf"(?i)\b(?:sorry|apolog\w*|inconvenience|forgive me|pardon me"
        rf"|you{_A}?re (?:very |most )?welcome|you are (?:very |most )?welcome|no worries|no problem|not a problem"
        rf"|thanks?\b|thank you|appreciate|grateful|my pleasure|(?:happy|glad|delighted) to"
        rf"|how (?:can|may) i (?:help|assist)|can i help|help you with|here to help|assist(?:ance|ing)?\b|assist you"
        rf"|of course|certainly|absolutely|please|feel free|let me know|don{_A}?t hesitate|don{_A}?t worry"
        rf"|(?:have|enjoy) a (?:nice|great|good|lovely|wonderful) (?:day|evening|night)|i hope"
        rf"|(?:your|for your) patience|i understand|i{_A}?ll do my best|i{_A}?ll take care of|right away"
        rf"|great question|good question)"
    )


@cache
def staff_voice() -> re.Pattern[str]:
    """Words of the staff's side of the counter: a customer who says them reads like the shop assistant."""
    return re.compile(
        rf"(?i)\b(?:how (?:can|may) i (?:help|assist)|can i help (?:you|with)|what can i (?:do|get) for you|may i help"
        rf"|i can help (?:you|with)|i{_A}?ll help you|let me help"
        rf"|you{_A}?re (?:very )?welcome|you are welcome|welcome to (?:the|our|my)\b"
        rf"|thank you for (?:your patience|waiting|shopping|choosing|coming|visiting|your (?:order|business))"
        rf"|thanks for (?:your patience|waiting|shopping|choosing|coming|visiting)"
        rf"|sorry (?:for|about) (?:the|any|this|that) (?:inconvenience|wait|delay|confusion|trouble)"
        rf"|(?:i|we) apologi[sz]e|my apologies|apologies for|i{_A}?m here to help|here to assist"
        rf"|(?:happy|glad) to (?:help|assist)|is there anything else|anything else i can"
        rf"|i{_A}?ll (?:get back to you|take care of (?:it|that|this|you)|do my best"
        rf"|get (?:it|that) sorted|look into it)"
        rf"|let me (?:check|see what|get that|look into)"
        rf"|our (?:store|shop|policy|customers|staff|team|produce|products?|goods|stock|prices|menu|service)\b"
        rf"|(?:have|enjoy) a (?:nice|great|good|lovely|wonderful) (?:day|evening|night)"
        rf"|i{_A}?m just a (?:shop|store) assistant|as a (?:shop|store|sales) assistant"
        rf"|we (?:can{_A}?t|cannot|don{_A}?t) (?:offer|accept|give|do) refunds"
        rf"|(?:speak|talk) (?:to|with) my (?:manager|boss|supervisor)"
        rf"|(?:glad|happy|here) to be of service|of service to you"
        rf"|i(?:{_A}ll| will) (?:give|send|get) you (?:a |the |your )?"
        rf"(?:refund|discount|receipt|return label|replacement)"
        rf"|i(?:{_A}ll| will) send (?:you )?the return label"
        rf"|i(?:{_A}ll| will|{_A}m going to) refund (?:it|this|that|you)\b|i{_A}m offering|i{_A}m closing\b"
        rf"|i(?:{_A}ll| will) take your order"
        rf"|i(?:{_A}ll| will|{_A}m going to) (?:bring|get|call|fetch) (?:you )?the manager"
        rf"|refund your (?:money|purchase|order)|\bshipment\b|minutes (?:away )?from closing)"
    )


@cache
def apology() -> re.Pattern[str]:
    """Apology words: what the quality panel's refusal / apology flag adds to chat-model refusals."""
    return re.compile(r"(?i)\b(?:sorry|apolog\w*|inconvenience)\b")


def polite_phrase(text: str) -> str | None:
    """The first polite or service phrase in ``text``, or None."""
    match = polite().search(text)
    return match.group(0) if match else None


def staff_phrase(text: str) -> str | None:
    """The first phrase of the staff's side in ``text``, or None."""
    match = staff_voice().search(text)
    return match.group(0) if match else None
