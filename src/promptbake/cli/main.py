"""The ``promptbake`` command line: a thin Click layer over the library.

Every command turns library exceptions into one-line messages here and nowhere else; set
``PROMPTBAKE_RAISE_ERRORS=1`` (or pass ``--debug``) to see the real traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from promptbake import __version__, api
from promptbake.errors import PromptbakeError, cli_spelling

if TYPE_CHECKING:
    from promptbake import Teacher

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns library errors into ``Error: <one line>`` and the error's exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `--debug` is accepted after the subcommand too (`promptbake run SPEC --debug`)
        if "--debug" in args[1:]:
            args = [args[0], *(a for a in args[1:] if a != "--debug")]
            ctx.ensure_object(dict)["debug"] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with cli_spelling():  # errors name options as the flags the user typed
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PromptbakeError as exc:
            if os.environ.get("PROMPTBAKE_RAISE_ERRORS") or (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            # a flag of the wrong type or out of range is bad input like any other: one line, exit 2
            click.echo(f"Error: {exc.format_message()}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # answers are committed as they arrive: the store already holds everything paid for
            click.echo("Interrupted: every answer received so far is stored; run the same command to resume.",
                       err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="promptbake")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Bake prompts into fine-tuning data."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or ctx.obj.get("debug", False)


def teacher_options(fn: F, *, serve_student: bool = True) -> F:
    """The teacher flags shared by every command that calls a model: same flag, same meaning.
    ``serve_student=False`` leaves out ``--student`` for a command where it names the model to
    train (``study``)."""
    options = [
        click.option("--teacher", "teacher_kind", type=click.Choice(["remote", "local"]), default=None,
                     help="remote: an OpenAI-compatible server; local: the embedded SmolLM2 on llama.cpp."),
        click.option("--base-url", multiple=True,
                     help="Server URL (default: $OPENAI_BASE_URL or OpenAI); repeat it to spread requests over "
                          "several servers, each with its own --rpm/--tpm/--concurrency."),
        click.option("--model", default=None, help="Model name sent to the server."),
        click.option("--api-key-env", default=None,
                     help="Name of the environment variable holding the key (default OPENAI_API_KEY)."),
        click.option("--rpm", type=float, default=None, help="Requests per minute limit."),
        click.option("--tpm", type=float, default=None, help="Tokens per minute limit."),
        click.option("--concurrency", type=int, default=None, help="Most requests in flight at once."),
        click.option("--max-attempts", type=int, default=None,
                     help="Attempts per request before it is recorded as failed."),
        click.option("--timeout", type=float, default=None, help="Seconds before a request is abandoned and retried."),
        click.option("--max-retry-after", type=float, default=None,
                     help="Longest server-requested wait (429 retry-after) that pauses everyone; a longer one "
                          "pauses only its own request, this many seconds (default 60)."),
        click.option("--threads", type=int, default=None,
                     help="Local teacher: llama.cpp threads (default one per core; more than the cores slows it)."),
    ]
    if serve_student:
        options.append(click.option("--student", "local_model", type=click.Path(exists=True), default=None,
                                    help="A model folder `promptbake train` wrote (or a GGUF file): the local "
                                         "engine serves it instead of SmolLM2 (implies --teacher local)."))
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from promptbake import Teacher

        keys = ["base_url", "model", "api_key_env", "rpm", "tpm", "concurrency", "max_attempts", "timeout",
                "max_retry_after", "threads", "local_model"]
        urls = kwargs.pop("base_url")
        kwargs["base_url"] = urls[0] if len(urls) == 1 else None
        kind = kwargs.pop("teacher_kind")
        kwargs["teacher"] = Teacher(kind=kind, **{k: kwargs.pop(k, None) for k in keys},
                                    endpoints=tuple(urls) if len(urls) > 1 else ())
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write first-step requests as JSONL here.")
@click.option("--dry-run", is_flag=True, help="Print counts, estimated tokens and cost; write nothing.")
@click.option("--model", default=None, help="Model to price the dry run for (default: the spec's).")
def expand(spec_path: str, output: str | None, dry_run: bool, model: str | None) -> None:
    """Expand SPEC's grid into first-step requests with stable ids."""
    if dry_run:
        click.echo(api.estimate(spec_path, model).format())
        return
    if output is None:
        raise click.UsageError("give -o FILE, or --dry-run")
    count = api.expand(spec_path, output, model)
    click.echo(f"wrote {count} requests to {output}", err=True)


