"""Prompt distillation end to end through the CLI against the loopback teacher: inputs from a file
or generated, answer checks, the prompt's own examples kept out, no trace of the long prompt in
the data, break-even figures, and bad inputs that cost nothing already paid for."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeServer

from promptbake.cli.main import cli
from promptbake.errors import InputError
from promptbake.output.training_cost import finetune_estimate
from promptbake.plan.expand import Expander
from promptbake.specification.templates import Templates
from promptbake.teacher.tokens import count_tokens
from promptbake.workflows.distill import (
    TRACE_CHARS,
    answer_checks,
    break_even,
    distill_spec,
    prompt_examples,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LEAKY = "Hi, our invoice INV-20931 for October"  # the sample inputs hold a near-copy of this prompt example
EXAMPLE_INPUT = (SAMPLES / "triage_prompt.md").read_text().split("<input>")[1].split("</input>")[0].strip()


def triage_teacher(bad: str | None = None, parrot: str | None = None):
    """Answers the answer step with compact triage JSON (plain text when the ticket contains
    ``bad``); list requests get distinct tickets, the very first a copy of a prompt example."""
    counter = itertools.count()

    def respond(body: dict) -> str:
        messages = body["messages"]
        user = messages[-1]["content"]
        if messages[0]["role"] != "system":
            n = int(re.search(r"Write (\d+)", user).group(1))
            tone = re.search(r"- tone: (\w+)", user)
            items = [f"Ticket {next(counter)} ({tone.group(1) if tone else 'any'}): my bucket number "
                     f"{next(counter) * 7919 % 10007} lost objects overnight, please look." for _ in range(n)]
            if items[0].startswith("Ticket 0 "):
                items[0] = EXAMPLE_INPUT
            return json.dumps(items)
        if bad and bad in user:
            return "This looks like a billing problem to me."
        if parrot and parrot in user:  # copies the prompt's first example answer, summary and all
            return json.dumps(json.loads(prompt_examples((SAMPLES / "triage_prompt.md").read_text())[0].output))
        return json.dumps({"category": "billing" if "invoice" in user.lower() else "bug", "priority": "P3",
                           "team": "product-eng", "summary": f"Ticket of {len(user)} characters."})

    return respond


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def copy_samples(tmp_path: Path) -> None:
    shutil.copytree(SAMPLES, tmp_path / "samples")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rendered_prompt() -> str:
    return Templates.for_spec_dir(Path.cwd()).render("samples/triage_prompt.md", {})


def base_args(srv: FakeServer, *extra: str) -> list[str]:
    return ["distill", "--prompt", "samples/triage_prompt.md", "--out", "out", "--base-url", srv.base_url,
            "--model", "gpt-4o-mini", "-q", *extra]


# ---- the prompt's own examples -------------------------------------------------------------


def test_prompt_examples_in_the_sample_prompt():
    found = prompt_examples((SAMPLES / "triage_prompt.md").read_text())
    assert len(found) == 4
    assert found[0].input.startswith(LEAKY)
    assert json.loads(found[1].output)["category"] == "outage"
    assert (SAMPLES / "triage_prompt.md").read_text().splitlines()[found[0].line - 1] == "<example>"


def test_prompt_example_conventions():
    text = (
        "Rules first.\n\n**Input:** first question\nstill the first\n**Output:** first answer\n\n"
        "Some prose that is not an example.\nUser: whoever sends the ticket.\n\n"
        "### Input:\nsecond question\n### Output:\n```\nsecond answer\n```\n\n"
        "<example>\nUser: third question\nAssistant: third answer\n</example>\n"
        "<example>just an input in a block</example>\n"
    )
    found = prompt_examples(text)
    assert [(e.input, e.output, e.line) for e in found] == [
        ("first question\nstill the first", "first answer", 3),
        ("second question", "second answer", 10),
        ("third question", "third answer", 18),
        ("just an input in a block", "", 21),
    ]


# ---- break-even maths on known numbers ------------------------------------------------------


def test_break_even_prompt_only():
    # 2,000 tokens saved at $0.15/1M = $0.0003 a call; $1 generation + $2 fine-tuning → 10,000 calls
    result = break_even(2000, 0, 1.0, 2.0, 0.15e-6, ft_price_per_input_token=0.30e-6)
    assert result.tokens_saved_per_call == 2000
    assert result.saving_per_call == pytest.approx(0.0003)
    assert result.upfront_cost == 3.0
    assert result.calls == 10_000
    assert "10,000 calls" in result.verdict()


def test_break_even_counts_the_fine_tunes_dearer_input_and_output():
    # base: (2000+100)·0.15 + 50·0.60 = 345 µ$; fine-tune: 100·0.30 + 50·1.20 = 90 µ$ → 255 µ$/call
    result = break_even(2000, 0, 1.0, 2.0, 0.15e-6, ft_price_per_input_token=0.30e-6, input_tokens=100,
                        output_tokens=50, price_per_output_token=0.60e-6, ft_price_per_output_token=1.20e-6)
    assert result.saving_per_call == pytest.approx(255e-6)
    assert result.calls == 11_765  # ceil(3 / 0.000255) = ceil(11,764.7)


def test_break_even_never_when_the_fine_tune_costs_more_per_call():
    # 100-token prompt baked to 80 tokens, but each fine-tuned token costs twice as much
    result = break_even(100, 80, 0.5, 1.0, 0.15e-6, ft_price_per_input_token=0.30e-6)
    assert result.saving_per_call == pytest.approx(100 * 0.15e-6 - 80 * 0.30e-6)
    assert result.calls is None
    assert "never breaks even" in result.verdict()


def test_break_even_with_nothing_to_repay_is_immediate():
    assert break_even(500, 0, 0.0, 0.0, 1e-6, ft_price_per_input_token=2e-6).calls == 0


def test_finetune_estimate_uses_the_targets_training_price_and_openai_epochs():
    known = finetune_estimate([100] * 50, "gpt-4o-mini")  # 50 examples × 3 epochs ≥ 100: 3 epochs
    assert (known.tokens_per_epoch, known.epochs, known.usd_per_1m) == (5000, 3, 3.00)
    assert known.cost == pytest.approx(5000 * 3 * 3.00 / 1e6)
    small = finetune_estimate([100] * 10, "gpt-4.1-nano", epochs=None)  # 10 × 3 < 100 → 10 epochs
    assert (small.epochs, small.usd_per_1m) == (10, 1.50)
    unknown = finetune_estimate([10, 20], "my-own-model", epochs=2)
    assert unknown.usd_per_1m == 3.00 and unknown.price_source.startswith("assumed")
    assert unknown.cost == pytest.approx(60 * 3.00 / 1e6)


def test_check_flags_map_to_checks(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object", "required": ["a"]}')
    checks = answer_checks(schema, r"^\{", 50)
    assert checks.failures('{"a": 1}') == []
    assert checks.failures('{"b": 1}') == ["schema: 'a' is a required property"]
    assert any(f.startswith("max_length") for f in checks.failures('{"a": "' + "x" * 60 + '"}'))
    with pytest.raises(InputError, match="check_regex: invalid regex"):
        answer_checks(regex="(")
    schema.write_text("{not json")
    with pytest.raises(InputError, match=r"s\.json: the JSON schema is not valid JSON"):
        answer_checks(schema)


# ---- end to end through the CLI -------------------------------------------------------------


def test_distill_from_inputs_file_end_to_end(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl",
                                   "--check-schema", "samples/triage_schema.json"))
        assert result.exit_code == 0, result.output
        assert srv.count == 30  # every ticket once, the leaking one too (it is dropped at build)
    prompt = rendered_prompt()
    for body in srv.bodies:  # the teacher saw the whole long prompt, variables rendered
        assert body["messages"][0] == {"role": "system", "content": prompt}
        assert "Northwind Cloud" in body["messages"][0]["content"] and "{{" not in body["messages"][0]["content"]

    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    assert len(data) == 29  # 30 tickets minus the near-copy of the prompt's first example
    assert not any(LEAKY in m["content"] for row in data for m in row["messages"])
    # no trace of the long prompt: no system message, no 40-character run of it anywhere
    assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] for row in data)
    runs = {prompt[i:i + TRACE_CHARS] for i in range(len(prompt) - TRACE_CHARS + 1)}
    for row in data:
        for m in row["messages"]:
            assert not any(m["content"][i:i + TRACE_CHARS] in runs for i in range(len(m["content"])))

    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    d = manifest["distill"]
    assert d["prompt_examples"] == 4 and d["leaked_inputs_dropped"] == 1
    assert d["long_prompt_tokens"] == count_tokens(prompt, "gpt-4o-mini") + 3 >= 1500
    assert d["baked_prompt_tokens"] == 0 and d["tokens_saved_per_call"] == d["long_prompt_tokens"]
    assert d["examples_quoting_prompt"] == 0 and d["rejected_by_checks"] == 0
    assert d["generation_cost"] == manifest["usage"]["cost"] > 0
    assert d["prices"]["ft_factor"] == 2.0 and d["finetune"]["usd_per_1m"] == 3.00
    expected = break_even(
        d["long_prompt_tokens"], 0, d["generation_cost"], d["finetune"]["cost"], 0.15e-6,
        ft_price_per_input_token=0.30e-6, input_tokens=d["avg_input_tokens"], output_tokens=d["avg_output_tokens"],
        price_per_output_token=0.60e-6, ft_price_per_output_token=1.20e-6)
    assert d["break_even"]["calls"] == pytest.approx(expected.calls, abs=1)  # averages are rounded in the file
    assert d["break_even"]["calls"] > 0
    assert f"{d['tokens_saved_per_call']:,} prompt tokens saved per call" in result.output
    assert f"pays back after {d['break_even']['calls']:,} calls" in result.output
    assert "1 inputs dropped as copies of them" in result.output


def test_answers_quoting_the_prompt_are_reported(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher(parrot="password")).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl"))
        assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / "out/manifest.json").read_text())["distill"]
    assert d["examples_quoting_prompt"] == 1
    assert "warning: 1 examples quote 40+ characters of the long prompt" in result.output


def test_baked_system_message_is_kept_and_counted(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl", "--baked-system",
                                   "Triage the support ticket."))
        assert result.exit_code == 0, result.output
    data = rows(tmp_path / "out/train.jsonl")
    assert all(row["messages"][0] == {"role": "system", "content": "Triage the support ticket."} for row in data)
    d = json.loads((tmp_path / "out/manifest.json").read_text())["distill"]
    assert d["baked_prompt_tokens"] == count_tokens("Triage the support ticket.", "gpt-4o-mini") + 3


def test_answers_failing_checks_are_rejected_and_counted(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher(bad="invoice")).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl", "--check-schema",
                                   "samples/triage_schema.json", "--check-regex", '"priority": "P[1-4]"',
                                   "--max-length", "300", "--allow-shortfall"))  # rejected rows leave cells short
        assert result.exit_code == 0, result.output
    tickets = [r["input"] for r in rows(tmp_path / "samples/triage_inputs.jsonl")]
    bad = sum("invoice" in t for t in tickets if not t.startswith(LEAKY))
    assert bad >= 3
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["categories"]["all"]["rejected_by_checks"] == bad + 1  # the leaky ticket mentions one too
    assert manifest["distill"]["rejected_by_checks"] == bad + 1
    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    assert len(data) == 30 - bad - 1
    assert all(json.loads(row["messages"][-1]["content"])["priority"] == "P3" for row in data)
    assert f"{bad + 1} answers rejected by checks" in result.output


def test_structured_answers_follow_the_schema_and_unparseable_ones_are_retried(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher(bad="invoice")).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl", "--check-schema",
                                   "samples/triage_schema.json", "--structured", "--max-attempts", "2",
                                   "--allow-shortfall"))  # the failed answers leave cells short
        assert result.exit_code == 0, result.output
        schema = json.loads((SAMPLES / "triage_schema.json").read_text())
        assert all(b["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
                   for b in srv.bodies)
        bad = sum("invoice" in r["input"] for r in rows(SAMPLES / "triage_inputs.jsonl"))
        assert srv.count == 30 + bad  # each non-JSON answer was asked once more, then recorded as failed
    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    assert len(data) == 30 - bad
    for row in data:  # stored parsed, written back as canonical JSON
        answer = row["messages"][-1]["content"]
        assert answer == json.dumps(json.loads(answer), ensure_ascii=False)


def test_generated_inputs_fan_out_and_skip_the_prompts_examples(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--generate-inputs", "6", "--describe", "support tickets to a cloud host",
                                   "--axis", "tone=calm,angry"))
        assert result.exit_code == 0, result.output
        lists = [b for b in srv.bodies if b["messages"][0]["role"] == "user"]
        # one list per tone, then one answer per input; the first input copies a prompt example, so
        # a top-up round asks its tone for another list and answers one more input
        assert len(lists) == 3 and srv.count == 3 + 7
        assert "support tickets to a cloud host" in lists[0]["messages"][0]["content"]
    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    meta = rows(tmp_path / "out/metadata.jsonl")
    assert len(data) == 6  # what was asked for: the copy was dropped and replaced
    assert {m["category"] for m in meta} == {"calm", "angry"}
    assert all(row["messages"][0]["content"].startswith("Ticket ") for row in data)
    d = json.loads((tmp_path / "out/manifest.json").read_text())["distill"]
    assert d["leaked_inputs_dropped"] == 1


def test_distill_short_of_its_count_exits_3(tmp_path):
    """The first input copies a prompt example, and every later list holds nothing else: the
    copy is dropped, the top-up round adds nothing, and distill says it is short with exit 3 (it
    exited 0 with 5 examples of the 6 asked for)."""
    copy_samples(tmp_path)
    teacher = triage_teacher()
    lists = itertools.count()

    def stubborn(body: dict) -> str:
        answer = teacher(body)
        if body["messages"][0]["role"] != "system" and next(lists):
            answer = json.dumps([EXAMPLE_INPUT] * len(json.loads(answer)))
        return answer

    with FakeServer(responder=stubborn).running() as srv:
        result = invoke(*base_args(srv, "--generate-inputs", "6", "--describe", "support tickets"))
    assert result.exit_code == 3, result.output
    assert "1 cells are short of their count by 1 examples" in result.output
    assert len(rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")) == 5


def test_prices_unknown_for_the_model_say_so(tmp_path):
    copy_samples(tmp_path)
    (tmp_path / "in.txt").write_text("my bucket is gone\nI cannot log in\n")
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "in.txt", "--price-model", "my-own-model"))
        assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / "out/manifest.json").read_text())["distill"]
    assert d["break_even"] is None and "my-own-model has no per-token price" in d["break_even_note"]
    assert "pass --price-model" in result.output


# ---- bad inputs: one-line errors, nothing paid for is lost ----------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("", "inputs.jsonl: no rows"),
    ('{"input": "a"}\n\n{"input": "b"\n', "inputs.jsonl:3: not valid JSON"),
    ('{"input": "a"}\n{"text": "b"}\n', "inputs.jsonl:2: field 'input' is missing (fields: text)"),
    ('{"input": "a"}\n{"input": "  "}\n', "inputs.jsonl:2: field 'input' is empty"),
])
def test_bad_inputs_file_is_a_one_line_error(tmp_path, content, message):
    copy_samples(tmp_path)
    (tmp_path / "inputs.jsonl").write_text(content)
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "inputs.jsonl"))
        assert srv.count == 0
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}") and result.output.count("\n") == 1


def test_undefined_prompt_variable_names_the_prompt_file_and_line(tmp_path):
    (tmp_path / "prompt.md").write_text("You triage tickets.\nThe product is {{ product }}.\nAnswer in JSON.\n")
    (tmp_path / "in.txt").write_text("help\n")
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke("distill", "--prompt", "prompt.md", "--inputs", "in.txt", "--out", "out",
                        "--base-url", srv.base_url, "--model", "gpt-4o-mini", "-q")
        assert srv.count == 0
    assert result.exit_code == 2
    assert result.output.strip() == "Error: prompt.md:2: 'product' is undefined"
    # the same prompt with the variable given per input, or by a one-value axis, works
    (tmp_path / "in.jsonl").write_text('{"input": "help", "product": "Northwind DB"}\n')
    with FakeServer(responder=triage_teacher()).running() as srv:
        for extra in (["--inputs", "in.jsonl"], ["--inputs", "in.txt", "--axis", "product=Northwind DB"]):
            result = invoke("distill", "--prompt", "prompt.md", "--out", "out", "--base-url", srv.base_url,
                            "--model", "gpt-4o-mini", "-q", *extra)
            assert result.exit_code == 0, result.output
        assert srv.bodies[0]["messages"][0]["content"].endswith("The product is Northwind DB.\nAnswer in JSON.")


def test_generated_inputs_check_the_prompt_before_paying(tmp_path):
    (tmp_path / "prompt.md").write_text("Rules.\n{% if strict %}Be strict.{% endif %}\n")
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke("distill", "--prompt", "prompt.md", "--generate-inputs", "3", "--describe", "tickets",
                        "--out", "out", "--base-url", srv.base_url, "--model", "gpt-4o-mini", "-q")
        assert srv.count == 0  # not even the inputs were asked for
    assert result.exit_code == 2 and "prompt.md:2: 'strict' is undefined" in result.output


def test_broken_inputs_lose_nothing_and_the_fixed_rerun_sends_only_new_inputs(tmp_path):
    copy_samples(tmp_path)
    tickets = [json.dumps({"input": t}) for t in ("my bucket is gone", "I cannot log in", "refund please")]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(tickets) + "\n")
    with FakeServer(responder=triage_teacher()).running() as srv:
        assert invoke(*base_args(srv, "--inputs", "inputs.jsonl")).exit_code == 0
        assert srv.count == 3
        inputs.write_text("\n".join(tickets) + '\n{"input": "broken\n')
        result = invoke(*base_args(srv, "--inputs", "inputs.jsonl"))
        assert result.exit_code == 2 and result.output.startswith("Error: inputs.jsonl:4: not valid JSON")
        with sqlite3.connect(tmp_path / "out/promptbake.db") as con:
            assert con.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0] == 3
        inputs.write_text("\n".join(tickets) + '\n{"input": "my invoice is wrong"}\n')
        result = invoke(*base_args(srv, "--inputs", "inputs.jsonl"))
        assert result.exit_code == 0, result.output
        assert srv.count == 4  # only the new ticket was sent
    assert len(rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")) == 4


def test_inputs_and_generate_inputs_are_exclusive(tmp_path):
    copy_samples(tmp_path)
    with pytest.raises(InputError, match="not both"):
        distill_spec("samples/triage_prompt.md", "samples/triage_inputs.jsonl", generate_inputs=3)
    with pytest.raises(InputError, match="needs describe="):
        distill_spec("samples/triage_prompt.md", generate_inputs=3)
    result = invoke("distill", "--prompt", "samples/triage_prompt.md", "--generate-inputs", "3", "--describe", "x",
                    "--axis", "tone", "--out", "out")
    assert result.exit_code == 2 and "--axis 'tone': write it as name=value1,value2" in result.output


def test_many_generated_inputs_are_asked_for_in_batches(tmp_path):
    copy_samples(tmp_path)
    spec = distill_spec("samples/triage_prompt.md", generate_inputs=50, describe="tickets",
                        axes={"tone": ["calm", "angry"]})
    # 50 inputs over 2 tones: 2 batches per tone, of 13 and 12, so no request asks for more than 20
    assert spec.grid.axes == {"description": ["tickets"], "tone": ["calm", "angry"], "batch": [1, 2]}
    assert spec.grid.count == 13 and spec.max_rounds == 3
    assert sorted(c.count for c in Expander(spec).cells()) == [12, 12, 13, 13]
    # exactly what was asked for: 500 is 500 (it was 520), not rounded up per batch
    for wanted, tones in ((500, ["calm", "angry"]), (500, ["calm"]), (37, ["a", "b", "c", "d"][:1]), (999, ["x"])):
        big = distill_spec("samples/triage_prompt.md", generate_inputs=wanted, describe="tickets",
                           axes={"tone": tones})
        counts = [c.count for c in Expander(big).cells()]
        assert sum(counts) == wanted and max(counts) <= 20, (wanted, counts)
    with pytest.raises(InputError, match=r"generate_inputs=501: the 2 combinations .* multiple of 2 \(such as 502\)"):
        distill_spec("samples/triage_prompt.md", generate_inputs=501, describe="tickets",
                     axes={"tone": ["calm", "angry"]})
    content = spec.steps[0].messages[0].content
    assert "{{ batch }}" in content and "- tone: {{ tone }}" in content
    small = distill_spec("samples/triage_prompt.md", generate_inputs=6, describe="tickets")
    assert small.grid.axes == {"description": ["tickets"]} and small.grid.count == 6
    assert "batch" not in small.steps[0].messages[0].content


# ---- the hand-written spec ------------------------------------------------------------------


def test_generator_spec_runs_the_same_distillation(tmp_path):
    copy_samples(tmp_path)
    shutil.copytree(ROOT / "generators", tmp_path / "generators")
    spec = tmp_path / "generators/distill_triage.yaml"
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke("run", spec, "--out", "out", "--base-url", srv.base_url, "-q")
        assert result.exit_code == 0, result.output
        assert srv.count == 30
        assert all(b["messages"][0]["content"] == rendered_prompt() for b in srv.bodies)
    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    assert len(data) == 30
    assert all(row["messages"][0] == {"role": "system", "content": "Triage the support ticket."} for row in data)


def test_generator_spec_schema_matches_the_sample_schema_file():
    import yaml

    spec = yaml.safe_load((ROOT / "generators/distill_triage.yaml").read_text())
    assert spec["example"]["checks"]["schema"] == json.loads((SAMPLES / "triage_schema.json").read_text())


def test_sample_inputs_are_realistic_and_the_prompt_long_enough():
    tickets = rows(SAMPLES / "triage_inputs.jsonl")
    assert len(tickets) == 30 and all(t["input"].strip() for t in tickets)
    assert count_tokens(Templates.for_spec_dir(ROOT).render("samples/triage_prompt.md", {}), "gpt-4o-mini") >= 1500


# ---- the real local teacher (slow) ----------------------------------------------------------


@pytest.mark.local_model
def test_tiny_distillation_on_the_local_teacher(tmp_path):
    from promptbake.errors import TeacherError
    from promptbake.teacher import local

    try:
        local.check_server_installed()
        local.gguf_path()
    except TeacherError as exc:
        pytest.skip(str(exc))
    # A task SmolLM2-135M can do at temperature 0 on either local engine (asked for one word, it writes
    # code until max_tokens cuts it off).
    (tmp_path / "prompt.md").write_text(
        "You are a support agent for {{ company | default('Acme') }}. Reply to the customer in one short, "
        "friendly sentence.\n\n<example>\n<input>I was charged twice</input>\n<output>Sorry about that, we will "
        "refund the extra charge today.</output>\n</example>\n")
    (tmp_path / "in.txt").write_text("My card was charged two times this month\nI forgot my password\n"
                                     "Where is your office?\n")
    result = invoke("distill", "--prompt", "prompt.md", "--inputs", "in.txt", "--out", "out", "--teacher", "local",
                    "--max-tokens", "120", "--temperature", "0", "--max-attempts", "2", "--baked-system",
                    "Reply to the customer.", "-q")
    assert result.exit_code == 0, result.output
    data = rows(tmp_path / "out/train.jsonl") + rows(tmp_path / "out/test.jsonl")
    assert len(data) == 3
    for row in data:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == "Reply to the customer." and row["messages"][2]["content"].strip()
    d = json.loads((tmp_path / "out/manifest.json").read_text())["distill"]
    assert d["prompt_examples"] == 1 and d["generation_cost"] == 0
    assert d["break_even"] is None and "smollm2" in d["break_even_note"]


def test_a_several_valued_axis_with_an_inputs_file_is_refused_before_paying(tmp_path):
    copy_samples(tmp_path)
    with FakeServer(responder=triage_teacher()).running() as srv:
        result = invoke(*base_args(srv, "--inputs", "samples/triage_inputs.jsonl", "--axis", "tone=calm,angry"))
        assert srv.count == 0
    assert result.exit_code == 2, result.output
    assert "--axis tone has 2 values" in result.output and "baked away" in result.output
    assert not (tmp_path / "out" / "promptbake.db").exists()
