"""llama.cpp's own ``llama-server`` for the local teacher: found, or built once.

Why not only llama-cpp-python's server: llama.cpp's own server, run the same way (one process per
core, each with one slot, answering one request at a time: see ``local.llama_server_command``),
does the quick job in 45-51 s against 60-62 s (README, ``bench/local_engine.py``).

Why build it here: no PyPI wheel ships a Linux ``llama-server``, and building llama.cpp again takes
about 8 minutes on 2 cores. llama-cpp-python has already installed the libraries the server needs
(libllama, libggml, libllama-common, libmtmd) with their headers and CMake config, so only the
server's own sources are compiled (about 80 s), from the llama.cpp tree in the sdist of the very
llama-cpp-python version that is installed: the headers must match the libraries, so a ``--source``
of another version is refused. The binary lives in the user's cache, keyed by that version, that
environment (it links to its libraries) and the CPU (ggml is compiled for the CPU it is built on,
``GGML_NATIVE``: a cache shared with another machine must not hand it instructions it lacks).

A build runs its cmake steps in their own process group; when it is interrupted (Ctrl-C, or
SIGTERM, which the CLI turns into the same), the whole group (cmake, make, the compilers) is killed
and waited for before the temporary tree is removed.

Beside it goes a ggml CPU backend of our own, built from the same tree without llamafile's sgemm
(``GGML_LLAMAFILE=OFF``): with sgemm, a matrix product over one token and over several round
differently (llama.cpp PR #6950), so an answer depended on what the server had cached or batched
beside it, and two fresh runs of the quick job agreed on 25 of 27 examples. Without it every
product goes through ggml's own dot products, which round the same for any batch: runs repeat byte
for byte, batched or not, at the same speed here. The server loads it through ``LD_LIBRARY_PATH``
(:func:`server_env`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from promptbake.errors import TeacherError

LLAMA_DISTRIBUTION = "llama-cpp-python"
BINARY = "llama-server"
# A llama-server of the user's own (a CUDA build, a distribution's package) instead of ours.
OVERRIDE_ENV = "PROMPTBAKE_LLAMA_SERVER"
BUILD_COMMAND = "promptbake teacher build"
_CMAKE_GLUE = Path(__file__).with_name("llama_server.cmake")
_CONFIG = "lib/cmake/llama/llama-config.cmake"
GGML_CPU = "libggml-cpu.so.0"  # the soname libggml.so loads the CPU backend by
CPUINFO = Path("/proc/cpuinfo")
_CPU_LINES = ("flags", "features", "model name", "cpu part", "cpu implementer")  # x86 and ARM spellings
_VERSION = re.compile(r"^Version:\s*(\S+)\s*$", re.M)
_STOPS = {signal.SIGINT, signal.SIGTERM}  # what interrupts a build (the CLI turns SIGTERM into Ctrl-C)

Echo = Callable[[str], None]


def installed_llama() -> tuple[str, Path]:
    """The installed llama-cpp-python's version, and the prefix holding its ``include/`` and
    ``lib/`` (where its wheel put llama.cpp's headers and shared libraries)."""
    try:
        dist = importlib.metadata.distribution(LLAMA_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TeacherError("llama-server is built against llama-cpp-python, which is not installed: "
                           "pip install 'promptbake[local]'") from None
    for file in dist.files or ():
        if str(file).replace("\\", "/").endswith(_CONFIG):
            config = Path(str(dist.locate_file(file)))
            if config.is_file():
                return dist.version, config.parents[3]
    raise TeacherError(f"the installed llama-cpp-python {dist.version} has no {_CONFIG}: reinstall it "
                       "(pip install --force-reinstall 'llama-cpp-python[server]')")


def home() -> Path:
    """Where our build of llama-server lives: per llama-cpp-python version, environment and CPU."""
    version, prefix = installed_llama()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(f"{prefix.resolve()}\n{cpu_identity()}".encode()).hexdigest()[:12]
    return cache / "promptbake" / BINARY / f"{version}-{digest}"


def cpu_identity() -> str:
    """What a native build depends on: the first CPU's instruction-set flags and model, from
    ``/proc/cpuinfo`` (elsewhere, what the platform module says)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    picked = []
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        name, _, value = line.partition(":")
        if name.strip().lower() in _CPU_LINES:
            picked.append(f"{name.strip().lower()}: {' '.join(sorted(value.split()))}")
    return f"{platform.machine()} " + "; ".join(sorted(picked))


def find_llama_server() -> Path | None:
    """The llama-server the local teacher should run, or None (then llama-cpp-python's server)."""
    override = os.environ.get(OVERRIDE_ENV)
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TeacherError(f"{OVERRIDE_ENV}={override}: not an executable file")
        return path
    try:
        path = home() / BINARY
    except TeacherError:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def build_llama_server(source: Path | str | None = None, *, force: bool = False, echo: Echo | None = None,
                       jobs: int | None = None) -> Path:
    """Build llama-server against the installed llama-cpp-python, once; returns its path.

    ``source`` is that version's sdist (a ``.tar.gz``) or its unpacked folder, for a machine that
    cannot reach PyPI; by default pip downloads it (pip caches it, so a re-build downloads nothing).
    """
    say = echo or (lambda _: None)
    version, prefix = installed_llama()
    target = home()
    binary = target / BINARY
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):  # two builds at once would write the same file
        if binary.is_file() and (target / GGML_CPU).is_file() and not force and _runs(binary):
            say(f"{BINARY} for llama-cpp-python {version} is already built: {binary}")
            return binary
        cmake = shutil.which("cmake")
        if cmake is None:
            raise TeacherError("building llama-server needs cmake: pip install cmake (or apt-get install cmake)")
        with tempfile.TemporaryDirectory(prefix="promptbake-llama-server-") as work:
            tree = _llama_tree(Path(source) if source else _download(version, Path(work), say), Path(work), version)
            say(f"compiling {BINARY} against llama-cpp-python {version} in {prefix}, and ggml's CPU backend "
                "without llamafile (about 2 minutes on 2 cores)")
            built = _compile(cmake, tree, prefix, Path(work), jobs or os.cpu_count() or 1, target)
            for name, path in ((GGML_CPU, built[1]), (BINARY, built[0])):  # the binary last: it marks "built"
                staged = target / f".{name}.new"
                shutil.copy2(path, staged)
                os.replace(staged, target / name)
    if not _runs(binary):
        raise TeacherError(f"the {BINARY} just built does not start: {binary} --version failed")
    say(f"built {binary}")
    return binary


def _download(version: str, work: Path, say: Echo) -> Path:
    say(f"downloading the llama-cpp-python {version} sdist (llama.cpp's sources) with pip")
    # --no-binary for this package only: with :all:, pip would build its build tools (cmake) from source too
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", LLAMA_DISTRIBUTION,
            "--dest", str(work), f"{LLAMA_DISTRIBUTION}=={version}"]
    done = subprocess.run(argv, capture_output=True, text=True)
    found = sorted(work.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
        raise TeacherError(f"could not download the llama-cpp-python {version} sdist ({last}); on a machine "
                           f"without PyPI, pass it with `{BUILD_COMMAND} --source FILE.tar.gz`")
    return found[0]


def _llama_tree(source: Path, work: Path, version: str) -> Path:
    """The llama.cpp tree inside an sdist (extracting only what the build reads) or its unpacked
    folder, once its ``PKG-INFO`` says it is llama-cpp-python ``version``: the installed one."""
    if source.is_dir():
        tree = source / "vendor" / "llama.cpp"
        if not (tree / "tools" / "server").is_dir():
            raise TeacherError(f"{source}: no llama.cpp tree (vendor/llama.cpp/tools/server) in this folder")
        info = source / "PKG-INFO"
        _same_version(source, info.read_text(errors="replace") if info.is_file() else None, version)
        return tree
    try:
        with tarfile.open(source) as sdist:
            members = [m for m in sdist.getmembers() if _needed(m.name)]
            if not members:
                raise TeacherError(f"{source}: no vendor/llama.cpp in this archive (is it llama-cpp-python's sdist?)")
            top = next((m for m in sdist.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")),
                       None)
            handle = sdist.extractfile(top) if top is not None else None
            _same_version(source, handle.read().decode(errors="replace") if handle is not None else None, version)
            sdist.extractall(work / "src", members=members, filter="data")
    except tarfile.TarError:
        raise TeacherError(f"{source}: not a .tar.gz sdist or a folder") from None
    except OSError as exc:
        raise TeacherError(f"{source}: cannot read the sdist: {exc.strerror or exc}") from None
    return next((work / "src").glob("*/vendor/llama.cpp"))


def _same_version(source: Path, pkg_info: str | None, version: str) -> None:
    """Refuse sources of another llama-cpp-python than the installed one: its headers would not
    match the libraries the server links to."""
    found = _VERSION.search(pkg_info or "")
    if found is None:
        raise TeacherError(f"{source}: no PKG-INFO naming its llama-cpp-python version; pass the "
                           f"llama_cpp_python-{version}.tar.gz sdist or its unpacked folder")
    if found[1] != version:
        raise TeacherError(f"{source} holds llama-cpp-python {found[1]}, but {version} is installed: "
                           "llama-server must be built from the installed version's sources; pass "
                           f"llama_cpp_python-{version}.tar.gz")


def _needed(name: str) -> bool:
    _, _, inside = name.partition("/vendor/llama.cpp/")
    return bool(inside)


def _compile(cmake: str, tree: Path, prefix: Path, work: Path, jobs: int, target: Path) -> tuple[Path, Path]:
    """The server (against the installed libraries) and the CPU backend (llama.cpp's own CMake,
    nothing but that target): their paths in the build folders."""
    glue, build, ggml = work / "glue", work / "build", work / "ggml"
    glue.mkdir()
    shutil.copy(_CMAKE_GLUE, glue / "CMakeLists.txt")
    log = target / "build.log"
    off = [f"-D{flag}=OFF" for flag in ("GGML_LLAMAFILE", "LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES",
                                         "LLAMA_BUILD_TOOLS", "LLAMA_BUILD_SERVER", "LLAMA_BUILD_APP", "LLAMA_CURL")]
    steps = [[cmake, "-S", str(glue), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              f"-DLLAMA_SRC={tree}", f"-DCMAKE_PREFIX_PATH={prefix}"],
             [cmake, "--build", str(build), "--target", BINARY, "-j", str(jobs)],
             [cmake, "-S", str(tree), "-B", str(ggml), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", *off],
             [cmake, "--build", str(ggml), "--target", "ggml-cpu", "-j", str(jobs)]]
    with open(log, "wb") as out:
        for argv in steps:
            if _run_group(argv, out) != 0:
                tail = log.read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()[-3:]
                raise TeacherError(f"building {BINARY} failed (log: {log}): {' | '.join(tail)}")
    return build / BINARY, ggml / "bin" / GGML_CPU


def _run_group(argv: list[str], out: IO[bytes]) -> int:
    """Run one build command as the leader of its own process group. Interrupted, it kills the
    whole group (the compilers cmake started too) and waits for the leader, so nothing writes into
    the build tree while it is being removed, and nothing compiles on after we are gone.

    Ctrl-C and SIGTERM are held back while the child starts: one arriving inside ``Popen`` would
    interrupt it after the fork, before we know the pid to kill. The child gets the mask back."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, held))
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # one that came meanwhile is raised here
            return process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def server_env(binary: Path) -> dict[str, str]:
    """What the server's environment needs so that it loads our CPU backend, when it is ours."""
    if not (binary.parent / GGML_CPU).is_file():
        return {}
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return {"LD_LIBRARY_PATH": str(binary.parent) + (os.pathsep + inherited if inherited else "")}


def _runs(binary: Path) -> bool:
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30,
                              env={**os.environ, **server_env(binary)})
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
