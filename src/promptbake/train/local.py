"""Train a student on this machine: SFT or DPO, full fine-tuning or LoRA, with TRL.

The run is a pure function of (data, student, settings): the seed fixes the validation slice, the
LoRA initialisation and the order of the batches, so the same command on a CPU gives the same
weights. Those three are hashed into the run's key. Checkpoints (model, optimizer, scheduler, RNG
states) go to ``MODEL_DIR/checkpoints`` every ``save_steps`` steps, with the key beside them:
after ``kill -9`` the same command resumes from the last complete one, and a command with other
data or settings refuses to mix with it. When training ends the model folder is written (merged,
for LoRA), then its GGUF, then ``train.json``, and the checkpoints are deleted; running the same
command again finds ``train.json`` with the same key and trains nothing.

CUDA is used when torch sees a GPU (bf16 where it has it); the CPU otherwise, in float32.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import InputError, TrainingError
from promptbake.ids import stable_hash
from promptbake.output.atomic import ensure_dir, write_text_atomic
from promptbake.teacher.local import STUDENT_GGUF
from promptbake.teacher.progress import Progress
from promptbake.train.data import Method, TrainData, dpo_rows, load_train_data, sft_rows
from promptbake.train.gguf import GgufType, write_gguf
from promptbake.train.record import (
    RECORD,
    TrainResult,
    library_versions,
    peak_rss_mb,
    read_record,
    write_record,
)
from promptbake.train.student import Student, check_student, load_student, resolve_student

Echo = Callable[[str], None]
CHECKPOINTS = "checkpoints"
RUN = "run.json"  # beside the checkpoints: the key and settings of the run they belong to
ADAPTER = "adapter"  # the LoRA adapter alone, as PEFT loads it
# Defaults per (method, LoRA): SFT at 1e-4 taught SmolLM2-135M a JSON answer format from 25 examples
# (shared/FACTS.md); a LoRA adapter moves fewer weights and takes a larger step (PEFT's examples use
# 2e-4); DPO starts from a trained model and moves it little (TRL's DPOConfig default is 1e-6).
DEFAULT_LEARNING_RATE: dict[tuple[str, bool], float] = {
    ("sft", False): 1e-4, ("sft", True): 2e-4, ("dpo", False): 1e-6, ("dpo", True): 1e-5,
}


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """How to train: every field is recorded in ``train.json`` and is part of the run's key."""

    method: Method = "sft"
    student: str | None = None  # a Hugging Face model folder; None: the embedded SmolLM2-135M-Instruct
    lora: bool = False
    lora_r: int = 16
    max_length: int = 512
    epochs: float = 3.0
    max_steps: int | None = None  # stops earlier than the epochs would
    learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATE for the method
    batch_size: int = 4
    seed: int = 0
    validation: float | int = 0.1  # fraction or count of the training file held out for the loss curve
    save_steps: int = 10
    beta: float = 0.1  # DPO's strength of the pull towards the reference model
    gguf: GgufType | None = "q8_0"  # None: no GGUF

    def check(self) -> None:
        """Bad values are bad input (exit 2), named by their flag, before anything is loaded."""
        bad = [(flag, value) for flag, value, ok in (
            ("--max-length", self.max_length, self.max_length >= 16),
            ("--epochs", self.epochs, self.epochs > 0),
            ("--max-steps", self.max_steps, self.max_steps is None or self.max_steps >= 1),
            ("--learning-rate", self.learning_rate, self.learning_rate is None or self.learning_rate > 0),
            ("--batch-size", self.batch_size, self.batch_size >= 1),
            ("--save-steps", self.save_steps, self.save_steps >= 1),
            ("--lora-r", self.lora_r, self.lora_r >= 1),
            ("--validation", self.validation, self.validation >= 0 and (isinstance(self.validation, int)
                                                                        or self.validation < 1)),
        ) if not ok]
        if bad:
            flag, value = bad[0]
            raise InputError(f"{flag} {value}: out of range")
        if self.method not in ("sft", "dpo"):
            raise InputError(f"--method {self.method}: choose sft or dpo")

    def settings(self) -> dict[str, Any]:
        """The hyperparameters as used (the learning rate resolved), for the record and the key."""
        values = asdict(self)
        values.pop("student")
        values["learning_rate"] = self.learning_rate or DEFAULT_LEARNING_RATE[(self.method, self.lora)]
        return values


