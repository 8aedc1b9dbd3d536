"""Every README example runs as written: each ``promptbake`` command in the README's code blocks,
in order, against the loopback stand-in. The embedded-teacher command (``--teacher local``) and
the real-server ones (``--base-url http://localhost:...``) are pointed at the stand-in; everything
else is run verbatim from a copy of the repository's generators, samples and templates (only
``teacher serve``, which serves until Ctrl-C, is left out)."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import ROOT, readme_responder
from test_readme import readme_commands

from promptbake.cli.main import cli


def pointed_at(line: str, url: str) -> list[str]:
    line = line.replace("--teacher local", "--teacher remote --model smollm2-stand-in")
    line = re.sub(r"--base-url http://localhost:\d+/v1", f"--base-url {url}", line)
    return shlex.split(line)[1:]


def test_readme_commands_run_in_order_against_the_stand_in(monkeypatch, tmp_path):
    for folder in ("generators", "samples", "templates"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    commands = readme_commands()
    assert len(commands) > 15
    with FakeServer(responder=readme_responder()).running() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        for line in commands:
            args = pointed_at(line, server.base_url)
            if args[:2] == ["teacher", "serve"]:
                continue  # serves in the foreground until Ctrl-C (test_local.py runs it)
            result = CliRunner().invoke(cli, args)
            if result.exit_code != 0:
                pytest.fail(f"{line}\nexit {result.exit_code}:\n{result.output[-3000:]}", pytrace=False)
