"""Multi-turn dialogues: a customer simulator and an agent, turn by turn, every turn a request of
its own (cached, resumed, paid once), inside the exact-count loop."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import write_spec

from promptbake.cli.main import cli
from promptbake.curate.dedupe import dedupe
from promptbake.curate.examples import ExampleRenderer
from promptbake.plan.expand import Expander
from promptbake.records import Example
from promptbake.specification.models import DedupeConfig, load_spec
from promptbake.store.db import Store

SRC = Path(__file__).parent.parent / "src"
TALK = """
name: talk
teacher:
  model: gpt-4o-mini
grid:
  axes:
    place: [shop, gym, bank]
    mood: [calm, angry]
  count: 3
category: mood
steps:
  - name: dialogue
    max_tokens: 60
    conversation:
      turns: {min: 2, max: 4}
      user:
        seed: 5
        messages:
          - role: system
            content: "You are a {{ mood }} customer at the {{ place }}. Exchange {{ turn }} of {{ turns }}."
          - role: user
            content: "Say your first words to the staff."
      assistant:
        messages:
          - role: system
            content: "You are a rude agent at the {{ place }}."
split:
  test: 0.25
  seed: 1
max_rounds: 6
"""


def digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def talker(*, customer=None, agent=None, stop=None):
    """A deterministic teacher for dialogues: which side is asked is read from its system message.
    ``customer(turn, digest)`` / ``agent(exchange, digest, last customer turn)`` may replace a
    default answer (return None to keep it); ``stop(transcript)`` answers a stop check."""

    def respond(body: dict):
        messages = body["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        h = digest(body)
        if system.startswith("You read a conversation"):
            transcript = messages[-1]["content"]
            return {"reasoning": "checked", "done": bool(stop and stop(transcript))}
        if "rude" not in system:  # the customer (the agent is told to be rude)
            turn = 1 + sum(m["role"] == "assistant" for m in messages)  # its own earlier turns
            said = customer(turn, h) if customer else None
            return said if said is not None else f"I want my refund now, turn {turn}, ticket {h[:8]}."
        exchange = sum(m["role"] == "user" for m in messages)
        said = agent(exchange, h, messages[-1]["content"]) if agent else None
        return said if said is not None else f"Go away, pal. Not my problem {h[8:16]}."

    return respond


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def built(out: Path) -> list[dict]:
    return [row for name in ("train", "test") for row in read_jsonl(out / f"{name}.jsonl")]


def exchanges(messages: list[dict]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def alternates(messages: list[dict], first: str = "user") -> bool:
    roles = [m["role"] for m in messages]
    other = {"user": "assistant", "assistant": "user"}
    return roles[0] == first and roles[-1] == "assistant" and all(
        b == other[a] for a, b in itertools.pairwise(roles))


def turns_paid(spec_path: Path, store_path: Path) -> int:
    """Every turn of every dialogue the store holds (kept, dropped or surplus), counting a
    customer turn that ended its dialogue: what the teacher must have been paid for."""
    spec = load_spec(spec_path)
    with Store(store_path, lock=False) as store:
        examples = list(ExampleRenderer(spec, Expander(spec).templates).examples(store))
        ok = store.totals(spec.name)["ok"]
    rule = spec.steps[-1].conversation.stop
    # a customer turn that ended its dialogue was paid, but is not in it
    left = sum(e.provenance["ended"] == "stop" for e in examples) if rule and rule.side == "user" else 0
    return sum(len(e.messages) for e in examples) + left, ok


def test_dialogues_alternate_within_bounds_and_each_turn_is_one_request(tmp_path):
    spec = write_spec(tmp_path, TALK)
    with FakeServer(responder=talker()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert not srv.paid_twice()
        bodies = list(srv.bodies)
        sent = srv.count
    rows = built(tmp_path / "out")
    assert len(rows) == 18  # 6 cells × 3 dialogues
    lengths = Counter(exchanges(r["messages"]) for r in rows)
    assert set(lengths) <= {2, 3, 4} and len(lengths) > 1, lengths  # drawn evenly from the bounds
    assert all(alternates(r["messages"]) for r in rows)
    # the agent's persona is baked away: the example is the dialogue alone
    assert not any(m["role"] == "system" for r in rows for m in r["messages"])
    # one request per turn: what the teacher was sent is every turn of every dialogue, no more
    paid, ok = turns_paid(spec, tmp_path / "out" / "promptbake.db")
    assert sent == ok == paid == sum(len(r["messages"]) for r in rows)
    # the simulator sees the agent's turns as user messages and its own as assistant messages
    customer = [b for b in bodies if "rude" not in b["messages"][0]["content"] and len(b["messages"]) > 2]
    assert customer
    for body in customer:
        history = body["messages"][2:]
        assert [m["role"] for m in history] == ["assistant", "user"] * (len(history) // 2)
        assert all(m["content"].startswith("I want") for m in history if m["role"] == "assistant")
        assert all(m["content"].startswith("Go away") for m in history if m["role"] == "user")
    agent = [b for b in bodies if "rude agent" in b["messages"][0]["content"]]
    assert all(b["messages"][-1]["role"] == "user" and b["messages"][-1]["content"].startswith("I want")
               for b in agent)
    # a turn's templates see where it is: the customer is told its exchange and the dialogue's length
    assert any("Exchange 2 of" in b["messages"][0]["content"] for b in customer)
    meta = read_jsonl(tmp_path / "out" / "metadata.jsonl")
    assert all(m["cell"].keys() == {"place", "mood"} for m in meta)
    assert Counter(m["provenance"]["ended"] for m in meta).keys() <= {"length", "max"}


def test_a_rerun_pays_nothing_and_builds_the_same_files(tmp_path):
    spec = write_spec(tmp_path, TALK)
    with FakeServer(responder=talker()).running() as srv:
        assert run("run", str(spec), "--out", "a", "--store", "s.db", "--base-url", srv.base_url, "-q").exit_code == 0
        sent = srv.count
        result = run("run", str(spec), "--out", "b", "--store", "s.db", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == sent
    for name in ("train.jsonl", "test.jsonl", "metadata.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


STOPPED = TALK.replace("      turns: {min: 2, max: 4}\n", "      turns: {min: 2, max: 4}\n"
                       "      stop: {phrase: \"[END]\"}\n")


def test_a_customer_who_leaves_ends_the_dialogue_and_a_too_short_one_is_regenerated(tmp_path):
    """The customer's turn holding the phrase ends the dialogue and is not kept; one that leaves
    before turns.min is dropped by the length gate and its cell refilled by a top-up round."""

    def customer(turn: int, h: str) -> str | None:
        if turn == 1 and int(h[:4], 16) % 4 == 0:
            return "Forget it. [END]"  # too early: 0 exchanges
        if turn >= 3 and int(h[:4], 16) % 2 == 0:
            return "I'm done with this place. [END]"
        return None

    spec = write_spec(tmp_path, STOPPED)
    with FakeServer(responder=talker(customer=customer)).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        sent = srv.count
    out = tmp_path / "out"
    rows = built(out)
    assert len(rows) == 18
    assert all(alternates(r["messages"]) and 2 <= exchanges(r["messages"]) <= 4 for r in rows)
    assert not any("[END]" in m["content"] for r in rows for m in r["messages"])
    ended = Counter(m["provenance"]["ended"] for m in read_jsonl(out / "metadata.jsonl"))
    assert ended["stop"] and ended["max"]
    short = [d for d in read_jsonl(out / "dropped.jsonl") if d["reason"] == "checks"]
    assert short and all(d["detail"] == "turns: 0 exchanges, fewer than turns.min 2" for d in short)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["requests"] > 18 * 2  # the dropped dialogues were regenerated ...
    paid, ok = turns_paid(spec, out / "promptbake.db")
    assert sent == ok == paid  # ... and every request is a turn of some dialogue: turns + regenerations


def test_a_late_turn_failing_entirely_ends_those_dialogues_not_the_run(tmp_path):
    """Every agent turn of exchange 4 is cut off (a reason retrying cannot fix): the few dialogues
    drawn that long stay unfinished and the count loop fills their cells with others."""
    from fakeserver import Raw

    cut = Raw.completion([{"index": 0, "message": {"role": "assistant", "content": "Listen, you"},
                           "finish_reason": "length"}], usage={"prompt_tokens": 9, "completion_tokens": 60})
    spec = write_spec(tmp_path, TALK)
    with FakeServer(responder=talker(agent=lambda exchange, h, _: cut if exchange == 4 else None)).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    rows = built(tmp_path / "out")
    assert len(rows) == 18 and {exchanges(r["messages"]) for r in rows} == {2, 3}


def test_an_agent_turn_with_the_phrase_is_kept_without_it(tmp_path):
    spec = write_spec(tmp_path, STOPPED.replace('stop: {phrase: "[END]"}', 'stop: {phrase: "[END]", side: assistant}'))
    agent = talker(agent=lambda exchange, h, _: "We are closed. Bye. [END]" if exchange == 2 else None)
    with FakeServer(responder=agent).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    rows = built(tmp_path / "out")
    assert {exchanges(r["messages"]) for r in rows} == {2}
    assert {r["messages"][-1]["content"] for r in rows} == {"We are closed. Bye."}


def test_a_structured_done_field_ends_the_dialogue(tmp_path):
    text = TALK.replace("      turns: {min: 2, max: 4}\n", "      turns: {min: 2, max: 5}\n      stop: {field: done}\n")
    text = text.replace("      user:\n        seed: 5\n", "      user:\n        seed: 5\n        parse: json\n"
                        "        say: line\n        schema: {type: object, properties: {line: {type: string}, "
                        "done: {type: boolean}}, required: [line, done]}\n")

    def customer(turn: int, h: str) -> dict:
        return {"line": f"I want a refund, turn {turn}, {h[:6]}.", "done": turn == 4}

    spec = write_spec(tmp_path, text)
    with FakeServer(responder=talker(customer=customer)).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        bodies = list(srv.bodies)
    assert result.exit_code == 0, result.output
    rows = built(tmp_path / "out")
    assert {exchanges(r["messages"]) for r in rows} == {3}  # the 4th customer turn said done: not kept
    assert all(m["content"].startswith("I want a refund") for r in rows for m in r["messages"] if m["role"] == "user")
    # the simulator sees its own earlier turns as the JSON it wrote
    later = [b for b in bodies if "rude" not in b["messages"][0]["content"] and len(b["messages"]) > 2]
    assert all(json.loads(b["messages"][2]["content"])["done"] is False for b in later)


def test_a_stop_judge_reads_the_dialogue_after_each_agent_turn_from_min(tmp_path):
    text = TALK.replace("      turns: {min: 2, max: 4}\n", "      turns: {min: 2, max: 4}\n"
                        "      stop:\n        judge: {criteria: The customer got an answer.}\n")
    spec = write_spec(tmp_path, text)
    judge = talker(stop=lambda transcript: transcript.count("[assistant]") >= 3)
    with FakeServer(responder=judge).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        checks = [b for b in srv.bodies if b["messages"][0]["content"].startswith("You read a conversation")]
    assert result.exit_code == 0, result.output
    rows = built(tmp_path / "out")
    assert {exchanges(r["messages"]) for r in rows} == {3}
    # 18 dialogues checked after exchange 2 (not done) and after 3 (done); never after 1 or at max
    assert len(checks) == 36
    assert all("The customer got an answer." in b["messages"][-1]["content"] for b in checks)
    meta = read_jsonl(tmp_path / "out" / "metadata.jsonl")
    assert {m["provenance"]["ended"] for m in meta} == {"judge"}


def test_the_agent_may_open_and_weights_mark_the_turns_trained_on(tmp_path):
    text = TALK.replace("      turns: {min: 2, max: 4}\n", "      turns: 2\n      opener: assistant\n")
    text += """example:
  messages:
    - conversation: dialogue
      weight: "turn == turns"
