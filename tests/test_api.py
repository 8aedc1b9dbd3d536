"""The Python API (issue 14): promptbake.run and friends, sync and async, notebook-safe, lazy."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fakeserver import FakeServer
from helpers import MINIMAL_SPEC, ctrl_c_raises, list_then_reply_responder, write_spec

import promptbake
from promptbake.cli.main import cli
from promptbake.errors import InputError, SpecError
from promptbake.workflows.sync import run_sync

SRC = Path(__file__).resolve().parent.parent / "src"


def teacher(srv: FakeServer) -> promptbake.Teacher:
    return promptbake.Teacher(base_url=srv.base_url, rpm=1_000_000)


def test_run_returns_the_dataset_it_wrote(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        ds = promptbake.run(spec, "out", teacher=teacher(srv), progress=False)
    assert isinstance(ds, promptbake.Dataset)
    # nothing read the splits yet: asyncio's Runner takes the finished task's repr on its way
    # out, and a repr that loaded them held a million-example run's train split in memory
    assert "train" not in vars(ds) and "test" not in vars(ds)
    assert repr(ds) == "Dataset(train=6, test=2, directory='out')"
    assert "train" not in vars(ds)
    first = ds.train[0]
    assert isinstance(first, promptbake.Example)
    assert [m["role"] for m in first.messages] == ["user", "assistant"]
    assert first.category in {"calm", "angry"} and first.cell["mood"] == first.category
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["messages"] for line in lines] == [e.messages for e in ds.train]
    assert (len(ds.train), len(ds.test)) == (ds.manifest.train, ds.manifest.test) == (6, 2)
    assert isinstance(ds.manifest, promptbake.Manifest)
    assert sum(c.kept for c in ds.manifest.categories.values()) == 8
    assert ds.manifest.usage.requests == srv.count
    assert ds.report.generate.steps[0].sent == 4  # what the run did rides along


def test_sync_run_inside_a_running_event_loop(tmp_path):
    """A notebook cell: the kernel's loop is running, where a nested asyncio.run would raise."""
    spec = write_spec(tmp_path)

    async def cell() -> promptbake.Dataset:
        asyncio.get_running_loop()
        return promptbake.run(spec, "out", teacher=teacher(srv), progress=False)

    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        ds = asyncio.run(cell())
    assert len(ds.train) == 6 and ds.train[0].messages[1]["content"].startswith("Ugh.")


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build")
def test_runs_on_uvloop_unless_told_not_to(monkeypatch):
    """uvloop is a dependency (README, Dependencies): generate and run get its loop, and
    PROMPTBAKE_NO_UVLOOP=1 gives them asyncio's own."""
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv("PROMPTBAKE_NO_UVLOOP", raising=False)
    assert run_sync(loop_module()).startswith("uvloop")
    monkeypatch.setenv("PROMPTBAKE_NO_UVLOOP", "1")
    assert run_sync(loop_module()).startswith("asyncio")


