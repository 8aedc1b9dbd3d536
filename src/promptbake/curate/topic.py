"""Does an answer talk about what it was asked? Shared content words, without a model.

A small teacher's reply often ignores the customer ("Fix the printer" to someone asking for the
manager). One shared content word between the user's line and the answer ("closing" and "closes",
"refund" and "refunds") is a weak sign of relevance but a cheap one, and among n candidates for
one request (``pick: best``) it separates the reply that answers from the one that wanders off.
Words are compared by their first five letters (a crude stem: close/closing, refund/refunds),
after dropping words shorter than four letters and the commonest function words.
"""

from __future__ import annotations

import re
import unicodedata

STEM = 5
# common words that say nothing about the topic (and the chat filler both sides use)
_STOP = frozenset([
    "about", "after", "again", "also", "always", "another", "anything", "back", "been", "before", "being", "could",
    "didn", "does", "doing", "done", "down", "each", "even", "every", "from", "give", "going", "gonna", "good",
    "have", "here", "into", "just", "know", "like", "little", "look", "make", "many", "maybe", "more", "most",
    "much", "must", "need", "never", "only", "other", "over", "please", "really", "right", "same", "should",
    "some", "something", "sure", "take", "than", "that", "thats", "their", "them", "then", "there", "these",
    "they", "thing", "things", "think", "this", "those", "time", "today", "tomorrow", "very", "want", "wants",
    "well", "were", "what", "when", "where", "which", "while", "will", "with", "would", "your", "youre", "yours"
])


def content_stems(text: str) -> set[str]:
    """The crude stems of ``text``'s content words."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("'", "").replace("\u2019", "")
    return {word[:STEM] for word in re.findall(r"[^\W\d_]+", folded) if len(word) >= 4 and word not in _STOP}


def shared_stems(prompt: str, answer: str) -> set[str]:
    """The content stems the answer shares with the prompt."""
    return content_stems(prompt) & content_stems(answer)
