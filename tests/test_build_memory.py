"""build in bounded memory: kept examples wait on disk (curate/spill.py), not as Example objects.

Memory itself is measured by bench/build_memory.py; these tests check what makes it bounded: how
many ``Example`` objects are alive while the build balances, splits and writes, and that the
scratch files beside the output are gone afterwards, also when the build fails.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

import promptbake.curate.builder as builder
from promptbake.cli.main import cli
from promptbake.records import Example

SPEC = MINIMAL_SPEC.replace("  count: 2", "  count: 15")  # 4 cells × 15 = 60 examples


def live_examples(collect: bool = True) -> int:
    if collect:
        gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Example))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    spec = write_spec(tmp_path, SPEC)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = CliRunner().invoke(cli, ["generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q"])
    assert result.exit_code == 0, result.output
    return spec


def build(spec: Path, *extra: str):
    return CliRunner().invoke(cli, ["build", str(spec), "--store", "s.db", "--out", "out", "--no-report", *extra])


def test_no_example_is_held_while_the_build_balances_and_at_most_two_while_it_writes(store, tmp_path, monkeypatch):
    counted: dict[str, list[int]] = {"balance": [], "write": []}
    real_balance, real_write = builder.balance, builder.write_format

    def balance(*args, **kwargs):
        counted["balance"].append(live_examples())
        return real_balance(*args, **kwargs)

    def counting(examples: Iterable[Example]) -> Iterator[Example]:
        for i, example in enumerate(examples):
            if i % 5 == 0:  # (an Example is freed when its last reference goes: no collection needed)
                counted["write"].append(live_examples(collect=False))
            yield example

    def write_format(name, data, *args, **kwargs):
        return real_write(name, {split: counting(rows) for split, rows in data.items()}, *args, **kwargs)

    monkeypatch.setattr(builder, "balance", balance)
    monkeypatch.setattr(builder, "write_format", write_format)
    result = build(store, "--format", "messages")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 60
    assert len(counted["write"]) == 2 * (9 + 3)  # openai-chat and messages: 45 train, 15 test examples each
    assert counted["balance"] == [0]  # all 60 were kept, none of them as an Example
    assert max(counted["write"]) <= 2  # the one being written (and the next one read)


def scratch(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_scratch_files_are_removed_after_the_build_and_after_a_failure(store, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".build.spill.999999999.0badcafe.tmp").write_text("left by a killed build")  # no such pid
    during: list[list[str]] = []
    real_assign = builder.assign

    def assign(*args, **kwargs):
        during.append(scratch(out))
        return real_assign(*args, **kwargs)

    monkeypatch.setattr(builder, "assign", assign)
    assert build(store).exit_code == 0
    assert [name.split(".")[1:3] for name in during[0]] == [["build", "spill"], ["dropped", "spill"]]
    assert scratch(out) == []  # its own and the killed build's

    def fail(*args, **kwargs):
        during.append(scratch(out))
        raise RuntimeError("a bug while splitting")

    monkeypatch.setattr(builder, "assign", fail)
    result = build(store)
    assert isinstance(result.exception, RuntimeError)
    assert len(during[1]) == 2
    assert scratch(out) == []


def test_the_shortfall_after_a_round_counts_examples_without_holding_them(store, tmp_path, monkeypatch):
    import promptbake.curate.dedupe as dedupe_module
    from promptbake.plan.expand import Expander
    from promptbake.specification.models import load_spec
    from promptbake.store.db import Store
    from promptbake.workflows.pipeline import shortfall

    alive: list[int] = []
    real = dedupe_module.dedupe

    def dedupe(*args, **kwargs):
        result = real(*args, **kwargs)
        alive.append(live_examples())  # every example has been rendered, gated and deduplicated
        return result

    monkeypatch.setattr(dedupe_module, "dedupe", dedupe)
    spec = load_spec(store)
    with Store(tmp_path / "s.db") as db:
        missing, pass_rate = shortfall(spec, Expander(spec), db)
    assert (missing, pass_rate) == ({}, 1.0)
    assert alive == [0]
