"""The embedded default end to end: a tiny spec run on the real SmolLM2 teacher through llama.cpp."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from helpers import write_spec

from promptbake.cli.main import cli
from promptbake.teacher import local

pytestmark = pytest.mark.local_model

TINY = """
name: tiny_local
teacher: local
grid:
  axes:
    location: [gym]
    situation: [wants a refund]
  count: 2
category: situation
steps:
  - name: utterance
    parse: list
    schema:
      type: object
      properties:
        utterances: {type: array, items: {type: string}, minItems: 2, maxItems: 2}
      required: [utterances]
    min_items: 2
    seed: 3
    max_tokens: 200
    messages:
      - role: user
        content: "At a {{ location }}, a customer {{ situation }}. Write {{ count }} things they say."
  - name: reply
    seed: 5
    max_tokens: 40
    stop: ["\\n"]
    messages:
      - role: system
        content: Be an extremely rude customer service agent and be concise.
      - role: user
        content: "{{ utterance }}"
example:
  messages:
    - role: user
      content: "{{ utterance }}"
    - role: assistant
      content: "{{ reply }}"
split:
  test: 0.5
max_rounds: 3
"""


@pytest.mark.parametrize("engine", ["llama-server", "llama-cpp-python"])
def test_run_on_the_local_teacher(tmp_path, monkeypatch, request, engine):
    pytest.importorskip("llama_cpp.server", reason="needs pip install 'promptbake[local]'")
    if engine == "llama-server":
        request.getfixturevalue("llama_server")  # the README's set-up: built
    else:
        monkeypatch.setattr(local, "find_llama_server", lambda: None)  # not built (yet)
    spec = write_spec(tmp_path, TINY)
    result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "-q"])
    assert result.exit_code == 0, result.output
    # the summary says how to get the faster engine only when it is missing
    assert ("promptbake teacher build" in result.output) == (engine == "llama-cpp-python")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["teacher"] == {"kind": "local", "models": ["smollm2"]}
    assert manifest["train"] + manifest["test"] == 2
    rows = [json.loads(line) for name in ("train", "test") for line in (tmp_path / "out" / f"{name}.jsonl").open()]
    assert all(r["messages"][1]["content"].strip() for r in rows)
    with sqlite3.connect(tmp_path / "out" / "promptbake.db") as con:
        steps = dict(con.execute("SELECT step, COUNT(*) FROM requests WHERE status = 'ok' GROUP BY step"))
    assert steps["utterance"] >= 1 and steps["reply"] >= 2
