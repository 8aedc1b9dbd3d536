"""``promptbake train DIR --out MODEL_DIR``: fine-tune a student on a built dataset.

``train`` is a group so that jobs can be looked after by subcommands (``promptbake train status
DIR``, ``promptbake train cancel DIR`` for hosted fine-tuning); a first argument that is not a
subcommand is the dataset, and trains (``promptbake train DIR ...`` is ``promptbake train start DIR ...``).
"""

from __future__ import annotations

from typing import Any

import click

from promptbake import api
from promptbake.cli.main import cli

DEFAULT_COMMAND = "start"


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to ``default_command``."""

    default_command = DEFAULT_COMMAND

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_DefaultGroup)
def train() -> None:
    """Fine-tune a student on a built dataset: `promptbake train DIR --out MODEL_DIR [options]`.

    On this machine (promptbake[train]): SFT or DPO, full or LoRA, into a model folder with a GGUF
    that `promptbake teacher serve --model MODEL_DIR` and `promptbake eval --student MODEL_DIR`
    serve. Re-run the same command to resume after an interruption."""


def _validation(ctx: click.Context, param: click.Parameter, value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a fraction (0.1) or a count (5) of the training file") from None
    if "." not in value and number.is_integer():
        return int(number)
    return number


@train.command(DEFAULT_COMMAND)
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Model folder to write: safetensors, tokenizer, model.gguf, train.json.")
@click.option("--method", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True,
              help="sft: learn the assistant turns; dpo: prefer each pair's chosen answer (needs rejected answers).")
@click.option("--student", type=click.Path(file_okay=False), default=None,
              help="A local Hugging Face model folder to train (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (then merged into the model) instead of every weight.")
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True, help="LoRA rank.")
@click.option("--max-length", type=click.IntRange(min=16), default=512, show_default=True,
              help="Longest sequence in tokens; what is longer is cut, and the summary says how much.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Passes over the training examples.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Default: 1e-4 (SFT), 2e-4 (SFT + LoRA), 1e-6 (DPO), 1e-5 (DPO + LoRA).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Examples per step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the validation slice, LoRA's initialisation and the batch order.")
@click.option("--validation", default="0.1", show_default=True, callback=_validation,
              help="Fraction (or count) of the training file held out, stratified by category, for the validation "
                   "loss; 0 for none. The test split is never used.")
@click.option("--save-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Checkpoint (and validate) every N steps; a re-run resumes from the last checkpoint.")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="DPO: how strongly the model is held to the student it started from.")
@click.option("--gguf", "gguf_type", type=click.Choice(["q8_0", "f16", "f32", "none"]), default="q8_0",
              show_default=True, help="Type of the GGUF written for the local engine (none: no GGUF).")
@click.option("--restart", is_flag=True, help="Discard checkpoints or a finished model in --out and train anew.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
# Hosted fine-tuning (--provider together|fireworks|openai --model BASE) joins these options here.
def start(directory: str, out_dir: str, method: Any, student: str | None, lora: bool, lora_r: int, max_length: int,
          epochs: float, max_steps: int | None, learning_rate: float | None, batch_size: int, seed: int,
          validation: float | int, save_steps: int, beta: float, gguf_type: str, restart: bool, quiet: bool) -> None:
    """Train a student on the built dataset DIR (its latest train.vN, never test.jsonl)."""
    try:
        result = api.train_local(
            directory, out_dir, method=method, student=student, lora=lora, lora_r=lora_r, max_length=max_length,
            epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
            validation=validation, save_steps=save_steps, beta=beta,
            gguf=None if gguf_type == "none" else gguf_type,  # type: ignore[arg-type]
            restart=restart, progress=not quiet, echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the last checkpoint in {out_dir}/checkpoints is kept; run the same command to "
                   "resume from it.", err=True)
        click.get_current_context().exit(130)
    click.echo(result.format(), err=True)
    click.echo(str(result.out))
