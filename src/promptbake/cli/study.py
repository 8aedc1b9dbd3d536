"""``promptbake study SPEC --sizes 0,10,25``: learning curves from one command."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import click

from promptbake import api
from promptbake.cli.main import cli, generate_options, refuse_given, teacher_options

if TYPE_CHECKING:
    from promptbake import Teacher

# the options that mean one place to train only: given for the other, they are refused by name
LOCAL_ONLY = ("student", "learning_rate", "batch_size", "max_steps", "max_length", "save_steps", "lora", "lora_r",
              "keep_weights")
HOSTED_ONLY = ("provider_base_url", "provider_api_key_env", "account", "price", "new_job", "poll")


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: whole numbers separated by commas, e.g. 0,10,25,50,100") from None
    if not sizes or any(n < 0 for n in sizes):
        raise click.BadParameter(f"{value!r}: sizes are whole numbers ≥ 0 (0: the untrained student)")
    return sizes


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--sizes", required=True, callback=_sizes, metavar="N1,N2,...",
              help="Training examples per student; 0 is the untrained student.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Students per size, trained with seeds 0..N-1: the curve shows their spread.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Study folder: study.jsonl, study.html, students/, evals/ (default: out/<spec name>-study).")
@click.option("--dataset", type=click.Path(file_okay=False), default=None,
              help="The built dataset to study, built there when missing (default: out/<spec name>, as `run` "
                   "builds it).")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME=V1,V2",
              help="Sampling setting to sweep for every model (repeatable): finds each student's best temperature.")
@click.option("--target", "targets", multiple=True, metavar="METRIC=VALUE",
              help="Report the size at which each category reaches METRIC ≥ VALUE (repeatable), e.g. keys=0.8.")
@click.option("--student", type=click.Path(file_okay=False), default=None,
              help="A local Hugging Face model folder to train (default: the embedded SmolLM2-135M-Instruct).")
@click.option("--trained", multiple=True, metavar="SIZE[/SEED]=MODEL",
              help="A model trained elsewhere (a hosted fine-tune) for that size, answered through the teacher's "
                   "server (--base-url, --api-key-env); 0=MODEL is the base model. Repeatable.")
@click.option("--provider", type=click.Choice(["openai", "together", "fireworks"]), default=None,
              help="Fine-tune each student at this hosted provider (as `train --provider`): --model is then the "
                   "base model, size 0, and the fine-tunes answer through the teacher's server (--base-url).")
@click.option("--provider-base-url", default=None,
              help="With --provider: its fine-tuning API (default: $OPENAI_BASE_URL / $TOGETHER_BASE_URL / "
                   "$FIREWORKS_BASE_URL, else the public API).")
@click.option("--provider-api-key-env", default=None,
              help="With --provider: the variable holding its key (default <PROVIDER>_API_KEY).")
@click.option("--account", default=None, help="With --provider fireworks: the account id (default "
                                                "$FIREWORKS_ACCOUNT_ID).")
@click.option("--price", type=click.FloatRange(min=0), default=None,
              help="With --provider: training price in USD per 1M tokens, over the built-in table (OpenAI's only).")
@click.option("--new-job", is_flag=True, help="With --provider: launch again the jobs that failed or were cancelled.")
@click.option("--poll", type=click.FloatRange(min=0.05), default=60.0, show_default=True,
              help="With --provider: longest wait in seconds between two status checks of a job.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Passes over each student's examples (default 3; with --provider whole ones, default the "
                   "provider's: OpenAI's rule for the example count, 1 on Together and Fireworks).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Default: train's (1e-4, or 2e-4 with --lora).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Examples per step.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop each training after N steps.")
@click.option("--max-length", type=click.IntRange(min=16), default=512, show_default=True,
              help="Longest training sequence in tokens.")
@click.option("--save-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Checkpoint every N steps: a killed study resumes its training from there.")
@click.option("--lora", is_flag=True, help="Train LoRA adapters (merged) instead of every weight.")
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True, help="LoRA rank.")
@click.option("--keep-weights", is_flag=True,
              help="Keep each student's safetensors (by default only its GGUF, which is what is evaluated).")
@click.option("--judge-model", default=None, help="Judge model for the spec's rubric (default: the spec's teacher).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (students to train, requests to send, time or cost) and do nothing.")
@generate_options
@functools.partial(teacher_options, serve_student=False)
def study(spec_path: str, sizes: list[int], seeds: int, out_dir: str | None, dataset: str | None,
          sweeps: tuple[str, ...], targets: tuple[str, ...], student: str | None, trained: tuple[str, ...],
          provider: str | None, epochs: float | None, judge_model: str | None, dry_run: bool, no_cache: bool,
          max_cost: float | None, quiet: bool, teacher: Teacher, **options: Any) -> None:
    """How much data does the student need? Train a student per size and seed on nested subsets of
    SPEC's dataset (here, or at a hosted provider with --provider P --model BASE), score each on its
    test split, and draw the learning curves (re-run to resume)."""
    import dataclasses

    from promptbake import Teacher
    from promptbake.errors import TrainingError

    refuse_given(LOCAL_ONLY if provider is not None else HOSTED_ONLY,
                 "with --provider" if provider is not None else "on this machine (they need --provider)")
    hosted: dict[str, Any] = {}
    if provider is not None:  # --model is the base model, not the teacher's: the teacher stays the spec's
        hosted = {"provider": provider, "model": teacher.model, **{k: options[k] for k in HOSTED_ONLY}}
        teacher = dataclasses.replace(teacher, model=None)
    local = {k: options[k] for k in LOCAL_ONLY if k not in ("student", "keep_weights")}
    training: dict[str, Any] = {"epochs": epochs, **local}
    if dry_run:
        plan = api.study_plan(spec_path, out_dir, sizes=sizes, seeds=seeds, dataset=dataset, sweep=sweeps,
                              student=student, trained=trained, teacher=teacher, max_cost=max_cost, **training,
                              **{k: v for k, v in hosted.items() if k != "poll"})
        click.echo(plan.format())
        if plan.refused is not None:
            raise plan.refused
        return
    result = api.study(spec_path, out_dir, sizes=sizes, seeds=seeds, dataset=dataset, sweep=sweeps, targets=targets,
                       student=student, trained=trained, keep_weights=options["keep_weights"], teacher=teacher,
                       judge=Teacher(model=judge_model), max_cost=max_cost, no_cache=no_cache, progress=not quiet,
                       echo=lambda line: click.echo(line, err=True), **training, **hosted)
    click.echo(result.format(), err=True)
    click.echo(str(result.out / "study.jsonl"))
    if result.failed:
        raise TrainingError(f"{', '.join(result.failed)}: not studied, the training failed (said above); "
                            f"{result.out / 'study.jsonl'} holds the other students")
