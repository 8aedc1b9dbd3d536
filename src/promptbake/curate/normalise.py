"""Text normalisation shared by planning, dedupe, the split and the filters.

Kept apart from the dedupe engine so that what only needs to compare or scan text (planning a
fan-out, ``expand --dry-run``, a filter) does not import datasketch and numpy.
"""

from __future__ import annotations

import unicodedata


class _Punctuation(dict[int, int | None]):
    r"""``str.translate`` table deleting Unicode punctuation (categories P*), filled lazily since
    building it for all code points up front costs more than most runs.

    Only punctuation: deleting symbols would make "great 👍" and "great 👎" equal, and a regex
    like ``[^\w\s]`` would also delete combining marks (Indic vowel signs), merging distinct words.
    """

    def __missing__(self, codepoint: int) -> int | None:
        value = None if unicodedata.category(chr(codepoint)).startswith("P") else codepoint
        self[codepoint] = value
        return value


_PUNCTUATION = _Punctuation()

# Typographic quotes and apostrophes → ASCII, one character for one, so positions in the plain
# text are positions in the original: chat models write "I’m sorry" as often as "I'm sorry".
_QUOTES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'", "\uff07": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\uff02": '"',
})


def normalise(text: str) -> str:
    """The text exact dedupe compares: NFKC, casefolded, punctuation removed, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION).split())


def plain_quotes(text: str) -> str:
    """``text`` with curly quotes and apostrophes as ASCII ``'`` and ``"`` (same length), so a
    pattern written with ``'`` also matches what a model typed with ``’``."""
    return text.translate(_QUOTES)
