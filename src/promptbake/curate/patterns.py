"""The spec's own regular expressions (``filters`` ``regex``/``not_regex``, ``example.checks.regex``),
compiled once and matched with a time bound.

A pattern such as ``(a|a)+$`` backtracks exponentially: Python's ``re`` would spend hours on one
40-character answer and hang the build with no word of why. Patterns run on the ``regex``
package instead (already installed as tiktoken's dependency): it reads Python's ``re`` syntax as
``re`` does (its ``V0`` mode), including Unicode ``\\w`` and ``\\b``, lookarounds and
backreferences, and takes a ``timeout`` per match. A match that runs out of time stops the run with
one line naming the pattern, rather than passing or failing the example by the machine's speed.
(google-re2 would bound the time by construction, but refuses lookarounds and backreferences and
treats ``\\w``/``\\b`` as ASCII: existing specs would change meaning on non-English text.)

``regex`` is imported by the first pattern compiled, not with this module: a spec without one
(and every dry run of it) does not pay the module's import.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from promptbake.errors import SpecError

if TYPE_CHECKING:
    import regex

MATCH_SECONDS = 1.0  # per text: ordinary patterns take microseconds on answers of a few KB


class Pattern:
    """One spec regex; ``where`` names it in errors (``filters: not_regex``)."""

    def __init__(self, source: str, where: str) -> None:
        import regex

        try:
            self.compiled = regex.compile(source)
        except regex.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
        self.source = source
        self.where = where

    def search(self, text: str) -> regex.Match[str] | None:
        """``re.search`` semantics; ``SpecError`` when the match takes longer than ``MATCH_SECONDS``."""
        try:
            return self.compiled.search(text, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise SpecError(f"{self.where} {self.source!r}: matching one {len(text):,}-character text took over "
                            f"{MATCH_SECONDS:g} s (catastrophic backtracking); rewrite the pattern without nested "
                            "or overlapping repeats") from None


def check_pattern(source: str) -> str:
    """``source`` if it compiles, else ``ValueError`` (for a spec validator)."""
    Pattern(source, "")
    return source


@lru_cache(maxsize=256)
def compiled(source: str, where: str) -> Pattern:
    """The ``Pattern`` of ``source``, compiled once per process (checks run on every answer)."""
    return Pattern(source, where)
