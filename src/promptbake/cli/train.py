"""``promptbake train ...``: fine-tune a student on a built dataset, on this machine
(``--out MODEL_DIR``) or at a hosted provider (``--provider P --model BASE``), and look after the
hosted jobs (``train status DIR``, ``train cancel DIR``).

``train`` is a group so that jobs can be looked after by subcommands; a first argument that is not
a subcommand is the dataset (``promptbake train DIR ...`` is ``promptbake train start DIR ...``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from promptbake import api
from promptbake.cli.main import cli, refuse_given

if TYPE_CHECKING:
    from promptbake.store.train_jobs import TrainJob

DEFAULT_COMMAND = "start"
# the options that mean one place to train only: given for the other, they are refused by name
LOCAL_ONLY = ("method", "student", "lora", "lora_r", "max_length", "max_steps", "learning_rate", "batch_size",
              "seed", "save_steps", "beta", "gguf_type", "restart")
HOSTED_ONLY = ("model", "base_url", "api_key_env", "account", "price", "max_cost", "suffix", "dry_run", "wait",
               "poll", "new_job")


class DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to ``default_command``."""

    default_command = DEFAULT_COMMAND

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=DefaultGroup)
def train() -> None:
    """Fine-tune a student on a built dataset.

    On this machine (promptbake[train]): `promptbake train DIR --out MODEL_DIR`, SFT or DPO, full or
    LoRA, into a model folder with a GGUF that `promptbake teacher serve --model MODEL_DIR` and
    `promptbake eval --student MODEL_DIR` serve; re-run the same command to resume.

    Hosted: `promptbake train DIR --provider P --model BASE`, then `train status DIR` / `train cancel DIR`."""


def _validation(ctx: click.Context, param: click.Parameter, value: str | None) -> float | int | None:
    if value is None or value == "test":
        return None if value is None else -1  # -1: the bare flag (hosted: upload the test split)
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: a fraction (0.1) or a count (5) of the training file") from None
    if number < 0:
        raise click.BadParameter(f"{value!r}: a fraction (0.1) or a count (5) of the training file")
    if "." not in value and number.is_integer():
        return int(number)
    return number


@train.command(DEFAULT_COMMAND)
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Train on this machine into this model folder: safetensors, tokenizer, model.gguf, train.json.")
@click.option("--provider", type=click.Choice(["openai", "together", "fireworks"]), default=None,
              help="Train at this hosted provider instead.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Passes over the training examples (default 3 here; hosted: OpenAI's rule for the example "
                   "count, 1 on Together and Fireworks).")
@click.option("--validation", default=None, is_flag=False, flag_value="test", callback=_validation,
              help="Here: the fraction (or count) of the training file held out, stratified by category, for the "
                   "validation loss (default 0.1; 0 for none; the test split is never used). Hosted, as a bare "
                   "flag: upload the test split as the validation file.")
@click.option("--method", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True,
              help="sft: learn the assistant turns; dpo: prefer each pair's chosen answer (needs rejected answers).")
@click.option("--student", type=click.Path(file_okay=False), default=None,
              help="A local Hugging Face model folder to train (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (then merged into the model) instead of every weight.")
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True, help="LoRA rank.")
@click.option("--max-length", type=click.IntRange(min=16), default=512, show_default=True,
              help="Longest sequence in tokens; what is longer is cut, and the summary says how much.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Default: 1e-4 (SFT), 2e-4 (SFT + LoRA), 1e-6 (DPO), 1e-5 (DPO + LoRA).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Examples per step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the validation slice, LoRA's initialisation and the batch order.")
@click.option("--save-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Checkpoint (and validate) every N steps; a re-run resumes from the last checkpoint.")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="DPO: how strongly the model is held to the student it started from.")
@click.option("--gguf", "gguf_type", type=click.Choice(["q8_0", "f16", "f32", "none"]), default="q8_0",
              show_default=True, help="Type of the GGUF written for the local engine (none: no GGUF).")
@click.option("--restart", is_flag=True, help="Discard checkpoints or a finished model in --out and train anew.")
@click.option("--model", default=None, help="Hosted: the base model to fine-tune, as the provider names it.")
@click.option("--base-url", default=None,
              help="Hosted: provider API URL (default: $OPENAI_BASE_URL / $TOGETHER_BASE_URL / $FIREWORKS_BASE_URL, "
                   "else the public API).")
@click.option("--api-key-env", default=None,
              help="Hosted: environment variable holding the provider's key (default <PROVIDER>_API_KEY).")
@click.option("--account", default=None, help="Hosted: Fireworks account id (default $FIREWORKS_ACCOUNT_ID).")
@click.option("--price", type=click.FloatRange(min=0), default=None,
              help="Hosted: training price in USD per 1M tokens, over the built-in table (which has OpenAI's only).")
