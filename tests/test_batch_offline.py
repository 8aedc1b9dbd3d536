"""Offline batch files: `batch export` writes the next step's pending requests, a stand-in for
vLLM's run_batch answers them in its exact output shape, `batch import` stores the answers; step
by step, the store ends where an online run ends."""

from __future__ import annotations

import filecmp
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml
from click.testing import CliRunner
from fakeserver import FakeServer, estimate_prompt_tokens
from helpers import MINIMAL_SPEC, list_then_reply_responder, pure_grid_responder, write_spec

import promptbake
from promptbake.cli.main import cli

FILES = ["train.jsonl", "test.jsonl", "metadata.jsonl", "dropped.jsonl"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def vllm_run_batch(inputs: list[Path], output: Path, answer: Callable[[dict], str],
                   fail: Callable[[dict], bool] = lambda line: False) -> None:
    """What ``python -m vllm.entrypoints.openai.run_batch -i IN -o OUT`` writes: one
    BatchRequestOutput per input line, in input order, a ChatCompletionResponse dumped with all of
    vLLM's fields, and a failure as status 400 with no body and the message in ``error``."""
    with output.open("w", encoding="utf-8") as out:
        for path in inputs:
            for text in path.read_text(encoding="utf-8").splitlines():
                line = json.loads(text)
                assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
                record: dict = {"id": f"vllm-{uuid.uuid4().hex}", "custom_id": line["custom_id"]}
                request_id = f"vllm-batch-{uuid.uuid4().hex}"
                if fail(line):
                    record["response"] = {"status_code": 400, "request_id": request_id, "body": None}
                    record["error"] = "This model's maximum context length is 2048 tokens."
                else:
                    body = line["body"]
                    content = answer(body)
                    prompt, completion = estimate_prompt_tokens(body), len(content.split())
                    record["response"] = {"status_code": 200, "request_id": request_id, "body": {
                        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": 1767225600,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": {
                            "role": "assistant", "content": content, "refusal": None, "annotations": None,
                            "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
                            "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
                        "service_tier": None, "system_fingerprint": None,
                        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                                  "completion_tokens": completion, "prompt_tokens_details": None},
                        "prompt_logprobs": None, "kv_transfer_params": None}}
                    record["error"] = None
                out.write(json.dumps(record) + "\n")


def attempts(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]


def export_until_done(tmp_path: Path, spec: str, answer: Callable[[dict], str], most: int) -> list[str]:
    """``batch export`` / run_batch / ``batch import`` into ``s.db`` until the export says there is
    nothing left (at most ``most`` times); returns what each export wrote ("round R step S")."""
    steps = []
    for n in range(most):
        result = invoke("batch", "export", spec, "--store", "s.db", "--out", f"in{n}")
        assert result.exit_code == 0, result.output
        if "nothing left to generate" in result.output:
            return steps
        steps.append(result.output.split(":")[0])
        vllm_run_batch(sorted((tmp_path / f"in{n}").glob("*.jsonl")), tmp_path / f"out{n}.jsonl", answer)
        imported = invoke("batch", "import", "s.db", f"out{n}.jsonl")
        assert imported.exit_code == 0, imported.output
    return steps


def test_export_run_batch_import_step_by_step_builds_what_online_builds(tmp_path):
    spec = str(write_spec(tmp_path))
    answer = pure_grid_responder()
    first_seen: set[str] = set()

    def fail_once(line: dict) -> bool:  # one request fails on its first run, as a GPU job might
        if line["custom_id"] in first_seen or first_seen:
            return False
        first_seen.add(line["custom_id"])
        return True

    exported = []
    for n in range(10):
        result = invoke("batch", "export", spec, "--store", "s.db", "--out", f"in{n}")
        assert result.exit_code == 0, result.output
        if "nothing left to generate" in result.output:
            break
        inputs = sorted((tmp_path / f"in{n}").glob("*.jsonl"))
        exported.append((result.output.split(":")[0], sum(len(p.read_text().splitlines()) for p in inputs)))
        vllm_run_batch(inputs, tmp_path / f"out{n}.jsonl", answer, fail_once)
        result = invoke("batch", "import", "s.db", f"out{n}.jsonl")
        assert result.exit_code == 0, result.output
    assert exported == [("round 0 step ask", 4), ("round 0 step ask", 1), ("round 0 step answer", 8)]
    assert "build the dataset with `promptbake build s.db --out DIR`" in result.output
    result = invoke("build", "s.db", "--out", "offline")
    assert result.exit_code == 0, result.output

    with FakeServer(responder=pure_grid_responder()).running() as srv:
        online = invoke("run", spec, "--out", "online", "--base-url", srv.base_url, "-q")
        assert online.exit_code == 0, online.output
    for name in FILES:
        assert filecmp.cmp(tmp_path / "online" / name, tmp_path / "offline" / name, shallow=False), name


def test_python_api_runs_a_spec_through_batch_files_step_by_step(tmp_path):
    """``promptbake.export_batch`` / ``import_batch``, the loop the commands run, with a spec built
    in Python: the reports say which step was written, in which files, and what was stored."""
    spec = yaml.safe_load(MINIMAL_SPEC)
    teacher = promptbake.Teacher(model="Qwen/Qwen3-8B")
    steps = []
    for n in range(10):
        exported = promptbake.export_batch(spec, "s.db", f"in{n}", teacher=teacher, max_lines=3)
        if exported.step is None:
            break
        steps.append((exported.round, exported.step, exported.requests, [lines for _, lines in exported.files]))
        vllm_run_batch([path for path, _ in exported.files], tmp_path / f"out{n}.jsonl", pure_grid_responder())
        imported = promptbake.import_batch("s.db", tmp_path / f"out{n}.jsonl")
        assert (imported.lines, imported.ok, imported.failed, imported.already) == (exported.requests,) * 2 + (0, 0)
    assert steps == [(0, "ask", 4, [3, 1]), (0, "answer", 8, [3, 3, 2])]
    assert promptbake.import_batch("s.db", [tmp_path / "out0.jsonl"]).already == 4  # nothing stored twice
    assert len(promptbake.build("s.db", "built").train) == 6


def test_export_splits_files_and_writes_each_distinct_request_once(tmp_path):
    spec = str(write_spec(tmp_path))
    model = ("--model", "Qwen/Qwen3-8B")  # the name the vLLM fleet serves
    assert invoke("batch", "export", spec, "--store", "s.db", "--out", "in", *model).exit_code == 0
    vllm_run_batch(sorted((tmp_path / "in").glob("*.jsonl")), tmp_path / "out.jsonl", pure_grid_responder())
    assert invoke("batch", "import", "s.db", "out.jsonl").exit_code == 0
    assert invoke("batch", "export", spec, "--store", "s.db", "--out", "in", *model).exit_code == 0
    assert [p.name for p in (tmp_path / "in").glob("mini.round0.answer.*")] == ["mini.round0.answer.001.jsonl"]
    result = invoke("batch", "export", spec, "--store", "s.db", "--out", "in", "--batch-max-lines", "3", *model)
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "in").glob("mini.round0.answer.*.jsonl"))  # the 8-line file is replaced
    lines = [json.loads(t) for p in files for t in p.read_text().splitlines()]
    assert [len(p.read_text().splitlines()) for p in files] == [3, 3, 2]
    assert len({line["custom_id"] for line in lines}) == 8
    assert {line["body"]["model"] for line in lines} == {"Qwen/Qwen3-8B"}


