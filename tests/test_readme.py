"""Docs that cannot drift: the README's commands exist with the flags it shows, and CI runs the
README's test command exactly."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from promptbake.cli.main import cli

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r"&&|;", line.split(" #")[0]):
                part = part.strip()
                if part.startswith("promptbake "):
                    lines.append(part)
    return lines


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert blocks[0] == (
        "pip install -e '.[local]' && promptbake teacher build && "
        "promptbake run generators/rude_agent_quick.yaml --teacher local --out out/quick"
    )
    assert blocks[1] == "pip install -e '.[dev]' && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert blocks[1] in ci.splitlines()


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_uses_real_commands_and_flags(line):
    words = shlex.split(line)[1:]
    command: click.Command = cli
    while isinstance(command, click.Group) and words:
        if words[0] in command.commands:
            command = command.commands[words.pop(0)]
        elif getattr(command, "default_command", None):  # `promptbake train DIR` is `promptbake train start DIR`
            command = command.commands[command.default_command]
        else:
            break
    assert not isinstance(command, click.Group), f"{line}: no such command"
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    for word in words:
        if word.startswith("-"):
            assert word.split("=")[0] in known, f"{line}: unknown option {word}"


def test_every_command_has_help():
    def walk(group: click.Group, prefix: str):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from walk(command, f"{prefix}{name} ")

    for name, command in walk(cli, ""):
        assert command.help, f"promptbake {name} has no help text"


def test_readme_mentions_every_command():
    for name in cli.commands:
        assert f"promptbake {name}" in README, name