def refuse_given(names: tuple[str, ...], where: str) -> None:
    """Refuse, naming them, the options given on the command line that mean nothing ``where``
    (training on this machine, or at a provider)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-').replace('gguf-type', 'gguf')}" for name in names
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)}: not an option for training {where}")


def generate_options(fn: F) -> F:
    fn = click.option("--no-cache", is_flag=True, help="Re-send requests even if an identical one is stored.")(fn)
    fn = click.option("--max-cost", type=float, default=None, help="Stop cleanly before spending more USD.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True,
                      help="No progress bar, and no per-category table: the summary lines only.")(fn)
    return fn


def batch_options(fn: F) -> F:
    """``--batch`` and its flags for the commands that generate (run, generate): injects ``batch``,
    the :class:`BatchOptions`, or None for online mode."""
    options = [
        click.option("--batch", "batch_mode", is_flag=True,
                     help="Send every step through the provider's Batch API (half price on OpenAI, within 24 h)."),
        click.option("--batch-max-lines", type=click.IntRange(1, 50_000), default=None,
                     help="Most requests per batch input file (the provider's limit: 50,000)."),
        click.option("--batch-retry", type=click.Choice(["batch", "online"]), default="batch", show_default=True,
                     help="Where failed batch requests are retried: another batch, or the online pool."),
        click.option("--batch-poll", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                     help="Longest wait in seconds between two batch status checks."),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mode, lines = kwargs.pop("batch_mode"), kwargs.pop("batch_max_lines")
        retry, poll = kwargs.pop("batch_retry"), kwargs.pop("batch_poll")
        kwargs["batch"] = None
        if mode:
            from promptbake import BatchOptions

            kwargs["batch"] = BatchOptions(retry=retry, poll_max=poll, **({"max_lines": lines} if lines else {}))
        elif lines is not None:
            raise click.UsageError("--batch-max-lines needs --batch")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _shortfall_option(fn: F) -> F:
    return click.option("--allow-shortfall", is_flag=True,
                        help="Exit 0 even when cells are short or requests failed (the shortfall is still "
                             "reported).")(fn)


def _print_failures(failures: Any) -> None:
    """The most common reasons requests failed, at the end of every command that calls a teacher."""
    if failures.total:
        click.echo(failures.format(), err=True)


def _print_generate(report: Any) -> None:
    for step in report.generate.steps:
        if step.planned or step.sent or step.cached:
            click.echo(
                f"round {step.round} {step.step}: {step.planned} planned, {step.cached} from cache, "
                f"{step.sent} sent, {step.ok} ok, {step.failed} failed"
                + (f", {step.shared} identical to one sent and answered by it" if step.shared else "")
                + (f"; {step.stored} already stored by an earlier run" if step.stored else ""),
                err=True,
            )
    for r in report.rounds:
        if r.short_cells:
            click.echo(f"round {r.round}: {r.short_cells} cells short by {r.missing} examples", err=True)
    if report.stalled:
        click.echo(report.stalled, err=True)
    t = report.totals
    g = report.generate
    if g.batch is not None:
        click.echo(g.batch.format(), err=True)
    click.echo(
        f"store: {t['ok']} ok, {t['failed']} failed, {t['pending']} pending; this run: {g.attempts} attempts, "
        f"{g.rate_limited} rate-limited, {g.prompt_tokens + g.completion_tokens:,} tokens, {g.spend()}; "
        f"all runs: ${t['cost']:.4f}; store file: {report.store_path}",
        err=True,
    )
    for name, endpoint in g.endpoints.items():
        click.echo(f"  endpoint {name}: {endpoint.describe()}", err=True)
    for note in g.notes:
        click.echo(f"note: {note}", err=True)
    _print_failures(g.failures)


def _check_shortfall(report: Any, allow: bool, where: str) -> None:
    """Exit 3 (``Shortfall``) when the run got less than the spec asked for, unless allowed."""
    short = report.shortfall()
    if short is None:
        return
    if allow:
        click.echo(f"shortfall allowed: {short}", err=True)
        return
    from promptbake.errors import Shortfall

    raise Shortfall(f"{short}; {where}. Re-run to retry, or pass --allow-shortfall to accept it")


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--store", "store_path", default="promptbake.db", show_default=True, type=click.Path(dir_okay=False),
              help="SQLite store: the cache and the resume point.")
@generate_options
@batch_options
@_shortfall_option
@teacher_options
def generate(spec_path: str, store_path: str, no_cache: bool, max_cost: float | None, quiet: bool, batch: Any,
             allow_shortfall: bool, teacher: Teacher) -> None:
    """Run SPEC's steps against the teacher into the store (re-run to resume)."""
    report = api.generate(spec_path, store_path, teacher=teacher, max_cost=max_cost, no_cache=no_cache,
                          progress=not quiet, batch=batch)
    _print_generate(report)
    _check_shortfall(report, allow_shortfall, f"the store {store_path} holds what was answered")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help="Model to check token limits and price for (default: the target's).")