def train(dataset: str | Path, out: str | Path, options: TrainOptions, *, restart: bool = False,
          progress: bool = True, echo: Echo | None = None) -> TrainResult:
    """Train ``options.student`` on the dataset directory ``dataset`` into the model folder
    ``out``; see the module docstring for resuming and for what is written."""
    say = echo or (lambda _: None)
    options.check()
    out = Path(out)
    data = load_train_data(dataset, options.method, validation=options.validation, seed=options.seed)
    student = resolve_student(options.student, echo=say)
    check_student(student, gguf=options.gguf is not None)
    settings = options.settings()
    key = stable_hash(data.data_hash, student.identity, settings, length=32)
    previous = read_record(out)
    gguf_file = out / STUDENT_GGUF if options.gguf else None
    if (previous is not None and previous.get("run_key") == key and not restart and (out / "config.json").is_file()
            and (gguf_file is None or gguf_file.is_file())):
        return TrainResult(out, gguf_file, previous, trained=False)
    notes = _claim(out, key, settings, previous, restart)
    checkpoints = out / CHECKPOINTS
    ensure_dir(checkpoints)
    write_text_atomic(checkpoints / RUN, json.dumps({"run_key": key, "settings": settings,
                                                     "data_hash": data.data_hash, "student": student.name}) + "\n")
    started = time.monotonic()
    trained = _fit(data, student, options, settings, checkpoints, progress, notes)
    say("saving the model" + (" and writing its GGUF" if gguf_file else ""))
    trained.model.save_pretrained(out, safe_serialization=True)
    trained.tokenizer.save_pretrained(out)
    if gguf_file is not None:
        write_gguf(out, gguf_file, options.gguf or "q8_0", name=f"promptbake student of {data.directory.name}")
    record = _record(data, student, settings, key, trained, time.monotonic() - started)
    if gguf_file is not None:
        from promptbake.teacher.local import served_model

        record["gguf"] = {"file": STUDENT_GGUF, "type": options.gguf, "served_as": served_model(out).alias,
                          "bytes": gguf_file.stat().st_size}
    write_record(out, record)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(out, gguf_file, record, notes)