output:
  formats: [openai-chat, messages, sharegpt, alpaca]
"""
    spec = write_spec(tmp_path, text)
    with FakeServer(responder=talker()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    rows = built(out)
    assert len(rows) == 18
    for row in rows:
        messages = row["messages"]
        assert alternates(messages, first="assistant") and len(messages) == 5  # a greeting, then 2 exchanges
        assert [m.get("weight") for m in messages if m["role"] == "assistant"] == [0, 0, 1]
    messages = [r for name in ("train", "test") for r in read_jsonl(out / "messages" / f"{name}.jsonl")]
    assert messages and not any("weight" in m for r in messages for m in r["messages"])
    sharegpt = read_jsonl(out / "sharegpt" / "train.jsonl")
    assert [t["from"] for t in sharegpt[0]["conversations"]] == ["gpt", "human", "gpt", "human", "gpt"]
    assert not (out / "alpaca" / "train.jsonl").read_text()
    assert "alpaca is single-turn" in result.output and "export it as messages or sharegpt" in result.output
    datasets = pytest.importorskip("datasets")
    assert run("export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")).exit_code == 0
    hf = datasets.load_from_disk(str(tmp_path / "hf" / "hf" / "dataset"))
    assert len(hf["train"]) + len(hf["test"]) == 18
    assert [m["role"] for m in hf["train"][0]["messages"]] == ["assistant", "user", "assistant", "user", "assistant"]


def test_the_filters_check_every_turn_and_a_failing_dialogue_is_not_continued(tmp_path):
    """An agent that echoes the customer at exchange 2 ends its dialogue there: its third exchange
    is never paid for, the build drops it naming the turn, and a top-up round starts a new one."""
    text = TALK.replace("turns: {min: 2, max: 4}", "turns: 3") + "filters: [no_echo]\n"
    echoes: set[str] = set()

    def agent(exchange: int, h: str, customer: str) -> str | None:
        if exchange == 2 and int(h[:4], 16) % 3 == 0:
            echoes.add(customer)
            return customer  # the agent parrots the customer
        return None

    spec = write_spec(tmp_path, text)
    with FakeServer(responder=talker(agent=agent)).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        bodies = list(srv.bodies)
    assert result.exit_code == 0, result.output
    assert echoes
    # no turn was asked of a dialogue that had already failed a gate: an echoed customer turn was
    # seen once, by the agent that echoed it (continued, the next customer turn would see it twice)
    history = [m["content"] for b in bodies for m in b["messages"]]
    assert all(history.count(text) == 1 for text in echoes)
    rows = built(tmp_path / "out")
    assert len(rows) == 18 and {exchanges(r["messages"]) for r in rows} == {3}
    dropped = [d for d in read_jsonl(tmp_path / "out" / "dropped.jsonl") if d["reason"] == "filters"]
    assert len(dropped) == len(echoes)
    assert all(d["detail"].startswith("turn 2: no_echo: repeats 100%") for d in dropped)


def test_a_customer_parroting_the_agent_is_caught_across_turns():
    from promptbake.curate.filters import FilterSet

    filters = FilterSet.model_validate(["no_echo", {"no_echo": True, "role": "user"}]).compile()
    dialogue = [
        {"role": "user", "content": "I want my money back right now."},
        {"role": "assistant", "content": "No refunds for people like you, go home."},
        {"role": "user", "content": "No refunds for people like you, go home?"},
        {"role": "assistant", "content": "Exactly. Bye."},
    ]
    assert filters.turn_failures(dialogue) == ["turn 2: no_echo: repeats 100% of the user's words (user)"]
    assert filters.turn_failures(dialogue[:2]) == []


def test_a_judge_sees_the_whole_dialogue_or_its_last_exchange(tmp_path):
    text = TALK.replace("turns: {min: 2, max: 4}", "turns: 3") + (
        "judge:\n  criteria: The agent is rude.\n  turns: last\n  min_score: 3\n")
    judged: list[str] = []
    base = talker()

    def respond(body: dict):
        if "strict judge" in body["messages"][0]["content"]:
            judged.append(body["messages"][-1]["content"])
            return {"reasoning": "rude", "score": 5}
        return base(body)

    spec = write_spec(tmp_path, text)
    with FakeServer(responder=respond).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    assert len(judged) == 18  # one verdict per dialogue, once it ended
    assert all(j.count("[user]") == 1 and "turn 3" in j and "turn 1" not in j for j in judged)


def test_dedupe_compares_the_customers_opening_turn_by_default(tmp_path):
    spec = load_spec(write_spec(tmp_path, TALK))
    assert spec.dedupe.fields == ["opening"]
    assert load_spec(write_spec(tmp_path, TALK + "dedupe:\n  fields: [user, assistant]\n")).dedupe.fields == [
        "user", "assistant"]
    same_start = [
        Example(id=str(i), category="c", messages=[
            {"role": "user", "content": "I want a refund for this broken kettle."},
            {"role": "assistant", "content": f"No. Reason number {i}, pal, and many more words here."},
        ]) for i in range(2)
    ]
    result = dedupe(same_start, DedupeConfig(fields=["opening"]))
    assert [e.id for e in result.kept] == ["0"] and result.dropped[0].reason == "exact"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("turns: {min: 2, max: 4}", "turns: {min: 4, max: 2}"),
         ":15: steps[0].conversation.turns: turns.min (4) is above turns.max (2)"),
        (lambda t: t.replace("split:\n", "  - name: after\n    messages: [{role: user, content: x}]\nsplit:\n"),
         "must be the last step"),
        (lambda t: t + "example:\n  messages: [{role: user, content: hi}]\n",
         "example.messages must hold the dialogue: add '- conversation: dialogue'"),
        (lambda t: t.replace("    max_tokens: 60\n", "    max_tokens: 60\n    parse: json\n"),
         "a conversation step takes no 'parse'"),
        (lambda t: t.replace("      turns: {min: 2, max: 4}\n", "      turns: 3\n      stop: {field: done}\n"),
         "stop.field needs the user side to answer in JSON"),
        (lambda t: t.replace("      user:\n        seed: 5\n", "      user:\n        seed: 5\n        parse: json\n"),
         "parse: json needs 'say'"),
        (lambda t: t.replace("      turns: {min: 2, max: 4}\n", "      turns: 3\n      stop: {phrase: x, field: y}\n"),
         "a stop rule is exactly one of 'phrase', 'field' or 'judge'"),
    ],
)
def test_bad_conversation_specs_are_one_line_naming_file_and_field(tmp_path, change, expected):
    spec = write_spec(tmp_path, change(TALK))
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"Error: {spec}:"), result.output
    assert expected in result.output


def test_a_template_typo_in_a_side_is_refused_before_any_request(tmp_path):
    spec = write_spec(tmp_path, TALK.replace("You are a rude agent at the {{ place }}.",
                                             "You are a rude agent at the {{ plaice }}."))
    with FakeServer(responder=talker()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        assert srv.count == 0
    assert result.exit_code == 2
    assert "steps[0].conversation.assistant.messages[0].content" in result.output and "plaice" in result.output


def test_a_template_reading_the_dialogue_fails_on_the_first_turn_in_preflight(tmp_path):
    spec = write_spec(tmp_path, TALK.replace("Say your first words to the staff.",
                                             "Answer {{ dialogue[-1].content }}"))
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "steps[0].conversation.user.messages[1].content" in result.output


def test_the_dry_run_prices_dialogues_from_the_turn_bounds(tmp_path):
    spec = write_spec(tmp_path, TALK)
    result = run("expand", str(spec), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines()}
    # 18 dialogues of at most 4 exchanges: 72 customer turns and 72 agent turns at most
    assert re.match(r"step dialogue \(user\): 72 requests, ~[\d,]+ prompt tokens, ≤ 4,320 completion", lines[
        "step dialogue (user)"])
    assert lines["step dialogue (assistant)"].startswith("step dialogue (assistant): 72 requests")
    assert "total: 144 requests" in result.output
    assert "conversation dialogue: 2–4 exchanges per dialogue, one request per turn: 72 requests if every " \
           "dialogue ends at 2, 144 at 4" in result.output
    # later turns carry the dialogue so far: an agent's prompt grows turn by turn
    from promptbake.plan.estimate import estimate

    by_turn = estimate(load_spec(spec))
    assert by_turn.cost > 0


def test_the_report_shows_the_turns_histogram_and_whole_dialogues(tmp_path):
    spec = write_spec(tmp_path, TALK)
    with FakeServer(responder=talker()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="conversations"' in page and "exchanges per dialogue" in page
    rows = built(tmp_path / "out")
    assert rows[0]["messages"][-1]["content"] in page and rows[0]["messages"][2]["content"] in page


def test_the_thousand_dialogue_spec_against_the_loopback_stand_in(tmp_path):
    """generators/rude_agent_dialogues.yaml, the mission's 1,000 dialogues: each alternates, keeps
    within 2–4 exchanges, and the stand-in was sent exactly the turns of the dialogues generated."""
    spec = Path(__file__).parent.parent / "generators" / "rude_agent_dialogues.yaml"

    def customer(turn: int, h: str) -> str | None:
        return "[END]" if turn >= 3 and int(h[:4], 16) % 3 == 0 else None

    with FakeServer(responder=talker(customer=customer), record_bodies=False).running() as srv:
        # its own process, as a user runs it: the build of 1,000 dialogues does not swell this one
        done = subprocess.run([sys.executable, "-m", "promptbake", "run", str(spec), "--out", str(tmp_path / "out"),
                               "--base-url", srv.base_url, "-q"], env={**os.environ, "PYTHONPATH": str(SRC)},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        sent = srv.count
        assert not srv.paid_twice()
    rows = built(tmp_path / "out")
    assert len(rows) == 1000
    lengths = Counter(exchanges(r["messages"]) for r in rows)
    assert set(lengths) == {2, 3, 4}, lengths
    assert all(alternates(r["messages"]) for r in rows)
    paid, ok = turns_paid(spec, tmp_path / "out" / "promptbake.db")
    assert sent == ok == paid


def test_each_side_is_sent_with_its_own_model_and_sampling(tmp_path):
    text = TALK.replace("      user:\n        seed: 5\n", "      user:\n        seed: 5\n        model: sim-model\n"
                        "        temperature: 1.2\n").replace("    max_tokens: 60\n", "    max_tokens: 60\n"
                                                              "    temperature: 0.3\n")
    spec = write_spec(tmp_path, text)
    with FakeServer(responder=talker()).running() as srv:
        result = run("run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q")
        bodies = list(srv.bodies)
    assert result.exit_code == 0, result.output
    sides = {("agent" if "rude" in b["messages"][0]["content"] else "customer", b["model"], b["temperature"],
              b["max_tokens"]) for b in bodies}
    assert sides == {("customer", "sim-model", 1.2, 60), ("agent", "gpt-4o-mini", 0.3, 60)}


def test_a_conversation_spec_built_in_python_round_trips_through_the_store(tmp_path):
    """``build STORE`` re-reads the spec the store saved: a spec made in code is saved as YAML
    with every default written out, and must validate again."""
    import yaml

    from promptbake.specification.models import spec_from_dict
    from promptbake.store.saved_specs import spec_from_store, spec_text

    spec = spec_from_dict(yaml.safe_load(TALK))
    with Store(tmp_path / "s.db") as store:
        store.save_spec(spec.name, spec.spec_hash(), "", spec_text(spec))
    again = spec_from_store(tmp_path / "s.db")
    assert again.steps[0].conversation == spec.steps[0].conversation and again.dedupe.fields == ["opening"]
