"""``promptbake rate``: the blind side-by-side rating page, and its results."""

from __future__ import annotations

import json

import click

from promptbake import api
from promptbake.cli.main import cli


@cli.command()
@click.argument("sources", nargs=-1, metavar="A B [C ...]")
@click.option("--out", "out", type=click.Path(), default=None,
              help="The ratings store: a SQLite file, or a directory holding ratings.db (resumed when it exists).")
@click.option("--results", "results", type=click.Path(exists=True), default=None,
              help="Print the results of this ratings store instead of serving the page.")
@click.option("--json", "as_json", is_flag=True, help="With --results: the same results as JSON on stdout.")
@click.option("--port", type=click.IntRange(0, 65535), default=8770, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--host", default=None,
              help="Listen on this address instead of 127.0.0.1; the URL then carries a random token.")
@click.option("--raters-per-item", type=click.IntRange(min=1), default=None,
              help="Raters who see each item and pair of sources (default 1; 2 or more measures agreement).")
@click.option("--repeat-share", type=click.FloatRange(0, 1), default=None,
              help="Share of each rater's items shown to them again, sides swapped (default 0.1).")
@click.option("--seed", type=int, default=None, help="Seed of the hand-out order and sides (default: random).")
def rate(sources: tuple[str, ...], out: str | None, results: str | None, as_json: bool, port: int, host: str | None,
         raters_per_item: int | None, repeat_share: float | None, seed: int | None) -> None:
    """Rate answers blind, side by side, in a local web page; or print the results (--results).

    Each source is an eval file (`promptbake eval ... --out A.jsonl`) or a built dataset (its test
    answers), optionally named NAME=PATH. Keys: 1 left better, 2 right better, 3 tie, 4 both bad,
    s skip, u undo. Ratings are stored as they are given; run the same command to resume."""
    if results is not None:
        if sources or out:
            raise click.UsageError("--results reads a store: give no sources and no --out")
        report = api.rate_results(results)
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else report.format())
        return
    if as_json:
        raise click.UsageError("--json goes with --results")
    if out is None:
        raise click.UsageError("give --out RATINGS (the ratings store), or --results RATINGS")

    def ready(url: str) -> None:
        click.echo(f"rate: open {url} (add &rater=NAME or ?rater=NAME, or give your name on the page); Ctrl-C "
                   "stops, every rating is already stored", err=True)
        click.echo(url)

    try:
        api.rate(sources, out, port=port, host=host, raters_per_item=raters_per_item, repeat_share=repeat_share,
                 seed=seed, on_ready=ready)
    except KeyboardInterrupt:
        click.echo(f"rate: stopped; the ratings are in {out}: `promptbake rate --results {out}`", err=True)
