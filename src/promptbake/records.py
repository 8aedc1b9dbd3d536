"""Records that flow between stages: the example a spec produces, before any output format.

Build stages (dedupe, balance, split) and writers (formats, export) all take ``Example``; keeping
one neutral record lets every fine-tuning format be derived from the same data. Balancing,
splitting and subsetting read only an example's id and category (``Member``), so a build can hand
them small stand-ins for examples it keeps on disk (``curate/spill.py``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, Field


class Member(Protocol):
    """What balancing, splitting and subsetting read of an example."""

    @property
    def id(self) -> str: ...

    @property
    def category(self) -> str: ...


M = TypeVar("M", bound=Member)  # an Example, or a build's stand-in for one


class Example(BaseModel):
    """One training example plus the metadata that stays out of the training file."""

    id: str
    category: str
    cell: dict[str, Any] = Field(default_factory=dict)
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    rejected: dict[str, Any] | None = None  # a non-preferred assistant message (DPO pairs)
    provenance: dict[str, str] = Field(default_factory=dict)  # step name -> request id
    scores: dict[str, int] = Field(default_factory=dict)  # judge name -> its 1-5 score

    def text(self, role: str) -> str:
        """All content of one role, joined: what dedupe compares. ``opening``: the first user
        message alone (a conversation's opening customer turn)."""
        if role == "opening":
            return next((m["content"] for m in self.messages
                         if m.get("role") == "user" and isinstance(m.get("content"), str)), "")
        return "\n".join(
            m["content"] for m in self.messages if m.get("role") == role and isinstance(m.get("content"), str)
        )

    def metadata(self) -> dict[str, Any]:
        """The sidecar line (``metadata.jsonl``): provenance kept out of the training file, plus
        the rejected answer of a preference pair so ``export`` can still write DPO formats."""
        line = {"id": self.id, "category": self.category, "cell": self.cell, "provenance": self.provenance}
        if self.rejected is not None:
            line["rejected"] = self.rejected
        if self.scores:
            line["scores"] = self.scores
        return line

    def with_default_system(self, text: str) -> Example:
        """This example with ``text`` as its system message when it has none (its own is kept)."""
        if any(m.get("role") in ("system", "developer") for m in self.messages):
            return self
        return self.model_copy(update={"messages": [{"role": "system", "content": text}, *self.messages]})