@click.option("--target", default="openai", show_default=True,
              type=click.Choice(["openai", "azure-openai", "together", "fireworks", "trl", "axolotl"]),
              help="Whose rules to check the file against.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(file: str, model: str | None, target: str, as_json: bool) -> None:
    """Check a fine-tuning FILE the way the target's trainer will; exit 2 on format errors."""
    import json

    from promptbake.errors import ValidationFailed

    report = api.validate(file, model=model, target=target)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        raise ValidationFailed(f"{file}: {report.error_count()} format errors ({', '.join(sorted(report.errors))})")


@cli.command("export")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("-f", "--format", "formats", multiple=True, required=True,
              type=click.Choice(["openai-chat", "messages", "openai-completion", "sharegpt", "alpaca",
                                 "preference-openai", "preference-trl", "hf", "hf-preference"]),
              help="Format to write (repeatable); hf and hf-preference write Parquet and a datasets folder.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--system", default=None,
              help="System message for examples that have none (else the student's template adds its default).")
@click.option("--train-version", type=int, default=None,
              help="Training file to export: 1 is train.jsonl, N is train.vN.jsonl (default: the latest top-up).")
def export_command(directory: str, formats: tuple[str, ...], out: str, system: str | None,
                   train_version: int | None) -> None:
    """Re-export a built dataset DIR (train/test/metadata) for other trainers."""
    result = api.export(directory, formats, out, system=system, train_version=train_version)
    for report in result.files:
        click.echo(report.summary(), err=True)
    click.echo(f"train is {result.train} of {directory}", err=True)


def _build_options(fn: F) -> F:
    fn = click.option("--format", "formats", multiple=True,
                      help="Extra output format (repeatable); train.jsonl/test.jsonl are always openai-chat.")(fn)
    fn = click.option("--seed", type=int, default=None, help="Shuffle/split seed (default: the spec's split.seed).")(fn)
    return fn


def _parse_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",")] if value else []
    except ValueError:
        raise click.BadParameter(f"{value!r}: give whole numbers separated by commas, e.g. 50,100,500") from None
    if any(n < 1 for n in sizes):
        raise click.BadParameter(f"{value!r}: sizes must be at least 1")
    return sizes


def _report_options(fn: F) -> F:
    fn = click.option("--no-report", is_flag=True, help="Do not write OUT/report.html.")(fn)
    fn = click.option("--sizes", callback=_parse_sizes, metavar="N1,N2,...",
                      help="Also write nested, stratified train subsets OUT/train.N.jsonl.")(fn)
    return fn


def _write_report(out_dir: str, store_path: Any, spec: Any, no_report: bool) -> PromptbakeError | None:
    """Write OUT/report.html; a failure is said at once and returned, not raised, so the checks
    after it still run (the data is already written), and the caller exits with it last."""
    if no_report:
        return None
    try:
        click.echo(f"report: {api.report(out_dir, kind='dataset', store=store_path, spec=spec)}", err=True)
    except PromptbakeError as exc:
        if os.environ.get("PROMPTBAKE_RAISE_ERRORS") or (click.get_current_context().obj or {}).get("debug"):
            raise
        click.echo(f"Error: {exc}", err=True)
        return exc
    return None


def _print_build(report: Any, quiet: bool = False) -> None:
    click.echo(report.format(table=not quiet), err=True)
    if report.validation is not None and not report.validation.ok:
        click.echo(report.validation.format(), err=True)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="SQLite store (default: OUT/promptbake.db).")
