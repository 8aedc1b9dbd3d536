"""The local teacher uses every core: one single-thread server per core behind the endpoints layer,
llama-server once it is built, else llama-cpp-python's. Threads set by hand are obeyed, and said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_local import STANDIN, _models, _pid, _temp_logs_in_tmp_path  # noqa: F401  (an autouse fixture)

from promptbake.specification.models import TeacherConfig
from promptbake.teacher import local
from promptbake.teacher.config import open_teacher


@pytest.fixture
def two_cores(tmp_path, monkeypatch):
    """Two cores, and stand-in servers instead of llama.cpp, recording the argv they got."""
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    argvs: list[list[str]] = []

    def command(self, *args, **kwargs):
        if self.engine == "llama-server":
            real = local.llama_server_command("llama-server", "model.gguf", "127.0.0.1", 0, n_threads=self.n_threads)
        else:
            real = local.llama_cpp_python_command("model.gguf", "127.0.0.1", 0, n_threads=self.n_threads)
        argvs.append(real)
        state = tmp_path / f"server{len(argvs)}"
        return lambda host, port: [local.sys.executable, str(script), "ok", str(state), str(port)]

    monkeypatch.setattr(local.LocalTeacher, "_default_command", command)
    monkeypatch.setattr(local, "core_count", lambda: 2)
    monkeypatch.setattr(local, "find_llama_server", lambda: None)  # not built: llama-cpp-python's server
    return argvs, tmp_path


@pytest.fixture
def built(two_cores, monkeypatch):
    """As two_cores, with llama-server built."""
    monkeypatch.setattr(local, "find_llama_server", lambda: Path("/opt/llama-server"))
    return two_cores


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


def test_llama_server_once_built_one_single_thread_process_per_core(built):
    argvs, _ = built
    with open_teacher(TeacherConfig(kind="local", concurrency=64)) as (endpoint, fitted):
        assert endpoint.model == "smollm2"
        assert [(e.model, e.concurrency) for e in fitted.endpoints] == [("smollm2", 1), ("smollm2", 1)]
    assert [argv[0] for argv in argvs] == ["llama-server", "llama-server"]
    assert [argv[argv.index("--threads") + 1] for argv in argvs] == ["1", "1"]
    assert local.local_layout().notes == ()


def test_without_llama_server_the_summary_says_how_to_get_it(two_cores):
    argvs, _ = two_cores
    with open_teacher(TeacherConfig(kind="local")):
        pass
    assert [argv[1:3] for argv in argvs] == [["-m", "llama_cpp.server"]] * 2
    [note] = local.local_layout().notes
    assert "llama-cpp-python's server (2 x 1 thread)" in note and "promptbake teacher build" in note


@pytest.mark.parametrize(("threads", "said"), [(4, "4 llama.cpp threads on 2 cores; they spin"),
                                               (3, "3 llama.cpp threads on 2 cores; they spin")])
def test_more_threads_than_cores_are_obeyed_and_said(built, threads, said):
    argvs, _ = built
    with open_teacher(TeacherConfig(kind="local", threads=threads)) as (_, fitted):
        assert fitted.endpoints == []  # one process
    assert [argv[argv.index("--threads") + 1] for argv in argvs] == [str(threads)]
    assert any(said in note for note in local.local_layout(threads).notes)


def test_threads_by_hand_size_the_processes(built, monkeypatch):
    argvs, _ = built
    monkeypatch.setattr(local, "core_count", lambda: 4)
    with open_teacher(TeacherConfig(kind="local", threads=2)) as (_, fitted):
        assert len(fitted.endpoints) == 2  # 2 processes x 2 threads = 4 cores
    assert [argv[argv.index("--threads") + 1] for argv in argvs] == ["2", "2"]
    assert local.local_layout(2).notes == ()


def test_fewer_threads_than_cores_are_said(built, monkeypatch):
    monkeypatch.setattr(local, "core_count", lambda: 3)
    assert local.local_layout(2).notes == ("--threads 2: the local teacher uses 2 of 3 cores",)