@click.option("--max-cost", type=float, default=None,
              help="Hosted: refuse to launch a job estimated above this many USD, or whose price is unknown.")
@click.option("--suffix", default=None, help="Hosted: suffix for the fine-tuned model's name.")
@click.option("--dry-run", is_flag=True, help="Hosted: check the file and print the price; upload nothing (exit 2 "
                                               "if the provider would refuse it).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Hosted: follow the job until it ends (Ctrl-C leaves it running; run again to re-attach).")
@click.option("--poll", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
              help="Hosted: longest wait in seconds between two status checks.")
@click.option("--new-job", is_flag=True,
              help="Hosted: after a failed or cancelled job, launch another (uploads are reused).")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only errors and the model (folder or id).")
def start(directory: str, out_dir: str | None, provider: str | None, quiet: bool, **options: Any) -> None:
    """Train a student on the built dataset DIR (its latest train.vN, never test.jsonl for training):
    here with --out MODEL_DIR, or at a provider with --provider P --model BASE."""
    if (out_dir is None) == (provider is None):
        raise click.UsageError("give --out MODEL_DIR (train on this machine) or --provider P --model BASE "
                               "(hosted), one of the two")
    refuse_given(HOSTED_ONLY if out_dir is not None else LOCAL_ONLY,
                    "on this machine" if out_dir is not None else "with --provider")
    echo = None if quiet else (lambda line: click.echo(line, err=True))
    if provider is not None:
        _hosted(directory, provider, quiet, echo, options)
        return
    assert out_dir is not None
    _local(directory, out_dir, quiet, options)


def _hosted(directory: str, provider: str, quiet: bool, echo: Any, options: dict[str, Any]) -> None:
    if options["model"] is None:
        raise click.UsageError("--provider needs --model BASE, the base model to fine-tune")
    epochs, validation = options["epochs"], options["validation"]
    if epochs is not None and not float(epochs).is_integer():
        raise click.BadParameter(f"{epochs}: a hosted job trains whole epochs", param_hint="--epochs")
    if validation not in (None, -1):
        raise click.BadParameter("with --provider it takes no value: the test split is uploaded as the validation "
                                 "file", param_hint="--validation")
    hosted = {name: options[name] for name in HOSTED_ONLY}
    result = api.train_hosted(directory, provider=provider, echo=echo,  # type: ignore[arg-type]
                              epochs=None if epochs is None else int(epochs), validation=validation == -1, **hosted)
    if not quiet:
        click.echo(result.format(), err=True)
    if result.job is not None and result.job.status == "succeeded":
        click.echo(result.job.fine_tuned_model)


def _local(directory: str, out_dir: str, quiet: bool, options: dict[str, Any]) -> None:
    validation = options["validation"]
    if validation == -1:
        raise click.BadParameter("on this machine it takes a fraction (0.1) or a count (5) of the training file",
                                 param_hint="--validation")
    local = {name: options[name] for name in LOCAL_ONLY if name not in ("gguf_type", "restart")}
    try:
        result = api.train_local(
            directory, out_dir, epochs=3.0 if options["epochs"] is None else options["epochs"],
            validation=0.1 if validation is None else validation,
            gguf=None if options["gguf_type"] == "none" else options["gguf_type"], restart=options["restart"],
            progress=not quiet, echo=lambda line: click.echo(line, err=True), **local)
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the last checkpoint in {out_dir}/checkpoints is kept; run the same command to "
                   "resume from it.", err=True)
        click.get_current_context().exit(130)
    click.echo(result.format(), err=True)
    click.echo(str(result.out))


@train.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--cached", is_flag=True, help="Show what the store last heard; do not ask the provider.")
def status(directory: str, cached: bool) -> None:
    """List DIR's hosted training jobs with their status (and fine-tuned model once done)."""
    click.echo(_table(api.train_status(directory, refresh=not cached)))


def _table(jobs: list[TrainJob]) -> str:
    """What `train status` prints: a header, then one tab-separated line per attempt."""
    if not jobs:
        return "no training jobs recorded"
    lines = ["job\tprovider\tstatus\tbase model\tfine-tuned model\ttrain file\tcreated\terror"]
    for j in jobs:
        created = datetime.fromtimestamp(j.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        state = j.status if j.raw_status in (None, j.status) else f"{j.status} ({j.raw_status})"
        lines.append(f"{j.job_id or '-'}\t{j.provider}\t{state}\t{j.base_model}\t{j.fine_tuned_model or '-'}\t"
                     f"{j.train_source}\t{created}\t{j.error or '-'}")
    return "\n".join(lines)


@train.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
def cancel(directory: str) -> None:
    """Cancel DIR's open hosted training jobs."""
    cancelled = api.train_cancel(directory)
    for job in cancelled:
        click.echo(f"{job.job_id or '(not launched)'}: {job.status}", err=True)
    click.echo(f"cancelled {len(cancelled)} open training jobs", err=True)
