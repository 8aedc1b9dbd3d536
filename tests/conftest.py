"""Shared fixtures: every test runs with its state in tmp_path and no real API key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("PROMPTBAKE_RAISE_ERRORS", raising=False)
    monkeypatch.delenv("PROMPTBAKE_LLAMA_SERVER", raising=False)


@pytest.fixture(scope="session")
def llama_server():
    """llama.cpp's llama-server built against the installed llama-cpp-python (the README's set-up
    step, `promptbake teacher build`): built once, in about 2 minutes, when it is not already."""
    pytest.importorskip("llama_cpp")
    from promptbake.teacher.engine import build_llama_server

    return build_llama_server()