@generate_options
@_build_options
@_report_options
@batch_options
@_shortfall_option
@teacher_options
def run(spec_path: str, out_dir: str, store_path: str | None, no_cache: bool, max_cost: float | None, quiet: bool,
        formats: tuple[str, ...], seed: int | None, sizes: list[int], no_report: bool, batch: Any,
        allow_shortfall: bool, teacher: Teacher) -> None:
    """expand → generate → build: SPEC in, train/test JSONL out (re-run to resume)."""
    dataset = api.run(spec_path, out_dir, teacher=teacher, store=store_path, max_cost=max_cost, no_cache=no_cache,
                      progress=not quiet, formats=formats, seed=seed, sizes=sizes, batch=batch)
    _print_generate(dataset.report)
    _print_build(dataset.report.build, quiet)
    failed = _write_report(out_dir, dataset.store, spec_path, no_report)
    _check_shortfall(dataset.report, allow_shortfall, f"{out_dir} holds what was possible")
    if failed:
        click.get_current_context().exit(failed.exit_code)


@cli.command()
@click.argument("source", metavar="STORE_OR_SPEC", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="With a SPEC: the store to read (default: OUT/promptbake.db as run keeps it, else promptbake.db).")
@click.option("--spec-name", default=None, help="With a STORE holding several specs: which one.")
@_build_options
@_report_options
def build(source: str, out_dir: str, store_path: str | None, spec_name: str | None, formats: tuple[str, ...],
          seed: int | None, sizes: list[int], no_report: bool) -> None:
    """Turn stored answers into deduplicated, balanced, split fine-tuning files."""
    dataset = api.build(source, out_dir, store=store_path, spec_name=spec_name, formats=formats, seed=seed,
                        sizes=sizes)
    _print_build(dataset.report)
    failed = _write_report(out_dir, dataset.store, source if source.endswith((".yaml", ".yml")) else None, no_report)
    if failed:
        click.get_current_context().exit(failed.exit_code)


