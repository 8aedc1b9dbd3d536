"""``promptbake batch ...``: look after Batch API jobs, and run steps through offline batch files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from promptbake import api
from promptbake.cli.main import cli

if TYPE_CHECKING:
    from promptbake.store.batches import BatchFile


@cli.group()
def batch() -> None:
    """Batch API jobs (status, cancel) and offline batch files (export, import)."""


_KEY_ENV = click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                        help="Environment variable holding the provider's key, for batches whose run did not "
                             "record one (each batch is asked with the key variable it was sent with).")


@batch.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.option("--cached", is_flag=True, help="Show what the store last heard; do not ask the provider.")
@_KEY_ENV
def status(store_path: str, cached: bool, api_key_env: str) -> None:
    """List the batches of STORE with their status and request counts."""
    click.echo(_table(api.batch_status(store_path, refresh=not cached, api_key_env=api_key_env)))


def _table(files: list[BatchFile]) -> str:
    """What `batch status` prints: a header, then one tab-separated line per batch file."""
    if not files:
        return "no batches in this store"
    lines = ["batch\tstep\tstatus\tcounts\tin the store\tinput file\tserver"]
    for f in files:
        counts = f.counts or {}
        state = "collected" if f.collected_at else "open"
        lines.append(f"{f.batch_id or '-'}\t{f.spec_name} step {f.step_index} round {f.round}\t{f.status}\t"
                     f"{counts.get('completed', 0)}/{counts.get('failed', 0)}/{f.lines} done/failed/requests\t"
                     f"{state}\t{f.file_id or '-'}\t{f.base_url}")
    return "\n".join(lines)


@batch.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@_KEY_ENV
def cancel(store_path: str, api_key_env: str) -> None:
    """Cancel the open batches of STORE; the next run keeps what they completed, re-submits the rest."""
    cancelled = api.cancel_batches(store_path, api_key_env=api_key_env)
    for file in cancelled:
        click.echo(f"{file.batch_id}: {file.status}", err=True)
    click.echo(f"cancelled {len(cancelled)} open batches", err=True)


@batch.command("export")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--store", "store_path", default="promptbake.db", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite store: where the imported answers go.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for input files.")
@click.option("--model", default=None, help="Model name in the requests (as the server that runs them calls it).")
@click.option("--batch-max-lines", type=click.IntRange(1, 50_000), default=50_000, show_default=True,
              help="Most requests per input file.")
def export_command(spec_path: str, store_path: str, out_dir: str, model: str | None, batch_max_lines: int) -> None:
    """Write the pending requests of SPEC's next step as batch input files (vLLM run_batch, any provider)."""
    from promptbake import Teacher

    report = api.export_batch(spec_path, store_path, out_dir, teacher=Teacher(model=model), max_lines=batch_max_lines)
    click.echo(report.format(), err=True)


@batch.command("import")
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def import_command(store_path: str, files: tuple[str, ...]) -> None:
    """Store the answers in batch output FILES (vLLM run_batch -o, or a provider's output/error file)."""
    report = api.import_batch(store_path, files)
    click.echo(report.format(), err=True)
