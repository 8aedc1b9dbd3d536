"""Templates run in Jinja's sandbox: reaching Python internals from a spec is refused with one
clear line (exit 2), and text a teacher answers is data, never re-rendered as a template."""

from __future__ import annotations

import json

import pytest
from fakeserver import FakeServer
from relkit import one_line_error, promptbake

PAYLOADS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('touch pwned').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ place.__class__ }}",
    "{{ place|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(place) }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


def spec_text(step: str = "Hi at the {{ place }}.", example: str = "{{ answer }}", category: str = "place") -> str:
    return f"""name: sbx
teacher:
  model: gpt-4o-mini
grid:
  axes:
    place: [shop, gym]
category: {json.dumps(category)}
steps:
  - name: answer
    messages:
      - role: user
        content: {json.dumps(step)}
example:
  messages:
    - role: user
      content: "Hi at the {{{{ place }}}}."
    - role: assistant
      content: {json.dumps(example)}
"""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_step_template_reaching_python_internals_is_refused(tmp_path, payload):
    (tmp_path / "spec.yaml").write_text(spec_text(step=payload), encoding="utf-8")
    done = promptbake("expand", "spec.yaml", "-o", "requests.jsonl", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line_error(done.stderr)
    assert line.startswith("Error: spec.yaml:steps[0].messages[0].content:1: refused by the sandbox: access to "), line
    assert "is unsafe" in line, line
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "requests.jsonl").exists()


def test_category_expression_is_sandboxed_too(tmp_path):
    (tmp_path / "spec.yaml").write_text(spec_text(category="place.__class__.__mro__"), encoding="utf-8")
    done = promptbake("expand", "spec.yaml", "-o", "requests.jsonl", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "refused by the sandbox" in one_line_error(done.stderr)


def test_example_template_is_sandboxed_and_answers_are_data(tmp_path):
    hostile = "{{ answer }} {{ cycler.__init__.__globals__ }}"
    (tmp_path / "bad.yaml").write_text(spec_text(example=hostile), encoding="utf-8")
    (tmp_path / "good.yaml").write_text(spec_text(), encoding="utf-8")
    answer = "{{ ''.__class__.__mro__ }} {{ 7 * 7 }}"  # a teacher answer that looks like a template
    with FakeServer(responder=lambda body: answer).running() as srv:
        done = promptbake("run", "bad.yaml", "--out", "bad", "--base-url", srv.base_url, "-q", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        line = one_line_error(done.stderr)
        assert "bad.yaml" in line and "refused by the sandbox" in line, line

        done = promptbake("run", "good.yaml", "--out", "good", "--base-url", srv.base_url, "-q", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for name in ("train", "test") for line in (tmp_path / "good" / f"{name}.jsonl").open()]
    assert rows and all(r["messages"][-1]["content"] == answer for r in rows)  # verbatim, not rendered
