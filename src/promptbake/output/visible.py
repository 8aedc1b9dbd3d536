"""Invisible characters made visible: what the report and its plots print of data text.

Bidi overrides, zero-width spaces and joiners, soft hyphens, byte-order marks, non-breaking and
other unusual spaces, variation selectors and fillers draw nothing (or a plain space), so two
categories that differ by one look identical and a bidi override can even reorder what a reviewer
sees. Each is shown as its code point, ``⟨U+200B⟩``; newlines and tabs stay as they are.
"""

from __future__ import annotations

import re

# Default-ignorable code points that are letters or marks (str.isprintable calls them printable)
# and the braille blank, which draws as a space.
_IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
                        "\U000e0100-\U000e01ef]")
_KEPT = "\n\t"


def _shown(ch: str) -> str:
    if ch in _KEPT or (ch.isprintable() and not _IGNORABLE.match(ch)):
        return ch
    return f"⟨U+{ord(ch):04X}⟩"


def visible(text: str) -> str:
    """``text`` with every invisible character but newline and tab written as ``⟨U+XXXX⟩``.
    Non-printable means Unicode's Other and Separator categories (controls, format characters,
    private use, unassigned, every space but U+0020), plus the default-ignorable letters and marks."""
    if (text.isprintable() or text.translate({10: None, 9: None}).isprintable()) and not _IGNORABLE.search(text):
        return text  # the common case: nothing to show
    return "".join(map(_shown, text))
