"""Small builders shared by tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

MINIMAL_SPEC = """
name: mini
teacher:
  model: gpt-4o-mini
grid:
  axes:
    place: [shop, gym]
    mood: [calm, angry]
  count: 2
category: mood
steps:
  - name: ask
    parse: list
    messages:
      - role: user
        content: "Give {{ count }} things a {{ mood }} customer says at the {{ place }}."
  - name: answer
    messages:
      - role: system
        content: Be rude.
      - role: user
        content: "{{ ask }}"
example:
  messages:
    - role: user
      content: "{{ ask }}"
    - role: assistant
      content: "{{ answer }}"
split:
  test: 0.25
  seed: 1
"""


def write_spec(directory: Path, text: str = MINIMAL_SPEC, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