def test_import_reports_the_store_state_and_never_stores_twice(tmp_path):
    spec = str(write_spec(tmp_path))
    invoke("batch", "export", spec, "--store", "s.db", "--out", "in")
    vllm_run_batch(sorted((tmp_path / "in").glob("*.jsonl")), tmp_path / "out.jsonl", pure_grid_responder(),
                   fail=lambda line: line["body"]["messages"][0]["content"].endswith("at the gym."))
    first = invoke("batch", "import", "s.db", "out.jsonl")
    assert first.exit_code == 0, first.output
    assert "imported 4 answers: 2 ok, 2 failed" in first.output
    with sqlite3.connect(tmp_path / "s.db") as con:
        errors = {e for (e,) in con.execute("SELECT error FROM requests WHERE status = 'failed'")}
    assert errors == {"This model's maximum context length is 2048 tokens."}
    stored = attempts(tmp_path / "s.db")
    again = invoke("batch", "import", "s.db", "out.jsonl")
    assert again.exit_code == 0, again.output
    assert "2 already stored" in again.output
    assert attempts(tmp_path / "s.db") == stored + 2  # only the two failures were taken again


def test_import_names_a_broken_line_and_stores_nothing_of_its_file(tmp_path):
    spec = str(write_spec(tmp_path))
    invoke("batch", "export", spec, "--store", "s.db", "--out", "in")
    vllm_run_batch(sorted((tmp_path / "in").glob("*.jsonl")), tmp_path / "out.jsonl", pure_grid_responder())
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    (tmp_path / "broken.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    result = invoke("batch", "import", "s.db", "broken.jsonl")
    assert result.exit_code == 2
    assert result.output.startswith("Error: broken.jsonl:2: not a batch output line"), result.output
    assert attempts(tmp_path / "s.db") == 0
    (tmp_path / "other.jsonl").write_text(lines[0].replace(json.loads(lines[0])["custom_id"], "x" * 32) + "\n")
    result = invoke("batch", "import", "s.db", "other.jsonl")
    assert result.exit_code == 2
    assert "none of its answers match a request in s.db" in result.output


def test_export_writes_top_up_rounds_for_cells_left_short(tmp_path):
    """Duplicates leave cells short after round 0: the next export is round 1's first step, and
    the loop ends with every cell at its count, as `run` would."""
    spec = str(write_spec(tmp_path, MINIMAL_SPEC.replace("  count: 2", "  count: 6")))
    steps = export_until_done(tmp_path, spec, list_then_reply_responder(dupe_every=4), 12)
    assert steps[:3] == ["round 0 step ask", "round 0 step answer", "round 1 step ask"], steps
    result = invoke("build", "s.db", "--out", "out")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["train"] + manifest["test"] == 24


JUDGED = MINIMAL_SPEC + """
judge:
  criteria: "The reply is rude."
  min_score: 4
"""


def judging_responder() -> Callable[[dict], str]:
    """The pure grid teacher, and a judge that rates every reply 5."""
    grid = pure_grid_responder()

    def respond(body: dict) -> str:
        if "strict judge" in (body["messages"][0].get("content") or ""):
            return json.dumps({"reasoning": "rude enough", "score": 5})
        return grid(body)

    return respond


def test_export_and_import_carry_the_judge_step(tmp_path):
    """A spec with a judge: after the answers, the next export is the judge's requests, and the
    built set holds every example with its verdict (no 'judge: no verdict' drops, no top-up)."""
    steps = export_until_done(tmp_path, str(write_spec(tmp_path, JUDGED)), judging_responder(), 8)
    assert steps == ["round 0 step ask", "round 0 step answer", "round 0 step judge"]
    result = invoke("build", "s.db", "--out", "out")
    assert result.exit_code == 0, result.output
    meta = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 8 and all(m["scores"] == {"judge": 5} for m in meta)
