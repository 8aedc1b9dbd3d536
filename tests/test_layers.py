"""Imports follow the floors: planning does not load the dedupe engine, the report does not reach
into workflows, and the output modules import one another without a circle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import write_spec

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "promptbake"


def loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps([m for m in ('datasketch', 'numpy', " \
                    "'promptbake.curate.dedupe') if m in sys.modules]))\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_planning_does_not_import_the_dedupe_engine():
    assert loaded_after("import promptbake.plan.planner") == []


def test_expand_dry_run_does_not_import_the_dedupe_engine(tmp_path):
    spec = write_spec(tmp_path)
    code = ("from promptbake.cli.main import cli\n"
            f"try:\n    cli(['expand', {str(spec)!r}, '--dry-run'])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n")
    assert loaded_after(code) == []


def test_dry_run_leaves_alone_what_only_other_work_needs():
    """The dry run of the README's spec (issue 30, start-up) imports no ``regex`` (the spec has no
    pattern), no ``difflib`` (no typo to suggest a fix for), compiles none of the phrase lists and
    builds no conversation turn's validator: each is work that other commands or specs pay for."""
    spec = PACKAGE.parent.parent / "generators" / "rude_agent.yaml"
    code = ("import contextlib, io, json, sys\n"
            "from promptbake.cli.main import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        cli(['expand', {str(spec)!r}, '--dry-run'])\n"
            "    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            "from promptbake.curate import filters, phrases\n"
            "from promptbake.plan.conversation import TurnStep\n"
            "compilers = (phrases.polite, phrases.staff_voice, phrases.apology, filters.refusals)\n"
            "print(json.dumps({'modules': [m for m in ('regex', 'difflib') if m in sys.modules],\n"
            "                  'compiled': [f.__name__ for f in compilers if f.cache_info().currsize],\n"
            "                  'turn_step_built': TurnStep.__pydantic_complete__}))\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == {"modules": [], "compiled": [], "turn_step_built": False}


def imports(module: Path) -> list[str]:
    """Every promptbake module ``module`` imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("promptbake"):
            found.append(str(node.module))
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("promptbake")]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def test_output_never_imports_workflows():
    reaching = {module_name(p): [m for m in imports(p) if m.startswith("promptbake.workflows")]
                for p in (PACKAGE / "output").rglob("*.py")}
    assert {name: found for name, found in reaching.items() if found} == {}


def test_no_import_circle_among_the_output_modules():
    graph = {module_name(p): {m for m in imports(p) if m.startswith("promptbake.output.")}
             for p in (PACKAGE / "output").rglob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert sorted(name for name in graph if reaches(name, name, set())) == []


def test_dataset_is_defined_once():
    defined = [module_name(p) for p in PACKAGE.rglob("*.py")
               if any(isinstance(n, ast.ClassDef) and n.name == "Dataset"
                      for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert defined == ["promptbake.output.dataset"]
