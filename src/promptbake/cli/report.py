"""``promptbake report``: a built dataset, an eval file or a study, as one self-contained HTML page."""

from __future__ import annotations

import click

from promptbake import api
from promptbake.cli.main import cli


@cli.command()
@click.argument("source", metavar="DIR_OR_EVAL", type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The HTML file to write (default: DIR/report.html, or the file with an .html suffix).")
@click.option("--eval", "is_eval", is_flag=True,
              help="SOURCE is an eval results file (implied when SOURCE is a file, not a directory).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False),
              help="The run's store, for timings, failures, requested counts and dropped texts "
                   "(default: DIR/promptbake.db when it exists).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False),
              help="The spec, for requested counts when there is no store.")
@click.option("--sample", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most examples of each kind (kept, dropped) listed in the page.")
@click.option("--ratings", type=click.Path(exists=True),
              help="A `promptbake rate` store: adds the people's ratings as a section.")
def report(source: str, output: str | None, is_eval: bool, store_path: str | None, spec_path: str | None,
           sample: int, ratings: str | None) -> None:
    """Write an HTML report of a built dataset DIR, an eval results file or a study.jsonl (learning curves)."""
    written = api.report(source, output, kind="eval" if is_eval else None, store=store_path, spec=spec_path,
                         sample=sample, ratings=ratings)
    click.echo(f"report: {written}", err=True)
