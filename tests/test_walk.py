"""The small stumbles of a new user's walk through the README: each one found, each one fixed."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import list_then_reply_responder, write_spec

from promptbake.cli.main import cli
from promptbake.teacher import engine

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_quiet_prints_the_summary_lines_not_the_tables(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        loud = CliRunner().invoke(cli, ["run", str(spec), "--out", "a", "--base-url", srv.base_url])
        quiet = CliRunner().invoke(cli, ["run", str(spec), "--out", "b", "--base-url", srv.base_url, "-q"])
    assert loud.exit_code == quiet.exit_code == 0, quiet.output
    table = "category   rows checks filter"
    assert table in loud.output
    assert table not in quiet.output and "calm " not in quiet.output  # no per-category table
    assert "train: 6, test: 2 → b" in quiet.output and "store: " in quiet.output and "round 0 ask:" in quiet.output


def test_the_readme_says_where_teacher_build_puts_its_binary(monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(engine, "installed_llama", lambda: ("0.3.36", Path("/site-packages/llama_cpp")))
    folder = engine.home().relative_to(Path.home())  # .cache/promptbake/llama-server/<version>-<hash>
    assert f"~/{folder.parent}/<llama-cpp-python version>-<hash>/{engine.BINARY}" in README.replace("`\n`", "")
    assert "$XDG_CACHE_HOME" in README and engine.OVERRIDE_ENV in README


def test_the_readme_screenshot_command_works_as_root():
    shots = [line for line in README.replace("\\\n", " ").splitlines() if line.startswith("chromium ")]
    assert shots and all("--headless" in line and "--no-sandbox" in line for line in shots)


def test_the_readme_python_example_uses_the_cli_examples_folder():
    cli_out = re.search(r"^promptbake run generators/rude_agent.yaml --out (\S+)", README, re.M).group(1)
    python = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    assert f'promptbake.run("generators/rude_agent.yaml", "{cli_out}"' in python
    assert f'promptbake.run_async("generators/rude_agent.yaml", "{cli_out}"' in python
