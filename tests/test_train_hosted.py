"""`promptbake train DIR --provider P`: hosted fine-tuning through each provider's own SDK, against a
loopback stand-in speaking that provider's files and jobs API (tests/fakeprovider.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeprovider import FakeProvider

import promptbake
from promptbake.cli import cli

SRC = Path(__file__).resolve().parent.parent / "src"
KEY = "sk-train-secret-4f1c2b9e"
MODELS = {
    "openai": "gpt-4o-mini-2024-07-18",
    "together": "meta-llama/Llama-3.2-1B-Instruct",
    "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
}
PROVIDERS = list(MODELS)


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    for name in ("OPENAI", "TOGETHER", "FIREWORKS"):
        monkeypatch.setenv(f"{name}_API_KEY", KEY)
        monkeypatch.delenv(f"{name}_BASE_URL", raising=False)
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID", raising=False)


def example(i: int, system: str = "Answer rudely.") -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"Where is order {i}?"},
                         {"role": "assistant", "content": f"Order {i} is late. Deal with it."}]}


def write_dataset(directory: Path, train: int = 12, test: int = 3, rows: list[dict] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = rows if rows is not None else [example(i) for i in range(train)]
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (directory / "test.jsonl").write_text("".join(json.dumps(example(1000 + i)) + "\n" for i in range(test)),
                                          encoding="utf-8")
    return directory


def train_args(srv: FakeProvider, *extra: str, directory: str = "ds") -> list[str]:
    return ["train", directory, "--provider", srv.kind, "--model", MODELS[srv.kind], "--base-url", srv.base_url,
            "--account", srv.account, "--poll", "0.05", *extra]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def error_line(result) -> str:
    """The one line a failing command prints after its progress lines."""
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def stored_jobs(directory: Path) -> list[tuple]:
    with sqlite3.connect(directory / "promptbake.db") as con:
        return con.execute("SELECT train_file_id, job_id, status FROM train_jobs ORDER BY id").fetchall()


# --- success -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_job_goes_queued_running_succeeded_and_train_json_holds_the_model(tmp_path, provider):
    ds = write_dataset(tmp_path / "ds")
    with FakeProvider(provider).running() as srv:
        result = invoke(*train_args(srv))
        assert result.exit_code == 0, result.output
        job = next(iter(srv.jobs.values()))
        model = srv.model_id(job)
        assert len(srv.uploads) == 1 and len(srv.jobs) == 1
        assert job.polls >= 2  # it was followed through running to the end
    assert result.stdout.strip() == model  # stdout is data: the fine-tuned model id
    for state in ("queued", "running", "succeeded"):
        assert f"job {job.id}: {state}" in result.stderr
    written = json.loads((ds / "train.json").read_text())
    assert written["model"] == model and written["provider"] == provider and written["job_id"] == job.id
    assert written["base_model"] == MODELS[provider] and written["train_file"] == "train.jsonl"
    # the uploaded bytes are the exporter's openai-chat lines of train.jsonl
    uploaded = srv.contents[srv.uploads[0]].decode().splitlines()
    assert [json.loads(line) for line in uploaded] == [example(i) for i in range(12)]
    assert stored_jobs(ds) == [(srv.uploads[0], job.id, "succeeded")]


def test_python_api_trains_and_reports_status(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    lines: list[str] = []
    with FakeProvider("together").running() as srv:
        result = promptbake.train_hosted(ds, provider="together", model=MODELS["together"], base_url=srv.base_url,
                                         epochs=2, price=0.5, poll=0.05, echo=lines.append)
        job = next(iter(srv.jobs.values()))
        assert job.epochs == 2 and srv.created[0]["n_epochs"] == 2
    assert result.created and not result.reattached and result.uploaded == 1
    assert result.job is not None and result.job.fine_tuned_model == srv.model_id(job)
    estimate = result.plan.estimate
    assert estimate.epochs == 2 and estimate.billed_tokens == 2 * estimate.tokens_per_epoch
    assert estimate.cost == pytest.approx(estimate.billed_tokens * 0.5 / 1e6)
    assert any("estimated cost $" in line and "--price" in line for line in lines)
    [status] = promptbake.train_status(ds, refresh=False)
    assert (status.status, status.job_id, status.raw_status) == ("succeeded", job.id, "completed")


def test_latest_train_version_is_the_one_uploaded(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    (ds / "train.v2.jsonl").write_text("".join(json.dumps(example(i)) + "\n" for i in range(20)), encoding="utf-8")
    (ds / "manifest.json").write_text(json.dumps({"topups": [{"train": "train.v2.jsonl"}]}), encoding="utf-8")
    with FakeProvider("fireworks").running() as srv:
        result = invoke(*train_args(srv))
        assert result.exit_code == 0, result.output
        assert len(srv.contents[srv.uploads[0]].decode().splitlines()) == 20
    assert json.loads((ds / "train.json").read_text())["train_file"] == "train.v2.jsonl"


# --- failure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failed_job_shows_the_providers_error_in_one_line(tmp_path, provider):
    write_dataset(tmp_path / "ds")
    with FakeProvider(provider, states=["queued", "running", "failed"]).running() as srv:
        result = invoke(*train_args(srv))
        assert result.exit_code == 1, result.output
        job_id = next(iter(srv.jobs))
        line = error_line(result)
        assert f"{provider} job {job_id} failed: The job failed: loss diverged at step 12" in line
        assert not (tmp_path / "ds" / "train.json").exists()

        again = invoke(*train_args(srv))  # the same command does not launch the same failure again
        assert again.exit_code == 1 and "--new-job" in error_line(again)
        assert len(srv.jobs) == 1

        srv.states = ["queued", "succeeded"]
        retried = invoke(*train_args(srv, "--new-job"))
        assert retried.exit_code == 0, retried.output
        assert len(srv.jobs) == 2 and len(srv.uploads) == 1  # a second job on the one upload
    assert json.loads((tmp_path / "ds" / "train.json").read_text())["job_id"] == list(srv.jobs)[1]


# --- a job that stays queued: status, re-attach, cancel ------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_queued_job_status_reattach_and_cancel(tmp_path, provider):
    write_dataset(tmp_path / "ds")
    with FakeProvider(provider, states=["queued"]).running() as srv:
        first = invoke(*train_args(srv, "--no-wait"))
        assert first.exit_code == 0, first.output
        job_id = next(iter(srv.jobs))
        assert "train status" in first.stderr and first.stdout == ""

        status = invoke("train", "status", "ds")
        assert status.exit_code == 0, status.output
        _, row = status.stdout.strip().splitlines()
        listed, listed_provider, state = row.split("\t")[:3]
        assert (listed, listed_provider) == (job_id, provider) and state.startswith("queued")

        again = invoke(*train_args(srv, "--no-wait"))
        assert again.exit_code == 0, again.output
        assert "re-attaching" in again.stderr and f"re-attached to {provider} job {job_id}" in again.stderr
        assert len(srv.uploads) == 1 and len(srv.jobs) == 1 and srv.upload_attempts == 1

        cancelled = invoke("train", "cancel", "ds")
        assert cancelled.exit_code == 0, cancelled.output
        assert f"{job_id}: cancelled" in cancelled.stderr
        assert srv.jobs[job_id].cancelled
    assert stored_jobs(tmp_path / "ds")[0][2] == "cancelled"


def test_status_finds_a_finished_job_and_writes_train_json(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    with FakeProvider("openai", states=["queued", "running", "succeeded"]).running() as srv:
        assert invoke(*train_args(srv, "--no-wait")).exit_code == 0
        assert not (ds / "train.json").exists()
        assert "running" in invoke("train", "status", "ds").stdout
        assert not (ds / "train.json").exists()
        final = invoke("train", "status", "ds")
        model = srv.model_id(next(iter(srv.jobs.values())))
    assert model in final.stdout
    assert json.loads((ds / "train.json").read_text())["model"] == model
    assert invoke("train", "status", "ds", "--cached").stdout == final.stdout  # the store remembers


def test_status_of_a_directory_never_trained_is_one_line(tmp_path):
    write_dataset(tmp_path / "ds")
    result = invoke("train", "status", "ds")
    assert result.exit_code == 2 and "no training recorded" in error_line(result)


# --- uploads under rate limits ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_on_upload_is_retried_and_uploads_once(tmp_path, provider):
    write_dataset(tmp_path / "ds")
    with FakeProvider(provider, upload_faults=[429, 429]).running() as srv:
        result = invoke(*train_args(srv))
        assert result.exit_code == 0, result.output
        assert srv.upload_attempts == 3 and len(srv.uploads) == 1 and len(srv.jobs) == 1


def test_429_that_outlasts_the_retries_is_reported_and_a_rerun_uploads_once(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    with FakeProvider("openai", upload_faults=[429] * 6).running() as srv:
        result = invoke(*train_args(srv))
        assert result.exit_code == 1
        assert "rate limiting (HTTP 429)" in error_line(result) and "run the command again later" in result.stderr
        assert srv.uploads == [] and stored_jobs(ds) == [(None, None, "local")]
        again = invoke(*train_args(srv))
        assert again.exit_code == 0, again.output
        assert len(srv.uploads) == 1 and len(srv.jobs) == 1
    assert stored_jobs(ds)[0][2] == "succeeded"


# --- kill -9 between the provider's answer and the store's commit -------------------------------

KILLER = """
import os, signal, sys
from promptbake.train import providers
point = sys.argv[1]
for cls in (providers.OpenAIProvider, providers.TogetherProvider, providers.FireworksProvider):
    real = getattr(cls, point)
    async def hooked(self, *args, _real=real, **kwargs):
        answer = await _real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the provider has it; the store never hears of it
        return answer
    setattr(cls, point, hooked)