def _sigterm_interrupts() -> None:
    """SIGTERM raises KeyboardInterrupt from here on, so a process stopped by a supervisor cleans
    up (stops its children, removes its temporary files) as on Ctrl-C, instead of vanishing."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@cli.group()
def teacher() -> None:
    """The embedded local teacher: SmolLM2-135M-Instruct on llama.cpp (needs promptbake[local])."""


@teacher.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=None, help="Port to listen on (default: a free one).")
@click.option("--model", type=click.Path(exists=True), default=None,
              help="A model folder `promptbake train` wrote, or a GGUF file (default: the embedded SmolLM2).")
def serve(host: str, port: int | None, model: str | None) -> None:
    """Serve the local teacher in the foreground for other tools, until Ctrl-C."""
    import json

    from promptbake.errors import TeacherError

    _sigterm_interrupts()  # SIGTERM stops the server as cleanly as Ctrl-C does
    local = api.local_teacher(host, port, model=model)
    try:
        with local as server:
            body = json.dumps({"model": server.model, "messages": [{"role": "user", "content": "Hello"}]})
            click.echo(f"local teacher: OpenAI-compatible API at {server.base_url} (model {server.model!r}, "
                       f"pid {server.pid}, log {server.log_path})\n"
                       f"send at most {server.concurrency} request(s) at a time; Ctrl-C stops it. Try:\n"
                       f"  curl {server.base_url}/chat/completions -H 'Content-Type: application/json' "
                       f"-d '{body}'", err=True)
            code = local.wait()
    except KeyboardInterrupt:
        click.echo("local teacher stopped", err=True)
        return
    raise TeacherError(f"the local teacher exited on its own with code {code} (log: {server.log_path})")


@teacher.command("build")
@click.option("--source", type=click.Path(exists=True), default=None,
              help="llama-cpp-python's sdist (.tar.gz) or its unpacked folder, of the installed version, "
                   "for a machine without PyPI.")
@click.option("--force", is_flag=True, help="Build again even if it is built.")
def build_teacher(source: str | None, force: bool) -> None:
    """Build llama.cpp's llama-server for the local teacher, once (about 2 minutes).

    It is compiled against the llama.cpp libraries llama-cpp-python installed, from that version's
    sources (pip downloads its sdist), for this CPU. The local teacher then runs one llama-server
    per core, each answering one request at a time, faster than llama-cpp-python's own server,
    which it runs on otherwise. Ctrl-C or SIGTERM stops the compilers and removes the build tree."""
    _sigterm_interrupts()
    try:
        path = api.build_local_teacher(source, force=force, echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo("Interrupted: the build was stopped and its temporary files removed; nothing was installed.",
                   err=True)
        raise SystemExit(130) from None
    click.echo(str(path))


@cli.command("eval")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Test split (openai-chat JSONL).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Per-example results (JSONL).")
@click.option("--spec", "spec_path", default=None, type=click.Path(dir_okay=False),
              help="Spec whose eval block (or example checks) scores the answers; its teacher is the judge.")
@click.option("--metadata", default=None, type=click.Path(dir_okay=False),
              help="Ids and categories (default: the metadata sidecar next to --data).")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="SQLite store of answers, the resume point (default: OUT with a .db suffix).")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME=V1,V2",
              help="Sampling setting to sweep (repeatable; the grid is their Cartesian product).")
@click.option("--check-json", is_flag=True, default=None, help="Check: the answer is valid JSON.")
@click.option("--check-schema", type=click.Path(dir_okay=False), default=None,
              help="Check: the answer is JSON valid against this JSON schema file.")
@click.option("--check-regex", default=None, help="Check: the answer matches this regex (re.search).")
@click.option("--max-length", type=int, default=None, help="Check: the answer has at most N characters.")
@click.option("--exact", is_flag=True, default=None, help="Check: the answer equals the reference answer.")
@click.option("--criteria", default=None, help="Rubric a judge model scores 1-5 (overrides the spec's).")
@click.option("--pass-score", type=click.IntRange(1, 5), default=None,
              help="Judge score that counts as a pass (default 4).")
@click.option("--judge-model", default=None, help="Judge model (default: the spec's teacher model).")
@click.option("--judge-base-url", default=None, help="Judge server URL (default: the spec's teacher).")
@click.option("--model-version", default=None,
              help="Version of the model under test (say, after retraining it under the same name): stored "
                   "answers are reused only for the same version (default: the same base URL).")
@generate_options
@teacher_options
def eval_command(data: str, out: str, spec_path: str | None, metadata: str | None, store_path: str | None,
                 sweeps: tuple[str, ...], check_json: bool | None, check_schema: str | None, check_regex: str | None,
                 max_length: int | None, exact: bool | None, criteria: str | None, pass_score: int | None,
                 judge_model: str | None, judge_base_url: str | None, model_version: str | None, no_cache: bool,
                 max_cost: float | None, quiet: bool, teacher: Teacher) -> None:
    """Run a model (--model, --base-url) on a test split and score it per category."""
    from promptbake import Teacher

    checks = {"json": check_json, "schema": check_schema, "regex": check_regex, "max_length": max_length,
              "exact": exact}
    report = api.evaluate(data, out, teacher=teacher, spec=spec_path, metadata=metadata, checks=checks,
                          criteria=criteria, pass_score=pass_score,
                          judge=Teacher(model=judge_model, base_url=judge_base_url), sweep=sweeps, store=store_path,
                          max_cost=max_cost, no_cache=no_cache, progress=not quiet, model_version=model_version)
    click.echo(report.format(), err=True)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--eval", "eval_path", default=None, type=click.Path(dir_okay=False),
              help="Eval results: JSONL with 'category' and 'pass' or 'score' per line.")
@click.option("--study", "study_path", default=None, type=click.Path(dir_okay=False),
              help="Instead of --eval: a study.jsonl; tops up the categories whose learning curve ends lowest or "
                   "still rises steeply.")
@click.option("--dataset", default=None, type=click.Path(file_okay=False),
              help="The built dataset DIR (with --study, default: the one the study measured).")
@click.option("--threshold", type=float, default=None,
              help="Weak: pass rate (or mean score, or the study's metric at its largest size) below this "
                   "(default 0.8).")
@click.option("--bottom", type=click.IntRange(min=1), default=None, help="Weak: the worst K categories instead.")
@click.option("--rising", type=float, default=None,
              help="With --study: also weak, a category whose metric rose this much or more between the last two "
                   "sizes (default 0.05).")
@click.option("--metric", default="auto", show_default=True,
              help="Rank categories by: pass or score for an eval file (auto: pass rate when it has it); any metric "
                   "the study measured (keys, items, ...) for a study.")
@click.option("--per-category", type=click.IntRange(min=1), default=10, show_default=True,
              help="New examples to add to each weak category.")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="SQLite store (default: DIR/promptbake.db).")
@generate_options
@teacher_options
def topup(spec_path: str, eval_path: str | None, study_path: str | None, dataset: str | None,
          threshold: float | None, bottom: int | None, rising: float | None, metric: str, per_category: int,
          store_path: str | None, no_cache: bool, max_cost: float | None, quiet: bool, teacher: Teacher) -> None:
    """Generate more examples for SPEC's weakest categories into DIR/train.vN.jsonl (test unchanged)."""
    if (eval_path is None) == (study_path is None):
        raise click.UsageError("give --eval FILE or --study study.jsonl")
    result = api.topup(spec_path, eval_path, dataset, study=study_path, per_category=per_category,
                       threshold=threshold, bottom=bottom, rising=rising, metric=metric, teacher=teacher,
                       store=store_path, max_cost=max_cost, no_cache=no_cache, progress=not quiet)
    click.echo(result.report.format(), err=True)
    for run in result.report.runs:
        _print_failures(run.generate.failures)


