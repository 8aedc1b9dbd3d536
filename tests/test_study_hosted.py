"""``promptbake study --provider P --model BASE`` (issue 26): a student per size (and seed)
fine-tuned at a hosted provider through ``train --provider``'s code, each fine-tune then answering
through the teacher's server like a ``--trained`` model, size 0 being the base model.

The provider is the loopback stand-in of its files and jobs API (tests/fakeprovider.py), the
teacher the loopback OpenAI server (tests/fakeserver.py), which answers every model it is asked
for, the fine-tuned ids included. Nothing here trains or serves a model on this machine."""

from __future__ import annotations

import json
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeprovider import FakeJob, FakeProvider
from fakeserver import FakeServer
from helpers import STUDY_SPEC, study_respond

from promptbake.cli.main import cli
from promptbake.output import curves

BASE = "gpt-4o-mini-2024-07-18"
KEY = "sk-study-hosted-7d2e91"
# test_study.py's tiny task: four colours × five questions, four of them the test split, sixteen to
# train on (OpenAI takes a training file of at least ten examples: sizes 10 and 16)
@pytest.fixture(autouse=True)
def _spec_and_keys(tmp_path, monkeypatch):
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(STUDY_SPEC), encoding="utf-8")
    for name in ("OPENAI", "TOGETHER", "FIREWORKS"):
        monkeypatch.setenv(f"{name}_API_KEY", KEY)
        monkeypatch.delenv(f"{name}_BASE_URL", raising=False)


def study(server: FakeServer, provider: FakeProvider, *extra: str, sizes: str = "0,10,16",
          model: str = BASE) -> Any:
    args = ["study", "spec.yaml", "--sizes", sizes, "--out", "s", "--dataset", "d", "--provider", provider.kind,
            "--model", model, "--provider-base-url", provider.base_url, "--base-url", server.base_url,
            "--poll", "0.05", "-q", *extra]
    return CliRunner().invoke(cli, args)


def build(server: FakeServer) -> None:
    """The dataset, as `promptbake run` builds it (a dry run prices subsets of a built dataset)."""
    result = CliRunner().invoke(cli, ["run", "spec.yaml", "--out", "d", "--base-url", server.base_url, "-q"])
    assert result.exit_code == 0, result.output


def students(root: Path) -> dict[tuple[Any, Any], dict]:
    lines = curves.read_study(root / "s" / "study.jsonl")
    return {(line["kind"], line["size"], line["seed"]): line for line in lines if line["category"] == curves.ALL}


def asked(server: FakeServer) -> Counter[str]:
    return Counter(body["model"] for body in server.bodies)