from promptbake.cli import cli
cli.main(args=sys.argv[2:], prog_name="promptbake")
"""


@pytest.mark.parametrize("point", ["upload", "create_job"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_9_between_upload_and_job_creation_then_rerun_launches_exactly_one_job(tmp_path, provider, point):
    ds = write_dataset(tmp_path / "ds")
    with FakeProvider(provider, states=["queued", "succeeded"]).running() as srv:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        killed = subprocess.run([sys.executable, "-c", KILLER, point, *train_args(srv)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len(srv.uploads) == 1 and len(srv.jobs) == (1 if point == "create_job" else 0)
        assert stored_jobs(ds)[0][:2] == ((None, None) if point == "upload" else (srv.uploads[0], None))

        again = invoke(*train_args(srv))
        assert again.exit_code == 0, again.output
        assert len(srv.uploads) == 1 and len(srv.jobs) == 1  # the killed run's upload (and job) were found
        assert srv.created[0]["training_file" if provider != "fireworks" else "dataset"] == srv.uploads[0]
    assert stored_jobs(ds) == [(srv.uploads[0], next(iter(srv.jobs)), "succeeded")]


# --- checks before anything is uploaded ------------------------------------------------------------


def test_dry_run_refuses_a_file_below_the_providers_minimum_with_exit_2(tmp_path):
    write_dataset(tmp_path / "ds", train=2)
    with FakeProvider("fireworks").running() as srv:
        result = invoke(*train_args(srv, "--dry-run"))
        assert result.exit_code == 2
        line = error_line(result)
        assert "ds/train.jsonl: fireworks would refuse this file: too_few_examples: 2 examples" in line
        assert "at least 3" in line
        assert srv.upload_attempts == 0 and srv.jobs == {}
    assert not (tmp_path / "ds" / "promptbake.db").exists()


@pytest.mark.parametrize(("provider", "rows", "rule", "line"), [
    ("fireworks", [example(0), {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"},
                                             {"role": "assistant", "content": "no"}]}, example(2)],
     "system_not_first", 2),
    ("together", [example(0), example(1), {"messages": [{"role": "user", "content": "a"},
                                                        {"role": "user", "content": "b"},
                                                        {"role": "assistant", "content": "c"}]}],
     "roles_not_alternating", 3),
])
def test_refusal_names_the_rule_and_the_first_offending_line(tmp_path, provider, rows, rule, line):
    write_dataset(tmp_path / "ds", rows=rows)
    with FakeProvider(provider).running() as srv:
        result = invoke(*train_args(srv))  # not a dry run: still nothing is uploaded
        assert result.exit_code == 2
        assert f"ds/train.jsonl:{line}: {provider} would refuse this file: {rule}" in error_line(result)
        assert srv.upload_attempts == 0


def test_dry_run_passes_prices_and_uploads_nothing(tmp_path):
    write_dataset(tmp_path / "ds", train=30)
    with FakeProvider("openai").running() as srv:
        result = invoke(*train_args(srv, "--dry-run"))
        assert result.exit_code == 0, result.output
        assert srv.upload_attempts == 0 and srv.jobs == {}
    assert "30 examples" in result.stderr and "x 3 epochs" in result.stderr and "estimated cost $" in result.stderr
    assert "dry run: nothing uploaded" in result.stderr
    assert (tmp_path / "ds" / "hosted" / "openai" / "train.jsonl").exists()  # the bytes it would upload


def test_validation_file_overlapping_training_is_refused(tmp_path):
    ds = write_dataset(tmp_path / "ds")
    with (ds / "test.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(example(4)) + "\n")  # also line 5 of train.jsonl
    result = invoke("train", "ds", "--provider", "openai", "--model", MODELS["openai"], "--validation", "--dry-run")
    assert result.exit_code == 2
    assert "ds/test.jsonl:4: validation_overlaps_train" in error_line(result)


def test_validation_file_is_uploaded_with_the_job(tmp_path):
    write_dataset(tmp_path / "ds")
    with FakeProvider("openai").running() as srv:
        result = invoke(*train_args(srv, "--validation"))
        assert result.exit_code == 0, result.output
        assert len(srv.uploads) == 2 and srv.created[0]["validation_file"] == srv.uploads[1]
        assert len(srv.contents[srv.uploads[1]].decode().splitlines()) == 3


def test_max_cost_refuses_when_the_price_is_unknown(tmp_path):
    write_dataset(tmp_path / "ds")
    with FakeProvider("together").running() as srv:
        result = invoke(*train_args(srv, "--max-cost", "5"))
        assert result.exit_code == 1
        assert "the training price is unknown" in error_line(result) and "--price" in result.stderr
        assert srv.upload_attempts == 0 and srv.jobs == {}
        priced = invoke(*train_args(srv, "--max-cost", "5", "--price", "0.48"))
        assert priced.exit_code == 0, priced.output
        assert len(srv.jobs) == 1


def test_max_cost_refuses_an_estimate_above_it(tmp_path):
    write_dataset(tmp_path / "ds")
    with FakeProvider("openai").running() as srv:
        result = invoke(*train_args(srv, "--max-cost", "0.000001"))
        assert result.exit_code == 1 and "the job is estimated at $" in error_line(result)
        assert srv.upload_attempts == 0


def test_openai_is_marked_legacy_with_its_wind_down_date(tmp_path):
    write_dataset(tmp_path / "ds")
    result = invoke("train", "ds", "--provider", "openai", "--model", MODELS["openai"], "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: OpenAI fine-tuning is legacy" in result.stderr and "2027-01-06" in result.stderr
    together = invoke("train", "ds", "--provider", "together", "--model", MODELS["together"], "--dry-run")
    assert "2027-01-06" not in together.stderr


def test_fireworks_without_an_account_is_bad_input(tmp_path):
    write_dataset(tmp_path / "ds")
    result = invoke("train", "ds", "--provider", "fireworks", "--model", MODELS["fireworks"], "--dry-run")
    assert result.exit_code == 2 and "FIREWORKS_ACCOUNT_ID" in error_line(result)


# --- keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_key_is_never_printed_or_stored_even_when_the_provider_echoes_it(tmp_path, provider):
    ds = write_dataset(tmp_path / "ds")
    with FakeProvider(provider, upload_faults=[400], echo_auth=True).running() as srv:
        result = invoke(*train_args(srv))
    assert result.exit_code == 1
    line = error_line(result)
    assert "HTTP 400" in line and "Authorization: Bearer ***" in line  # the echo arrived, blotted out
    pieces = {KEY[i:i + 8] for i in range(len(KEY) - 7)}
    stored = b"".join(p.read_bytes() for p in ds.glob("promptbake.db*"))
    assert [p for p in pieces if p in result.output or p.encode() in stored] == []


def test_a_file_over_the_providers_size_limit_is_refused(tmp_path, monkeypatch):
    from dataclasses import replace

    from promptbake.output import targets

    monkeypatch.setitem(targets.TARGETS, "fireworks", replace(targets.TARGETS["fireworks"], max_file_bytes=1000))
    write_dataset(tmp_path / "ds")
    result = invoke("train", "ds", "--provider", "fireworks", "--model", MODELS["fireworks"], "--account", "acme",
                    "--dry-run")
    assert result.exit_code == 2
    assert "ds/train.jsonl: fireworks would refuse this file: file_too_large" in error_line(result)


def test_a_suffix_longer_than_the_provider_takes_is_bad_input(tmp_path):
    write_dataset(tmp_path / "ds")
    result = invoke("train", "ds", "--provider", "together", "--model", MODELS["together"], "--suffix", "x" * 41,
                    "--dry-run")
    assert result.exit_code == 2 and "at most 40 characters" in error_line(result)
