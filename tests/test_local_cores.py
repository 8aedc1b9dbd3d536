"""The local teacher uses every core: one single-thread llama.cpp server per core behind the
endpoints layer (llama-cpp-python's server answers one request at a time)."""

from __future__ import annotations

import os

import pytest
from test_local import STANDIN, _models, _pid, _temp_logs_in_tmp_path  # noqa: F401  (an autouse fixture)

from promptbake.spec.models import TeacherConfig
from promptbake.teacher import local
from promptbake.teacher.config import open_teacher


@pytest.fixture
def two_cores(tmp_path, monkeypatch):
    """Two cores, and stand-in servers instead of llama.cpp, recording the argv they got."""
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    argvs: list[list[str]] = []

    def command(self, *args, **kwargs):
        real = local.llama_server_command("model.gguf", "127.0.0.1", 0, n_threads=self.n_threads)
        argvs.append(real)
        state = tmp_path / f"server{len(argvs)}"
        return lambda host, port: [local.sys.executable, str(script), "ok", str(state), str(port)]

    monkeypatch.setattr(local.LocalTeacher, "_default_command", command)
    monkeypatch.setattr(local, "core_count", lambda: 2)
    return argvs, tmp_path


def test_one_single_thread_server_per_core_all_stopped_after(two_cores):
    argvs, folder = two_cores
    with local.local_servers() as servers:
        assert len({s.base_url for s in servers}) == 2
        assert all(_models(s.base_url)["data"][0]["id"] == "smollm2" for s in servers)
        pids = [_pid(folder / f"server{i}") for i in (1, 2)]
    # threads x processes = cores: llama.cpp threads spin, so more would fight over them
    assert [argv[argv.index("--n_threads") + 1] for argv in argvs] == ["1", "1"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_teacher_local_spreads_over_the_servers_under_one_model(two_cores):
    config = TeacherConfig(kind="local", concurrency=64)
    with open_teacher(config) as (endpoint, fitted):
        assert endpoint.model == "smollm2" and endpoint.api_key is None
        assert [(e.model, e.concurrency) for e in fitted.endpoints] == [("smollm2", 1), ("smollm2", 1)]
        assert len({e.base_url for e in fitted.endpoints}) == 2


def test_one_core_keeps_one_server(two_cores, monkeypatch):
    monkeypatch.setattr(local, "core_count", lambda: 1)
    with open_teacher(TeacherConfig(kind="local")) as (_, fitted):
        assert fitted.endpoints == [] and fitted.concurrency == 1
