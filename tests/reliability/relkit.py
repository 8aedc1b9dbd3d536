"""Shared builders for the reliability suite: specs sized for fault runs and store inspection."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
SRC = TESTS.parent / "src"


def text_spec(a: int, b: int, count: int, *, name: str = "rel", test: float = 0.2) -> str:
    """One text step, ``a × b`` cells × ``count``: exactly ``a * b * count`` planned requests."""
    xs = ", ".join(f"x{i}" for i in range(a))
    ys = ", ".join(f"y{i}" for i in range(b))
    return f"""
name: {name}
teacher:
  model: gpt-4o-mini
grid:
  axes:
    x: [{xs}]
    y: [{ys}]
  count: {count}
category: x
steps:
  - name: answer
    temperature: 1.0
    seed: 7
    messages:
      - role: user
        content: "Say something about {{{{ x }}}} and {{{{ y }}}}."
example:
  messages:
    - role: user
      content: "Say something about {{{{ x }}}} and {{{{ y }}}}."
    - role: assistant
      content: "{{{{ answer }}}}"
dedupe:
  near: false
split:
  test: {test}
  seed: 3
"""


def pure_answer(body: dict) -> str:
    """An answer that is a pure function of the request body: two runs get identical answers."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    user = body["messages"][-1]["content"]
    return f"About that ({user[:40]}): answer {digest[:16]} {int(digest[16:24], 16)}."


def statuses(db: Path) -> dict[str, int]:
    """Current requests by status (empty while the store is still being created)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return dict(con.execute("SELECT status, COUNT(*) FROM requests WHERE current = 1 GROUP BY status"))
    except sqlite3.OperationalError:
        return {}


def integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.pop("PROMPTBAKE_RAISE_ERRORS", None)
    return {**env, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", **extra}


def promptbake(*args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None,
               **kwargs) -> subprocess.CompletedProcess[str]:
    """``python -m promptbake ARGS`` in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "promptbake", *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def one_line_error(stderr: str) -> str:
    """The single ``Error: ...`` line a failing command must print, asserting there is nothing else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


def reference_run(root: Path, spec: str, run_args: Callable[[str], list[str]]) -> Path:
    """An uninterrupted ``run`` of ``spec`` in ``root`` against the pure-function teacher: what a
    killed and resumed run must reproduce byte for byte. Returns its output directory."""
    from fakeserver import FakeServer

    (root / "spec.yaml").write_text(spec, encoding="utf-8")
    with FakeServer(responder=pure_answer).running() as srv:
        done = promptbake(*run_args(srv.base_url), cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "out"



# Runs the command it is given and prints that child's peak RSS (KiB): a child forked from a big
# process (pytest, late in the suite) carries that process's peak into its own ``ru_maxrss`` at
# exec, so the measured process is forked from this small launcher instead.
_PEAK_RSS = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``argv`` (with ``cli_env()``); its result and its own peak RSS in KiB."""
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, *argv], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True)
    return done, int(done.stdout.split()[-1])
