"""A tone gate that needs no LLM: VADER's lexicon sentiment of one text, from -1 to +1.

Why a lexicon and not a judge: a judge the size of the embedded teacher (SmolLM2-135M) scores tone
at random, and a real judge costs a request per example. VADER (``vaderSentiment``) ships its
lexicon inside its wheel, runs offline in microseconds, and is built for short, informal text,
which is what chat answers are. It measures valence, not rudeness: "Not for you. Come back when I
care, so never." scores +0.49. So use it as a coarse gate (``{sentiment: {max: 0.3}}`` drops
cheerful answers) and as the tie-breaker of ``pick: best``, not as a verdict.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SentimentRange(BaseModel):
    """A filter's bounds on the compound score: ``{max: -0.3}`` keeps negative answers, ``{min: 0.5}``
    keeps warm ones; both may be given."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(default=None, ge=-1, le=1)
    max: float | None = Field(default=None, ge=-1, le=1)

    @model_validator(mode="after")
    def _check(self) -> SentimentRange:
        if self.min is None and self.max is None:
            raise ValueError("sentiment takes {max: X} and/or {min: X}, each between -1 and 1")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"sentiment: min {self.min} is above max {self.max}")
        return self

    def failure(self, score: float) -> str | None:
        """Why ``score`` is out of range, or None."""
        if self.max is not None and score > self.max:
            return f"sentiment: {score:+.2f} > {self.max:+.2f}"
        if self.min is not None and score < self.min:
            return f"sentiment: {score:+.2f} < {self.min:+.2f}"
        return None

    def distance(self, score: float) -> float:
        """How far inside the range ``score`` lies (larger is better; negative when outside):
        what ``pick: best`` ranks candidates by when the gates pass them all."""
        margins = [m for m in ((self.max - score) if self.max is not None else None,
                               (score - self.min) if self.min is not None else None) if m is not None]
        return min(margins) if margins else 0.0


@cache
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score of ``text``: -1 (hostile) to +1 (warm), 0 for neutral or empty text."""
    if not text.strip():
        return 0.0
    score = float(_analyzer().polarity_scores(text)["compound"])
    return score if math.isfinite(score) else 0.0


def parse_range(value: Any) -> SentimentRange:
    """The filter's value, checked when the spec is loaded (a typo is a spec error)."""
    if not isinstance(value, dict):
        raise ValueError("sentiment takes a mapping such as {max: -0.3} or {min: 0.2, max: 0.9}")
    try:
        return SentimentRange.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"sentiment{'.' + where if where else ''}: {error['msg'].removeprefix('Value error, ')}"
                         ) from None