def test_run_async_is_awaitable_and_resumes_from_the_same_store(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        first = asyncio.run(promptbake.run_async(spec, "out", teacher=teacher(srv), progress=False))
        sent = srv.count
        again = asyncio.run(promptbake.run_async(spec, "out", teacher=teacher(srv), progress=False))
        assert srv.count == sent  # answered from the store
    assert [e.id for e in again.train] == [e.id for e in first.train]


def test_spec_built_in_python_and_default_out(tmp_path):
    data = yaml.safe_load(MINIMAL_SPEC)
    spec = promptbake.load_spec(data)
    assert isinstance(spec, promptbake.Spec) and promptbake.load_spec(spec) is spec
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        ds = promptbake.run(data, teacher=teacher(srv), progress=False)
    assert ds.directory == Path("out") / "mini"
    assert (tmp_path / "out" / "mini" / "promptbake.db").exists()
    data["grid"]["count"] = 0
    with pytest.raises(SpecError, match=r"spec 'mini': grid\.count: Input should be greater than or equal to 1"):
        promptbake.load_spec(data)


def test_generate_then_build_and_load(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        report = promptbake.generate(spec, "s.db", teacher=teacher(srv), progress=False)
    assert report.totals["ok"] == srv.count
    built = promptbake.build("s.db", "from_store")  # the store knows its spec
    assert len(built.train) == 6
    loaded = promptbake.Dataset.load("from_store")
    assert [e.model_dump() for e in loaded.train] == [e.model_dump() for e in built.train]
    assert asyncio.run(promptbake.build_async(spec, "from_spec", store="s.db")).manifest.spec_hash == \
        built.manifest.spec_hash


def test_dataset_writes_formats_and_converts_to_hf(tmp_path):
    spec = write_spec(tmp_path)
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        ds = promptbake.run(spec, "out", teacher=teacher(srv), progress=False)
    reports = ds.write("exp", format=["sharegpt", "alpaca"])
    assert {r.path for r in reports} == {Path("exp") / f / f"{s}.jsonl" for f in ("sharegpt", "alpaca")
                                         for s in ("train", "test")}
    rows = [json.loads(line) for line in (tmp_path / "exp" / "sharegpt" / "train.jsonl").read_text().splitlines()]
    assert rows[0]["conversations"][0]["value"] == ds.train[0].messages[0]["content"]
    hf = ds.to_hf()
    assert {name: len(split) for name, split in hf.items()} == {"train": 6, "test": 2}
    assert [m["content"] for m in hf["train"][0]["messages"]] == [m["content"] for m in ds.train[0].messages]


def test_teacher_lays_its_fields_over_the_specs(tmp_path):
    from promptbake.teacher.config import merge

    spec = promptbake.load_spec(write_spec(tmp_path))
    config = spec.teacher.model_validate({**spec.teacher.model_dump(),
                                          "prices": {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}})
    merged = merge(config, promptbake.Teacher(rpm=60, prices={"mine": {"input": 3.0, "output": 4.0}}))
    assert (merged.model, merged.rpm, merged.concurrency) == ("gpt-4o-mini", 60, 64)
    assert sorted(merged.prices) == ["gpt-4o-mini", "mine"]  # one model's price added, the spec's kept
    local = merge(config, promptbake.Teacher(kind="local"))
    assert (local.kind, local.model) == ("local", None)  # a remote model name means nothing locally


def test_teacher_fields_are_checked_as_input_and_named_as_python_spells_them(tmp_path):
    spec = write_spec(tmp_path)
    with pytest.raises(InputError, match=r"^rpm=0: Input should be greater than 0") as raised:
        promptbake.generate(spec, "s.db", teacher=promptbake.Teacher(base_url="http://127.0.0.1:9/v1", rpm=0))
    assert "--" not in str(raised.value)  # a notebook user typed no flag
    with pytest.raises(InputError) as raised:
        promptbake.run(spec, max_cost=float("nan"), teacher=promptbake.Teacher(base_url="http://127.0.0.1:9/v1"))
    assert str(raised.value).startswith("max_cost=nan: must be a finite amount")
    # the command line keeps its flags
    result = CliRunner().invoke(cli, ["generate", str(spec), "--store", "s.db", "--rpm", "0",
                                      "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2 and "Error: --rpm 0.0: Input should be greater than 0" in result.output


def test_a_401_without_the_key_variable_names_the_variable(tmp_path, monkeypatch):
    spec = write_spec(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeServer(fault_rates={"401": 1.0}).running() as srv:
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out", "--base-url", srv.base_url, "-q"])
        assert result.exit_code == 1, result.output
        assert "OPENAI_API_KEY is not set" in result.output
        monkeypatch.setenv("MY_KEY", "sk-wrong-0123456789")
        result = CliRunner().invoke(cli, ["run", str(spec), "--out", "out2", "--base-url", srv.base_url, "-q",
                                          "--api-key-env", "MY_KEY"])
    assert result.exit_code == 1 and "check the key in MY_KEY" in result.output


def test_interrupt_in_a_running_loop_cancels_the_work_and_waits_for_it(tmp_path):
    """The kernel's stop button raises KeyboardInterrupt in the waiting cell: the worker's coroutine
    is cancelled (so the store's writer commits) and has finished before the interrupt propagates."""
    started, events = threading.Event(), []

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("cleaned up")

    def interrupt() -> None:
        started.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    async def cell() -> None:
        threading.Thread(target=interrupt, daemon=True).start()
        run_sync(work())

    loop = asyncio.new_event_loop()  # like a kernel's loop: SIGINT raises KeyboardInterrupt in the cell
    try:
        with ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
    finally:
        loop.close()
    assert events == ["cancelled", "cleaned up"]


def test_import_is_fast_and_lazy():
    script = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "import promptbake\n"
        "took = time.perf_counter() - t\n"
        "heavy = [m for m in ('pydantic', 'aiohttp', 'yaml', 'jinja2', 'tiktoken', 'click', 'datasketch', 'datasets',"
        " 'torch', 'transformers', 'trl', 'peft', 'gguf') if m in sys.modules]\n"
        "print(json.dumps([took, heavy]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                      check=True).stdout) for _ in range(3)]
    assert [heavy for _, heavy in runs] == [[], [], []]  # nothing heavy is imported before it is used
    assert min(took for took, _ in runs) < 0.3, runs


def test_every_public_name_is_documented():
    undocumented = []
    for name in promptbake.__all__:
        if name == "__version__":
            continue
        obj = getattr(promptbake, name)
        if not inspect.getdoc(obj):
            undocumented.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(getattr(obj, attr)) and not inspect.getdoc(member):
                    undocumented.append(f"{name}.{attr}")
    assert undocumented == []
    assert sorted(dir(promptbake)) == sorted(promptbake.__all__)
    with pytest.raises(AttributeError):
        promptbake.not_a_name  # noqa: B018


def test_readme_python_example_runs(tmp_path, capsys):
    """The README's Python API blocks, run as written against the loopback teacher (the second
    with its top-level await, as a notebook cell runs it)."""
    import ast
    import re
    import shutil

    root = SRC.parent
    for folder in ("generators", "templates"):
        shutil.copytree(root / folder, tmp_path / folder)
    section = (root / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    sync_block, async_block = re.findall(r"```python\n(.*?)```", section, re.S)
    cli_run = next(line for line in re.findall(r"^promptbake run generators/rude_agent.yaml .*$", (
        root / "README.md").read_text(encoding="utf-8"), re.M))
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        # followed in order, the README's command-line example has already bought every answer:
        # the Python example reads the same store and pays for nothing (it paid 1,100 again before)
        args = [*shlex.split(cli_run)[1:], "--base-url", srv.base_url, "-q"]
        args = [a for a in args if a not in ("--max-cost", "2")]
        assert CliRunner().invoke(cli, args).exit_code == 0
        before = srv.count
        namespace: dict[str, object] = {}
        exec(sync_block.replace("http://127.0.0.1:8765/v1", srv.base_url), namespace)
        assert srv.count == before
        sent = srv.count
        code = compile(async_block, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        asyncio.run(eval(code, namespace))
        assert srv.count == sent  # the awaited run was answered by the store
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Dataset(train=900, test=100, directory='out/rude')"
    ds = namespace["ds"]
    assert isinstance(ds, promptbake.Dataset) and ds.train[0] == namespace["example"]
    assert sorted(namespace["hf"]) == ["test", "train"]
    assert (tmp_path / "out" / "exp" / "sharegpt" / "train.jsonl").exists()


def test_topup_returns_the_new_train_version(tmp_path):
    spec = write_spec(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"category": "calm", "pass": false}\n{"category": "angry", "pass": true}\n')
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        before = promptbake.run(spec, "out", teacher=teacher(srv), progress=False)
        after = asyncio.run(promptbake.topup_async(spec, "eval.jsonl", "out", per_category=2, teacher=teacher(srv),
                                                   progress=False))
    assert after.report.train_path == Path("out") / "train.v2.jsonl"
    assert len(after.train) == len(before.train) + 2
    added = {e.id for e in after.train} - {e.id for e in before.train}
    assert {e.category for e in after.train if e.id in added} == {"calm"}
    assert [e.id for e in after.test] == [e.id for e in before.test]  # the test split never changes
    assert after.train_file == "train.v2.jsonl"
    first = promptbake.Dataset.load("out", train_version=1)
    assert first.train_file == "train.jsonl" and [e.id for e in first.train] == [e.id for e in before.train]
    with pytest.raises(promptbake.PromptbakeError, match="no such training file"):
        promptbake.Dataset.load("out", train_version=3)


def test_the_cli_calls_only_the_api():
    """The CLI is a thin layer over the public API: its modules import ``promptbake`` (its public
    names), ``promptbake.api``, ``promptbake.errors`` and each other, nothing deeper, so whatever a
    command can do, a Python caller can too. Names only an annotation needs (under
    ``if TYPE_CHECKING:``) are exempt: they call nothing."""
    import ast

    allowed = {"promptbake", "promptbake.api", "promptbake.errors"}
    public = {*promptbake.__all__, "api", "errors"}

    def imports(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                yield from (n for stmt in child.orelse for n in imports(stmt))
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            yield from imports(child)

    def ours(module: str) -> bool:
        return module == "promptbake" or module.startswith("promptbake.")

    offenders, checked = [], 0
    for path in sorted((SRC / "promptbake" / "cli").glob("*.py")):
        for node in imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                assert node.level == 0, f"{path.name}:{node.lineno}: a relative import"
                modules = [node.module or ""]
                if node.module == "promptbake":
                    modules = ["promptbake", *(f"promptbake.{a.name}" for a in node.names if a.name not in public)]
            for module in filter(ours, modules):
                checked += 1
                if module not in allowed and not module.startswith("promptbake.cli"):
                    offenders.append(f"{path.name}:{node.lineno}: {module}")
    assert offenders == []
    assert checked >= 15  # the walk found the CLI's imports (main, batch, report, __init__)
