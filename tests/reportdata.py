"""A built dataset with every kind of drop, for the report tests: one failed attempt of each of two
kinds, answers failing a check, exact and near duplicates, balance cuts, short cells, top-up rounds
and nested train subsets."""

from __future__ import annotations

import json
import re
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


REPORTED = MINIMAL_SPEC.replace("  - name: answer\n", "  - name: answer\n    max_tokens: 12\n").replace(
    "split:\n  test: 0.25\n  seed: 1\n", "split: {test: 0}\n") + "filters:\n  - {customer_voice: true}\nmax_rounds: 3\n"


def reported_teacher():
    """A list with a repeat and a staff line per cell; replies polite for the shop, rude for the
    gym, and cut off (then rude) on the first try for each calm customer."""
    tries: dict[str, int] = {}

    def respond(body: dict):
        user = body["messages"][-1]["content"]
        if user.startswith("Give"):
            mood, place = re.search(r"a (\w+) customer says at the (\w+)", user).groups()
            line = f"My {place} order is wrong, {mood} as I am."
            return json.dumps([line, line, "How can I help you today?", f"Where is the {place} manager? I am {mood}."])
        tries[user] = tries.get(user, 0) + 1
        if "calm" in user and tries[user] == 1:
            return "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
        return "You're welcome, no worries at all!" if "shop" in user else "No. Go away."

    return respond


def build_flagged_dataset(tmp_path: Path) -> Path:
    """Run :data:`REPORTED` into ``tmp_path/out`` (the spec gates on none of what the quality
    panel flags): half the replies polite, the calm customers' first answers cut off."""
    spec = write_spec(tmp_path, REPORTED)
    with FakeServer(responder=reported_teacher()).running() as srv:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", str(tmp_path / "out"), "--base-url",
                                          srv.base_url, "-q"])
    assert result.exit_code == 0, result.output
    return tmp_path / "out"