def test_one_job_per_size_the_fine_tunes_answer_and_a_rerun_repeats_nothing(tmp_path):
    with FakeServer(responder=study_respond).running() as server, FakeProvider("openai").running() as provider:
        result = study(server, provider)
        assert result.exit_code == 0, result.output
        jobs = sorted(provider.jobs.values(), key=lambda j: j.suffix or "")
        assert [j.suffix for j in jobs] == ["n10-s0", "n16-s0"] and len(provider.uploads) == 2
        assert all(j.model == BASE for j in jobs)
        tuned = {10: provider.model_id(jobs[0]), 16: provider.model_id(jobs[1])}
        # each job trained on its size's nested subset: the bytes of the study's subset file
        for size, job in zip((10, 16), jobs, strict=True):
            sent = provider.contents[job.training_file].decode().splitlines()
            subset = (tmp_path / "s" / "subsets" / f"size-{size}" / "train.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in sent] == [json.loads(line) for line in subset]
            assert len(sent) == size
        models = asked(server)
        assert models[tuned[10]] == models[tuned[16]] == 4  # the four test prompts each
        assert models[BASE] == 4 + 4  # size 0 and the prompted row: the base model
        seen = (len(server.bodies), len(provider.uploads), len(provider.jobs), [j.polls for j in jobs])

        again = study(server, provider)
        assert again.exit_code == 0, again.output
        assert (len(server.bodies), len(provider.uploads), len(provider.jobs), [j.polls for j in jobs]) == seen
    lines = students(tmp_path)
    for size, job in zip((10, 16), jobs, strict=True):
        line = lines[("student", size, 0)]
        assert line["model"] == tuned[size] and line["metrics"]["keys"] == 1.0
        assert line["train"]["provider"] == "openai" and line["train"]["base_model"] == BASE
        assert line["train"]["job_id"] == job.id and line["train"]["examples"] == size
        assert line["train"]["estimated_cost"] > 0 and line["train"]["trained_tokens"] == 1234
    assert lines[("student", 0, None)]["model"] == BASE and lines[("prompted", None, None)]["model"] == BASE
    assert "this run: 2 students trained, 0 found trained (at openai: 2 files uploaded, 2 jobs launched)" \
        in result.output
    assert "this run: 0 students trained, 2 found trained (at openai: 0 files uploaded, 0 jobs launched)" \
        in again.output and "0 sent" in again.output
    record = json.loads((tmp_path / "s" / "study.json").read_text())
    assert record["hosted"]["provider"] == "openai" and record["hosted"]["model"] == BASE
    assert KEY not in (tmp_path / "s" / "study.json").read_text() + result.output


def test_each_seed_is_a_job_of_its_own_on_one_upload(tmp_path):
    with FakeServer(responder=study_respond).running() as server, FakeProvider("together").running() as provider:
        result = study(server, provider, "--seeds", "2", "--price", "0.5", sizes="0,6",
                       model="meta-llama/Llama-3.2-1B-Instruct")
        assert result.exit_code == 0, result.output
        assert sorted(j.suffix or "" for j in provider.jobs.values()) == ["n6-s0", "n6-s1"]
        assert len(provider.uploads) == 1  # the same subset: uploaded once, trained twice
    lines = students(tmp_path)
    assert {key for key in lines if key[0] == "student"} == {("student", 0, None), ("student", 6, 0),
                                                             ("student", 6, 1)}
    assert lines[("student", 6, 0)]["model"] != lines[("student", 6, 1)]["model"]


def test_the_dry_run_prices_the_training_and_the_answers_and_uploads_nothing(tmp_path):
    with FakeServer(responder=study_respond).running() as server, FakeProvider("openai").running() as provider:
        build(server)
        before = len(server.bodies)
        result = study(server, provider, "--dry-run")
        assert result.exit_code == 0, result.output
        assert provider.uploads == [] and provider.jobs == {} and provider.upload_attempts == 0
        assert len(server.bodies) == before
    out = result.output
    # the price is train --provider --dry-run's: billed tokens × epochs × OpenAI's list price
    for size in (10, 16):
        assert re.search(rf"size {size} seed 0: fine-tune {BASE} at openai: {size} examples: "
                         r"[\d,]+ tokens per epoch x \d+ epochs = [\d,]+ billed tokens; estimated cost \$\d+\.\d\d "
                         rf"at \$[\d.]+ per 1M tokens \(openai's list price for {BASE}\); then 4 answers, ≤ \$",
                         out), out
    assert f"size 0: {BASE}, 4 answers" in out
    assert re.search(r"hosted training: 2 jobs to launch, [\d,]+ billed tokens, estimated \$\d+\.\d\d", out), out
    # size 0, prompted, 10 and 16: 4 answers each, all at the teacher's server: no time on this machine
    assert "total: 2 students to train, 16 requests to send, ~0 s on this machine" in out
    assert not (tmp_path / "s").exists()  # nothing written


def test_max_cost_refuses_before_anything_is_uploaded_or_asked(tmp_path):
    with FakeServer(responder=study_respond).running() as server, FakeProvider("openai").running() as provider:
        build(server)
        before = len(server.bodies)
        over = study(server, provider, "--max-cost", "0.000001")
        plan = study(server, provider, "--max-cost", "0.000001", "--dry-run")
        assert provider.upload_attempts == 0 and provider.jobs == {} and len(server.bodies) == before
    with FakeServer(responder=study_respond).running() as server, FakeProvider("together").running() as provider:
        unknown = study(server, provider, "--max-cost", "5", model="meta-llama/Llama-3.2-1B-Instruct")
        assert provider.upload_attempts == 0 and provider.jobs == {}
    assert over.exit_code == 1 and "Traceback" not in over.output
    assert re.search(r"Error: --max-cost 1e-06: the 2 jobs are estimated at \$[\d.]+ \([\d,]+ billed tokens\); "
                     "nothing was uploaded", over.output), over.output
    assert plan.exit_code == 1 and "hosted training: 2 jobs to launch" in plan.output
    assert "Error: --max-cost 1e-06: the 2 jobs are estimated at" in plan.output
    assert unknown.exit_code == 1 and "Error: --max-cost 5.0: the training price is unknown" in unknown.output


class FailingAt16(FakeProvider):
    """The job of size 16 fails; the others succeed."""

    def _new_job(self, body: dict[str, Any], model: str, training_file: str, validation_file: str | None,
                 epochs: int | None, suffix: str | None, job_id: str | None = None) -> FakeJob:
        job = super()._new_job(body, model, training_file, validation_file, epochs, suffix, job_id)
        if suffix == "n16-s0":
            job.states = ["queued", "running", "failed"]
        return job


def test_a_failed_job_is_one_line_and_exit_1_and_the_other_sizes_are_kept(tmp_path):
    with FakeServer(responder=study_respond).running() as server, FailingAt16("openai").running() as provider:
        result = study(server, provider)
        again = study(server, provider)
        assert len(provider.jobs) == 2 and len(provider.uploads) == 2  # the re-run launched nothing
        plan = study(server, provider, "--dry-run")
        retried = study(server, provider, "--new-job")
        assert len(provider.jobs) == 3 and len(provider.uploads) == 2  # size 16 again, on its upload
    assert plan.exit_code == 0 and "total: 0 students to train, 0 requests to send" in plan.output
    assert re.search(r"size 16 seed 0: openai job ftjob-\d+ failed: The job failed: loss diverged at step 12; not "
                     r"studied \(--new-job launches another\)", plan.output), plan.output
    assert retried.exit_code == 1 and "(at openai: 0 files uploaded, 1 job launched)" in retried.output
    for run in (result, again):
        assert run.exit_code == 1 and "Traceback" not in run.output
        assert run.output.count("loss diverged at step 12") == 1, run.output
        assert re.search(r"size 16 seed 0: not studied: openai job ftjob-\d+ failed: The job failed: loss diverged",
                         run.output), run.output
        assert run.output.rstrip().splitlines()[-1].startswith("Error: size 16 seed 0: not studied")
    lines = students(tmp_path)
    assert {key for key in lines if key[0] == "student"} == {("student", 0, None), ("student", 10, 0)}
    assert lines[("student", 10, 0)]["model"].startswith(f"ft:{BASE}:")


def test_local_only_and_hosted_only_options_are_refused_by_name(tmp_path):
    hosted = CliRunner().invoke(cli, ["study", "spec.yaml", "--sizes", "0,10", "--provider", "openai", "--model",
                                      BASE, "--lora", "--batch-size", "2"])
    assert hosted.exit_code == 2 and "--batch-size, --lora: not an option for training with --provider" \
        in hosted.output
    local = CliRunner().invoke(cli, ["study", "spec.yaml", "--sizes", "0,10", "--price", "3"])
    assert local.exit_code == 2 and "--price: not an option for training on this machine" in local.output
    bare = CliRunner().invoke(cli, ["study", "spec.yaml", "--sizes", "0,10", "--provider", "openai"])
    assert bare.exit_code == 2 and "--provider needs --model BASE" in bare.output
    halves = CliRunner().invoke(cli, ["study", "spec.yaml", "--sizes", "0,10", "--provider", "openai", "--model",
                                      BASE, "--epochs", "1.5"])
    assert halves.exit_code == 2 and "--epochs 1.5: a hosted job trains whole epochs" in halves.output
