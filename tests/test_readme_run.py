"""Every README example runs as written: each ``promptbake`` command in the README's code blocks,
in order, against the loopback stand-in. The embedded-teacher command (``--teacher local``) and
the real-server ones (``--base-url http://localhost:...``) and those of a trained student
(``--student DIR``, served for real in test_train.py) are pointed at the stand-in, and those that
train at a ``--provider`` (``train``, ``study``) at a stand-in of that provider's API; everything
else is run verbatim from a copy of the repository's generators, samples and templates. ``rate``
serves its page until Ctrl-C: it runs in its own process, on a free port, until the page answers,
and is then stopped with SIGINT (``teacher serve``, which test_local.py runs, is left out, and
``train`` trains a tiny student for one step instead of SmolLM2 for minutes)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeprovider import FakeProvider
from fakeserver import FakeServer
from helpers import ROOT, readme_responder
from test_readme import readme_commands
from tinymodel import build_tiny_student

from promptbake.cli.main import cli


def pointed_at(line: str, url: str) -> list[str]:
    line = line.replace("--teacher local", "--teacher remote --model smollm2-stand-in")
    if not line.startswith("promptbake train "):  # a trained student answers on the stand-in too
        line = re.sub(r"--student \S+", "--teacher remote --model student-stand-in", line)
    line = re.sub(r"--base-url http://localhost:\d+/v1", f"--base-url {url}", line)
    return shlex.split(line)[1:]


def tiny_training(args: list[str], root: Path) -> list[str]:
    """`promptbake train` or `study` as written, but on the tiny student for one step
    (test_train.py and test_study.py train for real): the model folders it writes are then served
    by the local engine for `eval --student` and the study's scores."""
    student = root / "out" / "tiny-student"  # out/ is ignored: the check for untracked files skips it
    if not student.exists():
        pytest.importorskip("trl")
        build_tiny_student(student)
    return [*args, "--student", str(student), "--max-steps", "1"]


def study_on_the_stand_in(args: list[str], url: str, root: Path) -> list[str]:
    """`promptbake study` as written: its spec's local teacher is the stand-in (as `--teacher local`
    is), and its students are tiny; a dry run and a study of hosted models train nothing."""
    if "--teacher" not in args:
        args = [*args, "--teacher", "remote", "--model", "smollm2-stand-in", "--base-url", url]
    if "--dry-run" in args or "--trained" in args or "--provider" in args:  # trained elsewhere, or nothing
        return args
    return tiny_training(args, root)


def run_batch_like_vllm(inputs: Path, output: Path) -> None:
    """What ``python -m vllm.entrypoints.openai.run_batch -i IN -o OUT`` writes for the exported
    input files, answered by the stand-in's responder."""
    respond = readme_responder()
    with output.open("w", encoding="utf-8") as out:
        for path in sorted(inputs.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                request = json.loads(line)
                content = respond(request["body"])
                body = {"id": "cmpl", "object": "chat.completion", "model": request["body"].get("model", ""),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
                out.write(json.dumps({"id": "vllm", "custom_id": request["custom_id"],
                                      "response": {"status_code": 200, "request_id": "r", "body": body},
                                      "error": None}) + "\n")


def serve_rating_page(args: list[str]) -> None:
    """``promptbake rate A B --out R``, as a user runs it: the page must open, Ctrl-C must stop it
    with exit 0, and the ratings store must be there for ``rate --results``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "promptbake", *args, "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as server:
        try:
            url = (server.stdout.readline() if server.stdout else "").strip()
            assert url.startswith("http://127.0.0.1:"), server.stderr.read() if server.stderr else url
            with urllib.request.urlopen(url, timeout=30) as page:
                assert page.status == 200
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()
    assert Path(args[args.index("--out") + 1]).exists()


def test_readme_commands_run_in_order_against_the_stand_in(monkeypatch, tmp_path):
    for folder in ("generators", "samples", "templates"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    commands = readme_commands()
    assert len(commands) > 15
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(FakeServer(responder=readme_responder()).running())
        # `train --provider P` (the hosted section) goes to a stand-in of P's files and jobs API
        providers = {kind: stack.enter_context(FakeProvider(kind).running())
                     for kind in ("openai", "together", "fireworks")}
        for name in ("OPENAI", "TOGETHER", "FIREWORKS"):
            monkeypatch.setenv(f"{name}_API_KEY", "sk-readme-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        exported = tmp_path
        for line in commands:
            args = pointed_at(line, server.base_url)
            if args[0] in ("train", "study") and "--provider" in args:  # study's --base-url is the teacher's
                url_flag = "--base-url" if args[0] == "train" else "--provider-base-url"
                args += [url_flag, providers[args[args.index("--provider") + 1]].base_url, "--poll", "0.05"]
            if args[:2] == ["teacher", "serve"]:
                continue  # serves in the foreground until Ctrl-C (test_local.py runs it)
            if args[0] == "rate" and "--results" not in args:
                serve_rating_page(args)
                continue
            if args[:2] == ["batch", "export"]:
                exported = tmp_path / args[args.index("--out") + 1]
            if args[:2] == ["batch", "import"]:
                run_batch_like_vllm(exported, tmp_path / args[3])  # the README's vLLM step
            if args[:1] == ["train"] and "--out" in args:
                args = tiny_training(args, tmp_path)
            if args[:1] == ["study"]:
                args = study_on_the_stand_in(args, server.base_url, tmp_path)
            result = CliRunner().invoke(cli, args)
            if result.exit_code != 0:
                pytest.fail(f"{line}\nexit {result.exit_code}:\n{result.output[-3000:]}", pytrace=False)
    # followed in a clone, the README leaves nothing git would call untracked: what its commands
    # write goes under out/ (or another ignored path)
    ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    left = sorted(p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir()
                  if p.name not in ("generators", "samples", "templates")
                  and not any(fnmatch.fnmatch(p.name, pattern) for pattern in ignored))
    assert left == [], f"README commands leave untracked files in the repository root: {left}"
