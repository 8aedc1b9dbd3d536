"""run/build end to end against the loopback server: exact counts, determinism, manifest, formats."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, list_then_reply_responder, write_spec

from promptbake.cli.main import cli

ROOT = Path(__file__).parent.parent
BIGGER = MINIMAL_SPEC.replace("  count: 2", "  count: 6")  # 4 cells × 6 = 24 examples


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_duplicates_are_replaced_until_every_cell_has_its_count(tmp_path):
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder(dupe_every=4)).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    assert "round 0: 4 cells short" in result.output  # every 4th utterance repeats: top-up needed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 24
    assert all(c["kept"] == 12 for c in manifest["categories"].values())
    assert sum(c["exact_dupes"] for c in manifest["categories"].values()) > 0
    users = [
        r["messages"][0]["content"]
        for name in ("train", "test")
        for r in read_jsonl(tmp_path / "out" / f"{name}.jsonl")
    ]
    assert len(set(users)) == 24
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert dropped and all(d["reason"] == "exact" for d in dropped)


def test_rebuild_is_byte_identical_and_sends_nothing(tmp_path):
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        assert run("run", str(spec), "--out", "a", "--store", "s.db", "--base-url", srv.base_url, "-q").exit_code == 0
        sent = srv.count
        result = run("run", str(spec), "--out", "b", "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == sent
    for name in ("train.jsonl", "test.jsonl", "metadata.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # build from the store alone (the spec text is in it) gives the same files too
    result = run("build", "s.db", "--out", "c")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "c" / "train.jsonl").read_bytes()


def test_another_seed_shuffles_differently_but_keeps_strata(tmp_path):
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        run("generate", str(spec), "--store", "s.db", "--base-url", srv.base_url, "-q")
    assert run("build", str(spec), "--store", "s.db", "--out", "a").exit_code == 0
    assert run("build", str(spec), "--store", "s.db", "--out", "b", "--seed", "99").exit_code == 0
    a, b = (tmp_path / "a" / "train.jsonl").read_text(), (tmp_path / "b" / "train.jsonl").read_text()
    assert a != b
    for out in ("a", "b"):
        meta = read_jsonl(tmp_path / out / "metadata.jsonl")
        for category in ("calm", "angry"):
            assert {m["split"] for m in meta if m["category"] == category} == {"train", "test"}


def test_manifest_and_sidecar(tmp_path):
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"] == "mini"
    assert manifest["seed"] == 1
    assert manifest["teacher"]["models"] == ["gpt-4o-mini"]  # the model the server says answered
    assert manifest["usage"]["ok"] == 4 + 24
    assert manifest["usage"]["prompt_tokens"] > 0
    assert set(manifest["categories"]) == {"calm", "angry"}
    train = read_jsonl(out / "train.jsonl")
    assert all(set(r) == {"messages"} for r in train)  # metadata stays out of the training file
    meta = read_jsonl(out / "metadata.jsonl")
    assert len(meta) == manifest["train"] + manifest["test"]
    assert {"id", "category", "cell", "provenance", "split"} <= set(meta[0])
    assert not list(out.glob("*.tmp*"))


def test_checks_reject_and_are_counted(tmp_path):
    text = BIGGER.replace(
        '      content: "{{ answer }}"\n', '      content: "{{ answer }}"\n  checks:\n    regex: "calm"\n'
    )
    spec = write_spec(tmp_path, text.replace("max_rounds", "x") + "max_rounds: 0\n")
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        # every answer fails the checks: without the flag the empty dataset is a shortfall, exit 3
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q", "--allow-shortfall")
    assert result.exit_code == 0, result.output
    assert "shortfall allowed: 4 cells are short" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # replies echo the utterance, which never says "calm": every answer fails the regex
    assert manifest["categories"]["calm"]["rejected_by_checks"] == 12
    assert manifest["train"] + manifest["test"] == 0
    assert any("short" in w for w in manifest["warnings"])


def test_dpo_spec_builds_preference_formats(tmp_path):
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = run(
            "run", str(ROOT / "generators" / "rude_agent_dpo.yaml"), "--out", "out", "--base-url", srv.base_url, "-q"
        )
    assert result.exit_code == 0, result.output
    pairs = read_jsonl(tmp_path / "out" / "preference-trl" / "train.jsonl")
    assert pairs and {"prompt", "chosen", "rejected"} <= set(pairs[0])
    assert pairs[0]["chosen"] != pairs[0]["rejected"]
    openai = read_jsonl(tmp_path / "out" / "preference-openai" / "train.jsonl")
    assert {"input", "preferred_output", "non_preferred_output"} <= set(openai[0])


def test_build_reports_validation_problems(tmp_path):
    spec = write_spec(tmp_path)  # 8 examples: under OpenAI's minimum of 10
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    assert "too_few_examples" in result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["validation"]["ok"] is False


def test_rude_agent_gives_1000_distinct_examples_split_90_10(tmp_path):
    """Issue 4's acceptance run, against the loopback teacher (which repeats every 13th utterance)."""
    spec = str(ROOT / "generators" / "rude_agent.yaml")
    with FakeServer(responder=list_then_reply_responder(dupe_every=13)).running() as srv:
        args = ["run", spec, "--out", "out", "--store", "s.db", "--base-url", srv.base_url, "--rpm", "1000000", "-q"]
        result = run(*args)
        assert result.exit_code == 0, result.output
        sent = srv.count
        assert run(*args[:2], "--out", "again", *args[4:]).exit_code == 0
        assert srv.count == sent
    out = tmp_path / "out"
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert (len(train), len(test)) == (900, 100)
    users = {r["messages"][0]["content"] for r in train + test}
    assert len(users) == 1000
    meta = read_jsonl(out / "metadata.jsonl")
    situations = {m["cell"]["situation"] for m in meta}
    assert len(situations) == 10
    for situation in situations:
        assert {m["split"] for m in meta if m["cell"]["situation"] == situation} == {"train", "test"}
    assert run("validate", str(out / "train.jsonl")).exit_code == 0
    for name in ("train.jsonl", "test.jsonl", "metadata.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_a_spec_built_in_code_can_be_rebuilt_from_the_store(tmp_path):
    import yaml

    from promptbake.specification.models import Spec
    from promptbake.teacher.config import Teacher
    from promptbake.workflows.pipeline import run as run_pipeline

    spec = Spec.model_validate(yaml.safe_load(BIGGER))  # no file behind it, as with `distill`
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        run_pipeline(spec, "a", "s.db", Teacher(base_url=srv.base_url))
    result = run("build", "s.db", "--out", "b")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()


def sides(directory: Path) -> dict[str, str]:
    return {m["id"]: m["split"] for m in read_jsonl(directory / "metadata.jsonl")}


def test_a_bigger_rebuild_of_the_same_directory_keeps_every_example_on_its_side(tmp_path):
    small = write_spec(tmp_path, BIGGER)
    bigger = write_spec(tmp_path, BIGGER.replace("[shop, gym]", "[shop, gym, park]"), "bigger.yaml")
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        assert run("run", str(small), "--out", "out", "--base-url", srv.base_url, "-q").exit_code == 0
        before = sides(tmp_path / "out")
        result = run("run", str(bigger), "--out", "out", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
    after = sides(tmp_path / "out")
    assert len(after) == 36 and set(before) < set(after)
    assert {i: after[i] for i in before} == before  # nobody changed sides
    assert sum(1 for s in after.values() if s == "test") == 9  # the new ones topped the quota up
    history = read_jsonl(tmp_path / "out" / "splits.jsonl")
    assert {h["id"]: h["split"] for h in history} == after


def test_build_spec_reads_the_store_run_wrote_by_default(tmp_path):
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        assert run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q").exit_code == 0
    before = (tmp_path / "out" / "train.jsonl").read_bytes()
    result = run("build", str(spec), "--out", "out")  # no --store: OUT/promptbake.db, as run used
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == before


def test_split_group_none_keeps_test_prompts_in_test_when_a_sampling_parameter_changes(tmp_path):
    """Issue 24: with ``split.group: none`` the example's side was keyed by its id, which hashes
    every sampling parameter: a new ``max_tokens`` on the reply step moved test prompts to train."""
    text = BIGGER.replace("  seed: 1\n", "  seed: 1\n  group: none\n")
    spec = write_spec(tmp_path, text)
    longer = write_spec(tmp_path, text.replace("  - name: answer\n", "  - name: answer\n    max_tokens: 50\n"
                                                                       "    temperature: 0.3\n"), "longer.yaml")

    def test_prompts() -> set[str]:
        return {r["messages"][0]["content"] for r in read_jsonl(tmp_path / "out" / "test.jsonl")}

    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        assert run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q").exit_code == 0
        before, ids = test_prompts(), set(sides(tmp_path / "out"))
        sent = srv.count
        result = run("run", str(longer), "--out", "out", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == sent + 24  # the replies were asked again: new requests, new example ids
    assert not ids & set(sides(tmp_path / "out"))
    assert len(before) == 6 and test_prompts() == before


def test_a_seed_that_would_not_decide_an_existing_split_is_refused_before_anything_is_paid(tmp_path):
    """Issue 24: `build --seed N` into a built directory kept every example on its side (as it must)
    yet recorded seed N in the manifest, a seed that decided nothing."""
    spec = write_spec(tmp_path, BIGGER)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        assert run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q").exit_code == 0
        before = {name: (tmp_path / "out" / name).read_bytes() for name in ("manifest.json", "train.jsonl")}
        refused = run("build", str(spec), "--out", "out", "--seed", "99")
        assert refused.exit_code == 2
        assert refused.output.strip() == ("Error: out: an earlier build split it with seed 1 and its examples keep "
                                          "their sides, so seed 99 (--seed) would place only new ones; build into a "
                                          "new directory for a split by seed 99, or keep seed 1")
        sent = srv.count
        bigger = write_spec(tmp_path, BIGGER.replace("[shop, gym]", "[shop, gym, park]"), "bigger.yaml")
        result = run("run", str(bigger), "--out", "out", "--base-url", srv.base_url, "-q", "--seed", "99")
        assert result.exit_code == 2 and "seed 99 (--seed)" in result.output
        assert srv.count == sent  # refused before a request was sent
        assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before
        assert run("build", str(spec), "--out", "out", "--seed", "1").exit_code == 0  # the seed it has
        changed = write_spec(tmp_path, BIGGER.replace("  seed: 1\n", "  seed: 2\n"), "changed.yaml")
        result = run("build", str(changed), "--out", "out")
        assert result.exit_code == 2 and "seed 2 (split.seed)" in result.output
        assert run("build", str(spec), "--store", "out/promptbake.db", "--out", "fresh", "--seed", "99").exit_code == 0
    assert json.loads((tmp_path / "fresh" / "manifest.json").read_text())["seed"] == 99
