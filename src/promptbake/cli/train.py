"""``promptbake train ...``: fine-tune the student on a built dataset, and look after the job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from promptbake import api
from promptbake.cli.main import cli

if TYPE_CHECKING:
    from promptbake.store.train_jobs import TrainJob


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not one of its commands, goes to
    ``default_command``: ``promptbake train DIR ...`` is ``promptbake train start DIR ...``."""

    default_command = "start"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=DefaultGroup)
def train() -> None:
    """Fine-tune a student on a built dataset: `promptbake train DIR --provider P --model BASE`
    (same as `train start`), then `train status DIR` / `train cancel DIR`."""


@train.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--provider", type=click.Choice(["openai", "together", "fireworks"]), default=None,
              help="Hosted provider that trains the model.")
@click.option("--model", required=True, help="Base model to fine-tune, as the provider names it.")
@click.option("--base-url", default=None,
              help="Provider API URL (default: $OPENAI_BASE_URL / $TOGETHER_BASE_URL / $FIREWORKS_BASE_URL, else "
                   "the public API).")
@click.option("--api-key-env", default=None,
              help="Environment variable holding the provider's key (default <PROVIDER>_API_KEY).")
@click.option("--account", default=None, help="Fireworks account id (default $FIREWORKS_ACCOUNT_ID).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs (default: OpenAI's rule for the example count; 1 on Together and Fireworks).")
@click.option("--price", type=click.FloatRange(min=0), default=None,
              help="Training price in USD per 1M tokens, over the built-in table (which has OpenAI's only).")
@click.option("--max-cost", type=float, default=None,
              help="Refuse to launch a job estimated above this many USD, or whose price is unknown.")
@click.option("--validation", is_flag=True, help="Upload the test split as the validation file.")
@click.option("--suffix", default=None, help="Suffix for the fine-tuned model's name.")
@click.option("--dry-run", is_flag=True, help="Check the file and print the price; upload nothing (exit 2 if the "
                                               "provider would refuse it).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Follow the job until it ends (Ctrl-C leaves it running; run again to re-attach).")
@click.option("--poll", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
              help="Longest wait in seconds between two status checks.")
@click.option("--new-job", is_flag=True, help="After a failed or cancelled job, launch another (uploads are reused).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the fine-tuned model id.")
def start(directory: str, provider: str | None, quiet: bool, **options: Any) -> None:
    """Check DIR's latest training file against the provider's rules, price it, upload it and
    launch the job; on success DIR/train.json (and stdout) has the fine-tuned model id."""
    if provider is None:
        raise click.UsageError("give --provider openai, together or fireworks")
    echo = None if quiet else (lambda line: click.echo(line, err=True))
    result = api.train_hosted(directory, provider=provider, echo=echo, **options)  # type: ignore[arg-type]
    if not quiet:
        click.echo(result.format(), err=True)
    if result.job is not None and result.job.status == "succeeded":
        click.echo(result.job.fine_tuned_model)


@train.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--cached", is_flag=True, help="Show what the store last heard; do not ask the provider.")
def status(directory: str, cached: bool) -> None:
    """List DIR's training jobs with their status (and fine-tuned model once done)."""
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
    """Cancel DIR's open training jobs."""
    cancelled = api.train_cancel(directory)
    for job in cancelled:
        click.echo(f"{job.job_id or '(not launched)'}: {job.status}", err=True)
    click.echo(f"cancelled {len(cancelled)} open training jobs", err=True)