@cli.command()
@click.option("--prompt", "prompt_path", required=True, type=click.Path(dir_okay=False),
              help="The long prompt (a Jinja template: {{ variables }} come from the inputs' fields and --axis).")
@click.option("--inputs", "inputs_path", default=None, type=click.Path(dir_okay=False),
              help="User inputs: JSONL/CSV with an 'input' field (see --input-field), or text, one per line.")
@click.option("--generate-inputs", type=click.IntRange(min=1), default=None,
              help="Instead of --inputs: ask the teacher for N diverse inputs first (needs --describe).")
@click.option("--describe", default=None, help="What the generated inputs are, e.g. 'support tickets to a SaaS'.")
@click.option("--axis", "axes", multiple=True, metavar="NAME=V1,V2",
              help="A grid axis (repeatable): varies generated inputs; with --inputs, one value: a prompt variable.")
@click.option("--input-field", default="input", show_default=True, help="The inputs file's field holding the input.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
              help="SQLite store (default: OUT/promptbake.db).")
@click.option("--baked-system", default=None, help="The short system message the examples keep (default: none).")
@click.option("--check-schema", type=click.Path(dir_okay=False), default=None,
              help="Keep only answers valid against this JSON schema file.")
@click.option("--check-regex", default=None, help="Keep only answers matching this regex (re.search).")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Keep only answers of at most N characters.")
@click.option("--structured", is_flag=True,
              help="Ask for --check-schema as structured output, retry unparseable answers, store canonical JSON.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Teacher max_tokens per answer.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="Teacher temperature for answers.")
@click.option("--name", default=None, help="Spec name in the store (default: distill_<prompt file name>).")
@click.option("--price-model", default=None,
              help="Model whose prices and tokenizer the break-even uses (default: the teacher model).")
@click.option("--ft-price-factor", type=click.FloatRange(min=0), default=None,
              help="Fine-tuned ÷ base per-token price (default: OpenAI's for the model, else 2).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Fine-tuning epochs for the cost estimate (default: OpenAI's rule).")
@generate_options
@_build_options
@_shortfall_option
@teacher_options
def distill(prompt_path: str, inputs_path: str | None, generate_inputs: int | None, describe: str | None,
            axes: tuple[str, ...], input_field: str, out_dir: str, store_path: str | None, baked_system: str | None,
            check_schema: str | None, check_regex: str | None, max_length: int | None, structured: bool,
            max_tokens: int | None, temperature: float | None, name: str | None, price_model: str | None,
            ft_price_factor: float | None, epochs: int | None, no_cache: bool, max_cost: float | None, quiet: bool,
            formats: tuple[str, ...], seed: int | None, allow_shortfall: bool, teacher: Teacher) -> None:
    """Bake a long --prompt into examples: inputs answered under it, kept without it (re-run to resume)."""
    dataset = api.distill(
        prompt_path, inputs_path, out_dir, teacher=teacher, generate_inputs=generate_inputs, describe=describe,
        axes=axes, input_field=input_field, baked_system=baked_system,
        check_schema=check_schema, check_regex=check_regex, max_length=max_length, structured=structured,
        max_tokens=max_tokens, temperature=temperature, name=name, price_model=price_model,
        ft_price_factor=ft_price_factor, epochs=epochs, store=store_path, max_cost=max_cost, no_cache=no_cache,
        progress=not quiet, formats=formats, seed=seed,
    )
    result = dataset.report
    _print_generate(result.run)
    _print_build(result.run.build, quiet)
    click.echo(result.format(), err=True)
    _check_shortfall(result.run, allow_shortfall, f"{out_dir} holds what was possible")
