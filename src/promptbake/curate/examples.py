"""Stored answers → training examples, rendered from the spec's ``example`` templates.

The rows of the last step are read in lineage order, so the same store always yields the same
examples in the same order: that is what makes builds byte-identical.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Iterator
from typing import Any

from promptbake.curate.gates import cheap_failures
from promptbake.curate.split import prompt_key
from promptbake.ids import stable_hash
from promptbake.plan.conversation import Dialogues, length_key
from promptbake.plan.planner import MessageRenderer
from promptbake.records import Example
from promptbake.specification.models import Spec
from promptbake.specification.templates import Templates
from promptbake.store.db import Store, StoredRequest


class ExampleRenderer:
    def __init__(self, spec: Spec, templates: Templates) -> None:
        self.spec = spec
        self.templates = templates
        self.messages = MessageRenderer(templates, spec.example.messages, f"{spec.where()}:example")
        self.rejected = (
            templates.add_inline(f"{spec.where()}:example.rejected", spec.example.rejected)
            if spec.example.rejected is not None
            else None
        )
        if self.rejected:
            templates.get(self.rejected)
        talk = spec.conversation
        self.flow = Dialogues(talk, len(spec.steps) - 1) if talk is not None else None
        self.filters = spec.filters.compile()

    def examples(self, store: Store, round_: int | None = None) -> Iterator[Example]:
        if self.flow is not None:
            yield from self._dialogues(self.flow, store, round_)
            return
        last = len(self.spec.steps) - 1
        name = self.spec.steps[last].name
        # examples so far per (cell, prompt), by a digest of the pair: one per example of a million-cell
        # grid, the tuple of two strings took three times the memory
        seen: Counter[bytes] = Counter()
        for request in store.succeeded(self.spec.name, last, round_):
            # the row the last step answered: its repeats and n > 1 choices share it (split.group)
            lineage = request.ord.rsplit(".", 1)[0] if last else request.ord
            for j, output in enumerate(request.outputs or []):
                example = self._example(request, j, {**request.vars, name: output}, lineage=lineage)
                # what the example is, whatever the sampling parameters: the k-th example of its
                # cell with this prompt (the id hashes the request, and so every parameter)
                place = (request.cell_key, prompt_key(example.messages))
                digest = hashlib.blake2b(repr(place).encode(), digest_size=16).digest()
                example.provenance["slot"] = stable_hash(*place, seen[digest])
                seen[digest] += 1
                yield example

    def _example(self, request: StoredRequest, j: int, variables: dict[str, Any], **provenance: str) -> Example:
        """The example output ``j`` of ``request`` renders to, its row's ``variables`` given."""
        return Example(
            id=stable_hash(request.id, j),
            category=request.category,
            cell=_cell_values(self.spec, variables),
            messages=self.messages.render(variables),
            tools=self.spec.example.tools,
            rejected=(
                {"role": "assistant", "content": self.templates.render(self.rejected, variables)}
                if self.rejected
                else None
            ),
            provenance={"request": request.id, "cell_key": request.cell_key, "round": str(request.round),
                        **provenance},
        )

    def _dialogues(self, flow: Dialogues, store: Store, round_: int | None) -> Iterator[Example]:
        """One example per dialogue that ended, at whichever turn it ended (every turn's answers,
        in lineage order: a dialogue's turns share its first turn's ord as a prefix)."""
        turns = range(flow.first, flow.first + len(flow.turns))
        requests = heapq.merge(*(store.succeeded(self.spec.name, k, round_) for k in turns), key=lambda r: r.ord)
        ended_at = "\x00"
        for request in requests:
            if request.ord.startswith(ended_at + "."):
                continue  # turns stored after an end that a changed spec moved earlier
            for j, output in enumerate(request.outputs or []):
                row, ended = flow.settle(request.step_index, request.vars, output, self._failing)
                if ended is None:
                    continue
                ended_at = request.ord
                yield self._example(request, j, row, lineage=flow.lineage(request.step_index, request.ord),
                                    turns=str(flow.exchanges(row)), ended=ended)

    def _failing(self, row: dict[str, Any]) -> bool:
        """Whether a dialogue still going already fails a cheap gate (see ``Dialogues.settle``)."""
        return bool(cheap_failures(self.spec, self.filters, self.messages.render(row))[1])


def _cell_values(spec: Spec, variables: dict[str, Any]) -> dict[str, Any]:
    step_names = {s.name for s in spec.steps}
    if spec.conversation is not None:
        step_names.add(length_key(spec.conversation.name))  # a dialogue's drawn length
    return {k: v for k, v in variables.items() if k not in step_names}