def _claim(out: Path, key: str, settings: dict[str, Any], previous: dict[str, Any] | None,
           restart: bool) -> list[str]:
    """Make ``out`` this run's folder: resume our own checkpoints, replace a finished model of
    other data or settings, refuse a folder that is not ours or another run's unfinished work."""
    checkpoints = out / CHECKPOINTS
    notes: list[str] = []
    running = _read_run(checkpoints / RUN)
    if restart:
        shutil.rmtree(checkpoints, ignore_errors=True)
    elif running is not None and running.get("run_key") != key:
        raise InputError(f"{out} holds an unfinished training run with other data or settings "
                         f"({_differences(running, settings)}); pass --restart to discard "
                         "its checkpoints, or choose another --out")
    elif running is None and out.is_dir() and any(out.iterdir()):
        if previous is None:
            raise InputError(f"{out}: not empty and not a model folder promptbake trained; choose another --out")
        notes.append(f"{out}: replacing the model trained on {previous.get('dataset', {}).get('file')} "
                     "(the data or the settings changed)")
    if running is None or restart:
        # what the model being replaced left that this run might not write: never mix the two
        for name in (RECORD, STUDENT_GGUF):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / ADAPTER, ignore_errors=True)
    return notes


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _differences(running: dict[str, Any], settings: dict[str, Any]) -> str:
    """What differs between an unfinished run and this one, for the user to recognise it."""
    theirs = running.get("settings") or {}
    changed = [f"{k} {theirs.get(k)!r} there, {v!r} now" for k, v in sorted(settings.items()) if theirs.get(k) != v]
    return "; ".join(changed) or "other training data or another student"


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (the trainer writes its state file last); incomplete ones,
    left by a kill in the middle of a save, are deleted so that the trainer never reads them."""
    found: list[tuple[int, Path]] = []
    for path in checkpoints.glob("checkpoint-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
            continue
        return path
    return None


@dataclass
class Trained:
    model: Any
    tokenizer: Any
    log: list[dict[str, Any]]
    global_step: int
    resumed_from: int | None
    tokens: int  # tokens this process trained on (padding excluded)
    train_seconds: float
    cpu_seconds: float
    truncation: dict[str, Any]
    device: str


def _fit(data: TrainData, student: Student, options: TrainOptions, settings: dict[str, Any],
         checkpoints: Path, progress: bool, notes: list[str]) -> Trained:
    with warnings.catch_warnings():
        # TRL calls transformers' gradient_checkpointing API, which transformers 5 renamed: not the user's to fix
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing", category=FutureWarning)
        return _fit_quietly(data, student, options, settings, checkpoints, progress, notes)


def _fit_quietly(data: TrainData, student: Student, options: TrainOptions, settings: dict[str, Any],
                 checkpoints: Path, progress: bool, notes: list[str]) -> Trained:
    import torch
    from datasets import Dataset as HFDataset
    from datasets import disable_progress_bars
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.is_available()
    set_seed(options.seed)  # before the LoRA adapter is initialised
    model, tokenizer = load_student(student)
    rows = sft_rows if options.method == "sft" else dpo_rows
    train_rows, truncation = rows(tokenizer, data.train, options.max_length)
    held_rows, held_truncation = rows(tokenizer, data.validation, options.max_length)
    what = "examples" if options.method == "sft" else "preference pairs"
    notes += [m for m in (truncation.message(what), held_truncation.message(f"validation {what}")) if m]
    if not train_rows:
        raise InputError(f"--max-length {options.max_length}: every training example was cut before its answer")
    if options.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=options.lora_r, lora_alpha=2 * options.lora_r, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    common: dict[str, Any] = {
        "output_dir": str(checkpoints), "per_device_train_batch_size": options.batch_size,
        "per_device_eval_batch_size": options.batch_size, "num_train_epochs": options.epochs,
        "max_steps": options.max_steps or -1, "learning_rate": settings["learning_rate"], "seed": options.seed,
        "data_seed": options.seed, "logging_steps": 1, "save_strategy": "steps", "save_steps": options.save_steps,
        "save_total_limit": 1, "eval_strategy": "steps" if held_rows else "no", "eval_steps": options.save_steps,
        "report_to": "none", "use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported(),
        "max_length": options.max_length, "disable_tqdm": True, "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding", "log_level": "warning",
    }
    train_set = HFDataset.from_list(train_rows)
    held_set = HFDataset.from_list(held_rows) if held_rows else None
    trainer = _trainer(options, model, tokenizer, common, train_set, held_set, student)
    clock = _Clock()
    bar = TrainProgress(progress, options.method)
    trainer.add_callback(_callback(bar, clock))
    for noisy in ("PrinterCallback", "ProgressCallback"):  # they print dicts to stdout, and a second bar
        for callback in list(trainer.callback_handler.callbacks):
            if type(callback).__name__ == noisy:
                trainer.remove_callback(callback)
    resume = last_checkpoint(checkpoints)
    resumed_from = int(resume.name.rpartition("-")[2]) if resume else None
    if resume is not None:
        notes.append(f"resumed from {resume.name} (step {resumed_from}) in {checkpoints}")
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if held_set is not None and not any(e.get("step") == trainer.state.global_step and "eval_loss" in e
                                            for e in trainer.state.log_history):
            trainer.evaluate()
    except (RuntimeError, ValueError) as exc:  # the trainer's own failures: out of memory, bad shapes
        raise TrainingError(f"training failed: {exc}; the checkpoints in {checkpoints} are kept") from exc
    finally:
        bar.close()
    final = trainer.model
    if options.lora:
        final.save_pretrained(checkpoints.parent / ADAPTER)
        final = final.merge_and_unload()
    return Trained(final, tokenizer, list(trainer.state.log_history), trainer.state.global_step, resumed_from,
                   clock.tokens, clock.seconds, clock.cpu_seconds, {"train": truncation.to_dict(),
                                                 "validation": held_truncation.to_dict()},
                   "cuda" if cuda else "cpu")


def _trainer(options: TrainOptions, model: Any, tokenizer: Any, common: dict[str, Any], train_set: Any,
             held_set: Any, student: Student) -> Any:
    if options.method == "sft":
        from trl.trainer.sft_config import SFTConfig
        from trl.trainer.sft_trainer import SFTTrainer

        sft = SFTConfig(**common, packing=False, completion_only_loss=False, assistant_only_loss=False)
        return SFTTrainer(model=model, args=sft, train_dataset=train_set, eval_dataset=held_set,
                          processing_class=tokenizer)
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    reference = None
    if not options.lora:  # LoRA's reference is the model with its adapter switched off
        reference = load_student(student)[0]
    dpo = DPOConfig(**common, beta=options.beta)
    return DPOTrainer(model=model, ref_model=reference, args=dpo, train_dataset=train_set,
                      eval_dataset=held_set, processing_class=tokenizer)


class _Clock:
    """Tokens, seconds and CPU seconds of training in this process (a resumed run counts only its
    own part). CPU time is the figure that holds on a machine shared with other jobs."""

    def __init__(self) -> None:
        self.start_tokens = 0
        self.tokens = 0
        self.started = self.cpu_started = 0.0
        self.seconds = self.cpu_seconds = 0.0

    def begin(self, tokens: int) -> None:
        self.start_tokens, self.started, self.cpu_started = tokens, time.monotonic(), time.process_time()

    def end(self, tokens: int) -> None:
        self.tokens, self.seconds = tokens - self.start_tokens, time.monotonic() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started


class TrainProgress(Progress):
    """Training progress on stderr: step, loss, tokens/s. A tqdm bar on a terminal; otherwise a
    plain line every few seconds (``$PROMPTBAKE_PROGRESS_EVERY``), as generation reports."""

    def __init__(self, enabled: bool, label: str) -> None:
        super().__init__(enabled, None, f"train {label}", unit="step")
        self.loss: float | None = None
        self.first_step = 0

    def begin(self, step: int, total: int) -> None:
        self.total, self.done, self.first_step, self.start = total, step, step, time.monotonic()
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.update(step)

    def step(self, step: int, loss: float | None, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.done)
        self.done, self.tokens = step, tokens
        self.loss = loss if loss is not None else self.loss
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)

    def postfix(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        loss = "?" if self.loss is None else f"{self.loss:.3f}"
        return f"loss {loss}, {self.tokens / elapsed:,.0f} tok/s"

    def line(self) -> str:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.label}: step {self.done}/{self.total or '?'}{share}, {self.postfix()}"


def _callback(bar: TrainProgress, clock: _Clock) -> Any:
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        """Feeds the progress display and the clock from the trainer's events."""

        def __init__(self) -> None:
            self.loss: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.begin(state.num_input_tokens_seen)
            bar.begin(state.global_step, state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:  # logged after the step ended: show it now
                self.loss = float(logs["loss"])
                bar.step(state.global_step, self.loss, state.num_input_tokens_seen - clock.start_tokens)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            bar.step(state.global_step, self.loss, state.num_input_tokens_seen - clock.start_tokens)
            if state.global_step >= state.max_steps:
                # the trainer checkpoints the last step too, but the model itself is saved next and the
                # checkpoints deleted: for SmolLM2 that is 1.6 GB not written (about 50 s on this disk)
                control.should_save = False
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.end(state.num_input_tokens_seen)

    return Report()


def _record(data: TrainData, student: Student, settings: dict[str, Any], key: str, trained: Trained,
            wall: float) -> dict[str, Any]:
    steps = [{"step": e["step"], "loss": round(float(e["loss"]), 6), "learning_rate": e.get("learning_rate"),
              "epoch": e.get("epoch")} for e in trained.log if "loss" in e and "step" in e]
    evals = [{"step": e["step"], "loss": round(float(e["eval_loss"]), 6)} for e in trained.log if "eval_loss" in e]
    speed = trained.tokens / trained.train_seconds if trained.train_seconds > 0 else 0.0
    return {
        "run_key": key,
        "method": settings["method"],
        "lora": settings["lora"],
        "student": student.name,
        "dataset": {"directory": str(data.directory), "file": data.file, "data_hash": data.data_hash},
        "examples": {"train": len(data.train), "validation": len(data.validation)},
        "validation": {"ids": [e.id for e in data.validation], "categories": data.categories(),
                       "seed": settings["seed"], "size": settings["validation"]},
        "hyperparameters": settings,
        "truncation": trained.truncation,
        "global_step": trained.global_step,
        "resumed_from_step": trained.resumed_from,
        "steps": steps,
        "validation_loss": evals,
        "performance": {"tokens": trained.tokens, "train_s": round(trained.train_seconds, 2),
                        "tokens_per_s": round(speed, 1), "cpu_s": round(trained.cpu_seconds, 2),
                        "wall_s": round(wall, 2), "peak_rss_mb": peak_rss_mb()},
        "device": trained.device,
        "threads": _threads(),
        "versions": library_versions(),
        "files": [RECORD, "model.safetensors", "config.json", "tokenizer.json"],
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())
