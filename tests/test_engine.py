"""llama.cpp's llama-server for the local teacher: built once against the installed
llama-cpp-python, found again, or a user's own; and what it answers on the real model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import sigint_default

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


# --- building with a stand-in cmake (nothing is compiled) ----------------------------------------

STUB_CMAKE = """#!/bin/sh
# records its pid; with STUB_HANG set, also a child's, then waits as a long compile would
echo "$$" >> "$STUB_LOG"
[ -n "$STUB_HANG" ] || exit 1
sleep 300 &
echo "$!" >> "$STUB_LOG"
wait
"""
SRC = Path(__file__).resolve().parent.parent / "src"


def stub_cmake(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``cmake`` is the stand-in above, with its own cache and temp folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cmake").write_text(STUB_CMAKE)
    (bin_dir / "cmake").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "cmake.log"),
            "TMPDIR": str(tmp_path / "tmp"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(SRC)}


def unpacked_sdist(tmp_path: Path, version: str) -> Path:
    """A folder shaped like llama-cpp-python ``version``'s unpacked sdist (no real sources)."""
    root = tmp_path / f"llama_cpp_python-{version}"
    (root / "vendor" / "llama.cpp" / "tools" / "server").mkdir(parents=True)
    (root / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version}\n")
    return root


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped running; nobody may be left to reap it


@pytest.fixture
def installed_version() -> str:
    """The installed llama-cpp-python's version (the build needs its libraries' CMake config)."""
    try:
        return engine.installed_llama()[0]
    except TeacherError:
        pytest.skip("needs llama-cpp-python installed")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_stops_cmake_and_its_children_and_removes_its_tree(tmp_path, stop, installed_version):
    env = {**stub_cmake(tmp_path), "STUB_HANG": "1"}
    source = unpacked_sdist(tmp_path, installed_version)
    build = subprocess.Popen([sys.executable, "-m", "promptbake", "teacher", "build", "--source", str(source)],
                             cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline and build.poll() is None:
            time.sleep(0.05)
            log = tmp_path / "cmake.log"
            pids = [int(p) for p in log.read_text().split()] if log.is_file() else []
        assert len(pids) == 2, build.stderr.read() if build.poll() is not None and build.stderr else pids
        assert list((tmp_path / "tmp").iterdir())  # the build tree exists while cmake runs
        build.send_signal(stop)
        _, err = build.communicate(timeout=30)
        assert build.returncode == 130, err
        assert "Interrupted: the build was stopped" in err and "Traceback" not in err, err
        deadline = time.monotonic() + 10  # SIGKILL is sent; the kernel ends them as they are scheduled
        while [pid for pid in pids if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _alive(pid)]  # cmake and what it started
        assert list((tmp_path / "tmp").iterdir()) == []
        assert not [p for p in (tmp_path / "cache").rglob(engine.BINARY) if p.is_file()]  # nothing installed
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("packed", [True, False])
def test_a_source_of_another_llama_cpp_python_version_is_refused_in_one_line(tmp_path, packed, installed_version):
    env = stub_cmake(tmp_path)
    source: Path = unpacked_sdist(tmp_path, "0.0.1")
    if packed:
        with tarfile.open(tmp_path / "llama_cpp_python-0.0.1.tar.gz", "w:gz") as sdist:
            sdist.add(source, arcname=source.name)
        source = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    done = subprocess.run([sys.executable, "-m", "promptbake", "teacher", "build", "--source", str(source)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{source} holds llama-cpp-python 0.0.1, but {installed_version} is installed" in lines[0], lines[0]
    assert not (tmp_path / "cmake.log").exists()  # refused before anything was compiled


def test_the_build_is_cached_per_cpu(tmp_path, monkeypatch, installed_version):
    """ggml is compiled for the CPU it is built on: a cache shared with another CPU (a home folder
    on NFS, a copied container) must not find that build."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(engine, "CPUINFO", cpuinfo)

    def home_on(flags: str) -> Path:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                           f"processor\t: 1\nflags\t\t: {flags} other\n")
        return engine.home()

    assert home_on("fpu sse2 avx2") == home_on("avx2 fpu sse2")  # the same CPU, however listed
    assert home_on("fpu sse2 avx2") != home_on("fpu sse2 avx2 avx512f")


def test_help_texts_do_not_say_the_local_server_batches():
    """The local teacher runs llama-server with one slot (--parallel 1): it answers one request at a time."""
    shown = CliRunner().invoke(cli, ["teacher", "build", "--help"]).output
    readme = (SRC.parent / "README.md").read_text()
    for text in (shown, readme, engine.__doc__ or ""):
        assert "batches requests" not in text and "continuous batching" not in text
    assert "one request at a time" in " ".join(shown.split())


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
