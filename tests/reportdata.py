"""A built dataset with every kind of drop, for the report tests: one failed attempt of each of two
kinds, answers failing a check, exact and near duplicates, balance cuts, short cells, top-up rounds
and nested train subsets."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fakeserver import FakeServer, Fault
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli

# The stand-in's utterances repeat their words every 20 customers, differing only in the customer's
# number: near duplicates at Jaccard ~0.54, caught by the low threshold. The check drops answers to
# customers whose number ends in 9; the cap cuts the larger category.
SPEC = MINIMAL_SPEC.replace("  count: 2", "  count: 8").replace(
    '      content: "{{ answer }}"\n',
    '      content: "{{ answer }}"\n  checks:\n    regex: "Customer [0-9]*[0-8] "\n',
) + "dedupe:\n  fields: [user]\n  threshold: 0.5\nbalance: {mode: cap, n: 10}\n"


def build_dataset(tmp_path: Path, *extra: str) -> tuple[Path, str]:
    """Run the spec into ``tmp_path/out``; returns the directory and the command's output."""
    spec = write_spec(tmp_path, SPEC)
    faults = [Fault("500"), None, Fault("429", retry_after_ms=10)]
    with FakeServer(responder=list_then_reply_responder(dupe_every=4), script=faults).running() as srv:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", str(tmp_path / "out"), "--base-url",
                                          srv.base_url, "-q", "--allow-shortfall", *extra])  # short cells on purpose
    assert result.exit_code == 0, result.output
    return tmp_path / "out", result.output


def write_sweep(path: Path) -> Path:
    """An eval file of a temperature × top_p sweep where 'calm' gets worse as temperature rises."""
    rows = []
    for t in (0.0, 0.5, 1.0):
        for top_p in (0.9, 1.0):
            for category, good in (("calm", 1.0 - t / 2), ("angry", 0.75)):
                for i in range(4):
                    passed = i < round(4 * good)
                    rows.append({"id": f"{category}{i}", "category": category,
                                 "settings": {"temperature": t, "top_p": top_p},
                                 "output": f"answer {i} at {t}", "error": None, "pass": passed,
                                 "score": 1.0 if passed else 0.25, "judge_reasoning": "rude enough" if passed
                                 else "too polite"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
