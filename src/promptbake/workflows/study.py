"""``promptbake study``: how much data does a fine-tune need? Learning curves from one command.

The study builds (or reuses) the spec's dataset, trains one student per size and seed on nested,
stratified subsets of its training split (size 0 is the untrained student), and scores every
student on the same frozen test split with the spec's ``eval`` block, through the same eval that
``promptbake eval`` runs. Two reference rows frame the curve: the teacher's own answers to the
test prompts, and the untrained student given the teacher's full prompt (what prompt baking
replaces). ``study.jsonl`` holds one line per model × setting × category (see
:mod:`promptbake.output.curves`), and ``study.html`` draws the curves.

Nothing is done twice. The dataset comes from the store (re-running ``run`` sends nothing); each
student's folder is named by a hash of its training data, size, seed, student and hyperparameters,
and ``train`` finds a finished one and trains nothing (or resumes an interrupted one from its
checkpoint); each answer is stored under the name the local engine serves the student's GGUF as,
which carries the file's hash, so a re-run is answered from the store. ``kill -9`` anywhere, then
the same command, resumes where it stopped.

Subsets of a topped-up dataset stay nested: the sizes up to the first training file's length are
prefixes of its stratified order (the ``train.N.jsonl`` files ``build --sizes`` writes), and each
top-up version's new examples follow in their own stratified order, so a study run again after
``topup --study`` keeps every student it trained and adds the new version's full size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptbake.curate.checks import AnswerList
from promptbake.curate.sizes import priority_order
from promptbake.errors import BudgetExceeded, InputError
from promptbake.ids import stable_hash
from promptbake.output import curves
from promptbake.output.atomic import ensure_dir, write_jsonl_atomic, write_text_atomic
from promptbake.output.eval_results import setting_label
from promptbake.output.export import read_manifest
from promptbake.output.jsonl import read_jsonl
from promptbake.output.sidecar import read_split
from promptbake.records import Example
from promptbake.specification.models import Spec, TeacherConfig
from promptbake.store.db import Store
from promptbake.teacher.config import Teacher, merge
from promptbake.teacher.generate import GenerateOptions
from promptbake.teacher.tokens import count_messages
from promptbake.train.hosted import (
    JobSet,
    TrainEstimate,
    TrainPlan,
    check_budget,
    launches,
    plan_training,
    recorded_job,
)
from promptbake.train.hosted import TrainOptions as HostedTrainOptions
from promptbake.train.providers import Connection
from promptbake.workflows.evaluate.runner import EvalOptions, Usage, evaluate_async
from promptbake.workflows.evaluate.scoring import Scoring, judge_config
from promptbake.workflows.evaluate.summary import Group
from promptbake.workflows.evaluate.testset import TestItem, load_test, parse_sweeps
from promptbake.workflows.pipeline import default_store
from promptbake.workflows.sync import run_sync

if TYPE_CHECKING:
    from promptbake.store.train_jobs import TrainJob
    from promptbake.train.local import TrainOptions

Echo = Callable[[str], None]
STUDENTS, SUBSETS, EVALS = "students", "subsets", "evals"
EVAL_STORE = "eval.db"
RECORD = "study.json"
REPORT = "study.html"
SAMPLING = ("temperature", "top_p", "max_tokens")  # what the eval sends as the spec's last step did
# Dry-run time estimates when this study has no measurement of its own yet: the embedded study
# (generators/format_study.yaml) on 2 cores shared with other jobs (load 6-11), where SmolLM2-135M
# answered in 5.7 s per request per llama.cpp server (up to 100 tokens) and trained its 25-example
# student at 10.8 tokens/s (4.9 to 46 as the load changed; README "The embedded study").
ANSWER_S = 5.7
TRAIN_TOKENS_PER_S = 10.8


@dataclass(frozen=True, kw_only=True)
class HostedStudents:
    """``study --provider``: each student is fine-tuned at a hosted provider through the code of
    ``train --provider`` (its file checks, its price, its record of jobs in the subset folder's
    store, re-attaching on a re-run) and then answers through the teacher's server like a model
    given with ``trained``; ``model``, the base model, is size 0. Each seed is a job of its own,
    told apart by its suffix (``n25-s1``), which also names the fine-tune."""

    connection: Connection
    model: str
    epochs: int | None = None  # None: the provider's rule (OpenAI's for the example count, else 1)
    price: float | None = None  # USD per 1M training tokens, over the table's
    new_job: bool = False  # launch again after a failed or cancelled job
    poll: float = 60.0  # longest pause between two status checks

    @staticmethod
    def suffix(size: int, seed: int) -> str:
        return f"n{size}-s{seed}"

    def plan(self, folder: Path, size: int, seed: int) -> TrainPlan:
        """The checked and priced job of one student: raises before anything is uploaded when
        the provider would refuse its file."""
        return plan_training(folder, self.connection, self.model, epochs=self.epochs, price=self.price,
                             suffix=self.suffix(size, seed))

    def train_options(self, max_cost: float | None) -> HostedTrainOptions:
        return HostedTrainOptions(epochs=self.epochs, price=self.price, max_cost=max_cost, new_job=self.new_job,
                                  poll=self.poll)

    def answer_name(self, job: TrainJob | None) -> str:
        """The name a student's answers are priced under before it exists: OpenAI names its
        fine-tunes ``ft:BASE:...``, which the price table bills at the fine-tuned rate."""
        if job is not None and job.fine_tuned_model:
            return job.fine_tuned_model
        return f"ft:{self.model}" if self.connection.provider == "openai" else self.model


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    """What to measure: the sizes and seeds, the eval's sweep and targets, and how each student
    trains (the fields of ``train``; every seed in ``range(seeds)`` trains its own). ``trained``
    maps (size, seed) to a model trained elsewhere (a hosted fine-tune's id, answered through the
    teacher's server), ``(0, 0)`` being the base model; a size with such a model is studied at
    the seeds given for it only."""

    sizes: tuple[int, ...]
    seeds: int = 1
    sweep: Sequence[str] | Mapping[str, Sequence[int | float]] = ()
    targets: Mapping[str, float] = field(default_factory=dict)
    epochs: float = 3.0
    learning_rate: float | None = None
    batch_size: int = 4
    max_steps: int | None = None
    max_length: int = 512
    lora: bool = False
    lora_r: int = 16
    save_steps: int = 10
    student: str | None = None  # a Hugging Face model folder; None: the embedded SmolLM2-135M-Instruct
    trained: Mapping[tuple[int, int], str] = field(default_factory=dict)
    keep_weights: bool = False  # keep each student's safetensors (the GGUF is what is evaluated)
    hosted: HostedStudents | None = None  # train at a hosted provider instead of on this machine

    def check(self) -> None:
        if not self.sizes:
            raise InputError("--sizes: give at least one size, e.g. 0,10,25")
        if any(n < 0 for n in self.sizes):
            raise InputError(f"--sizes {','.join(map(str, self.sizes))}: sizes are whole numbers ≥ 0")
        if self.seeds < 1:
            raise InputError(f"--seeds {self.seeds}: at least 1")
        for (size, seed), model in self.trained.items():
            if size not in self.sizes:
                raise InputError(f"--trained {size}={model}: size {size} is not among --sizes")
            if not 0 <= seed < self.seeds:
                raise InputError(f"--trained {size}/{seed}={model}: seeds run from 0 to {self.seeds - 1}")
        if self.hosted is not None:
            if self.student is not None:
                raise InputError(f"--student {self.student}: a model trained on this machine; with --provider the "
                                 f"students are fine-tunes of --model {self.hosted.model}")
            if (0, 0) in self.trained:
                raise InputError(f"--trained 0={self.trained[(0, 0)]}: with --provider, size 0 is the base model "
                                 f"--model {self.hosted.model}")

    @property
    def base(self) -> str | None:
        """Size 0 when it is a model answered through the teacher's server (hosted)."""
        return self.trained.get((0, 0)) or (self.hosted.model if self.hosted is not None else None)

    def hosted_keys(self, sizes: Sequence[int]) -> list[tuple[int, int]]:
        """The (size, seed) students to fine-tune at the provider: every one not trained elsewhere."""
        if self.hosted is None:
            return []
        return [(n, seed) for n in sorted(sizes) if n > 0 for seed in self.seeds_of(n) if (n, seed) not in self.trained]

    def train_options(self, seed: int) -> TrainOptions:
        from promptbake.train.local import TrainOptions

        return TrainOptions(student=self.student, lora=self.lora, lora_r=self.lora_r, max_length=self.max_length,
                            epochs=self.epochs, max_steps=self.max_steps, learning_rate=self.learning_rate,
                            batch_size=self.batch_size, seed=seed, validation=0, save_steps=self.save_steps)

    def seeds_of(self, size: int) -> list[int]:
        """The seeds a size is studied at: those of its models trained elsewhere, else every seed."""
        given = sorted(seed for n, seed in self.trained if n == size)
        return given or list(range(self.seeds))


def parse_trained(trained: Mapping[Any, str] | Sequence[str] | None) -> dict[tuple[int, int], str]:
    """Models trained elsewhere by (size, seed): ``["25=ft:...", "25/1=ft:..."]`` (the ``--trained``
    flags) or ``{25: "ft:...", (25, 1): "ft:..."}``; a size without a seed is seed 0."""
    if not trained:
        return {}
    pairs: list[tuple[Any, str]] = list(trained.items()) if isinstance(trained, Mapping) else []
    if not isinstance(trained, Mapping):
        for text in trained:
            key, sep, model = text.partition("=")
            if not sep or not model.strip():
                raise InputError(f"--trained {text!r}: write SIZE=MODEL or SIZE/SEED=MODEL, e.g. 25=ft:gpt-4o-mini:...")
            pairs.append((key.strip(), model.strip()))
    parsed: dict[tuple[int, int], str] = {}
    for key, model in pairs:
        size, seed = (key if isinstance(key, tuple) else (*str(key).split("/", 1), 0)[:2])
        try:
            parsed[(int(str(size)), int(str(seed)))] = str(model)
        except ValueError:
            raise InputError(f"--trained {key}={model}: the size (and seed) must be whole numbers") from None
    return parsed


def eval_sampling(spec: Spec) -> dict[str, Any]:
    """What every eval request carries under its setting: the spec's last step's temperature (0,
    greedy, when it sets none: a student's answers then depend on its training alone), top_p and
    max_tokens (which also bounds a student that would ramble on)."""
    step = spec.steps[-1].model_dump()
    sampling = {k: step[k] for k in SAMPLING if step.get(k) is not None}
    return {"temperature": 0, **sampling}


def default_out(spec: Spec) -> Path:
    """Where a study of ``spec`` writes when no ``out`` is given."""
    return Path("out") / f"{spec.name}-study"


def default_dataset(spec: Spec) -> Path:
    """The dataset a study reuses when none is given: the folder ``promptbake run SPEC`` builds."""
    return Path("out") / spec.name


# --- the dataset and its nested subsets -------------------------------------------------------


def dataset_state(spec: Spec, directory: Path) -> str:
    """``current`` (built from this spec), ``stale`` (built from another version of it, with the
    store to rebuild), ``foreign`` (built files without a store: used as they are) or ``missing``."""
    built = (directory / "train.jsonl").is_file() and (directory / "test.jsonl").is_file()
    has_store = default_store(directory).is_file()
    if built and read_manifest(directory).get("spec_hash") == spec.spec_hash():
        return "current"
    if built and not has_store:
        return "foreign"
    return "stale" if built else "missing"


async def ensure_dataset(spec: Spec, directory: Path, sizes: Sequence[int], teacher: Teacher | None,
                         options: GenerateOptions, echo: Echo) -> list[str]:
    """Build the dataset (or bring it up to date), with ``train.N.jsonl`` for each size; the notes
    say what was done. A store that already holds every answer sends nothing."""
    from promptbake.curate.builder import build
    from promptbake.workflows.pipeline import run_async

    state = dataset_state(spec, directory)
    wanted = sorted({n for n in sizes if n > 0})
    if state == "foreign":
        return [f"{directory}: built without a store here; its files are used as they are"]
    if state == "current":
        from promptbake.output.targets import target_for_teacher

        config = merge(spec.teacher, teacher)
        with Store(default_store(directory), lock=False) as store:
            build(spec, store, directory, sizes=wanted, target=target_for_teacher(config.kind, config.base_url))
        return [f"{directory}: the dataset is current (rebuilt from its store with the subsets)"]
    echo(f"building the dataset in {directory} (the teacher answers what the store does not hold)")
    report = await run_async(spec, directory, None, teacher, options, sizes=wanted, command="study")
    short = report.shortfall()
    return [f"the dataset is short: {short}; the study uses what was built"] if short else []


@dataclass
class Versions:
    """The training files of a dataset (``train.jsonl``, then each top-up's ``train.vN.jsonl``),
    read once, and the nested order of their examples."""

    names: list[str]
    examples: list[list[Example]]

    @classmethod
    def read(cls, directory: Path) -> Versions:
        names = ["train.jsonl", *(str(t["train"]) for t in read_manifest(directory).get("topups") or [])]
        return cls(names, [read_split(directory / name, "train").examples for name in names])

    @property
    def latest(self) -> list[Example]:
        return self.examples[-1]

    def order(self) -> list[Example]:
        """Every example of the latest version, in the order subsets take them: the first file's
        stratified order (``build --sizes``), then each later version's new examples in theirs."""
        ordered: list[Example] = []
        seen: set[str] = set()
        for examples in self.examples:
            fresh = [e for e in examples if e.id not in seen]
            ordered += [fresh[i] for i in priority_order(fresh)]
            seen.update(e.id for e in fresh)
        return ordered

    def sizes(self) -> list[int]:
        """The full size of each top-up version: a re-run of the study adds them."""
        return [len(examples) for examples in self.examples[1:]]


def subsets(versions: Versions, sizes: Sequence[int]) -> tuple[dict[int, list[Example]], list[str]]:
    """``{N: the first N examples of the nested order}`` for each size from 1 to the latest
    training file's length, and a warning for each larger one. Each subset lists its examples in
    the order of the first file that has them (``train.jsonl``'s, as ``train.N.jsonl`` does, then
    each top-up's new ones in its file's order), so a top-up leaves the earlier subsets byte for
    byte as they were, and their students trained."""
    order = versions.order()
    position: dict[str, int] = {}
    for examples in versions.examples:
        for example in examples:
            position.setdefault(example.id, len(position))
    chosen: dict[int, list[Example]] = {}
    warnings = []
    for n in sorted(set(sizes)):
        if n > len(order):
            warnings.append(f"--sizes {n}: the training split has only {len(order)} examples; size {n} skipped")
        elif n > 0:
            chosen[n] = sorted(order[:n], key=lambda e: position[e.id])
    return chosen, warnings


def write_subset(root: Path, size: int, examples: list[Example]) -> tuple[Path, str]:
    """A dataset folder holding exactly the subset (``train.jsonl`` and its sidecar), which
    ``train`` reads; rewritten only when its content changes. Returns (folder, content hash)."""
    folder = root / SUBSETS / f"size-{size}"
    train, meta = _subset_texts(examples)
    digest = stable_hash(train, meta, length=32)
    for name, text in (("train.jsonl", train), ("metadata.jsonl", meta)):
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            ensure_dir(folder)
            write_text_atomic(path, text)
    return folder, digest


# --- the models under test --------------------------------------------------------------------


@dataclass
class Model:
    """One row group of the study: what answers, and what it was trained on."""

    kind: str  # student, teacher, prompted
    size: int | None
    seed: int | None
    label: str  # the folder / eval file name
    config: TeacherConfig | None = None  # None: the teacher row, whose answers are the test split's
    train: dict[str, Any] | None = None  # what training did (train.json's figures)
    name: str = ""  # the model name its answers are stored under


def student_key(subset_hash: str, student: str | None, settings: Mapping[str, Any]) -> str:
    """Names a trained student's folder: its data, size (in the data), student and settings."""
    return stable_hash(subset_hash, str(Path(student).resolve()) if student else "default", dict(settings),
                       length=10)


def local_config(folder: Path, teacher: Teacher | None) -> TeacherConfig:
    """The local engine serving the GGUF in ``folder`` (on the teacher's ``--threads``)."""
    return merge(TeacherConfig(), Teacher(local_model=str(folder), threads=teacher.threads if teacher else None))


def hosted_config(spec: Spec, teacher: Teacher | None, model: str) -> TeacherConfig:
    """A model trained elsewhere, answered through the teacher's server (its URL, key and limits)."""
    config = merge(spec.teacher, teacher)
    return config.model_copy(update={"model": model, "kind": "remote", "local_model": None})


def untrained_gguf(root: Path, student: str | None, echo: Echo) -> Path:
    """The untrained student as a GGUF of the same type the trained ones get (q8_0), so size 0
    differs from the others by its training only. Written once, atomically."""
    from promptbake.train.gguf import write_gguf
    from promptbake.train.student import check_student, resolve_student

    resolved = resolve_student(student, echo=echo)
    folder = root / STUDENTS / f"size-0-{stable_hash(resolved.identity, length=10)}"
    target = folder / "model.gguf"
    if not target.is_file():
        check_student(resolved, gguf=True)
        ensure_dir(folder)
        for stale in folder.glob(".model.gguf.*"):  # a write a kill cut short
            stale.unlink()
        echo(f"writing the untrained student's GGUF: {target}")
        partial = folder / f".model.gguf.{os.getpid()}"
        write_gguf(resolved.path, partial, "q8_0", name=f"promptbake untrained {Path(resolved.name).name}")
        os.replace(partial, target)
        write_text_atomic(folder / "student.json", json.dumps({"student": resolved.name}) + "\n")
    return folder


def train_student(subset: Path, folder: Path, options: StudyOptions, seed: int, progress: bool,
                  echo: Echo) -> dict[str, Any]:
    """Train (or find trained, or resume) one student; its figures for the study line."""
    from promptbake.train.local import CHECKPOINTS, RUN, train
    from promptbake.train.record import RECORD

    if folder.is_dir() and not (folder / RECORD).is_file() and not (folder / CHECKPOINTS / RUN).is_file():
        # killed before training recorded anything to resume from (the checkpoint folder made, its
        # run.json not yet written): the study's own folder, holding nothing, is started afresh
        shutil.rmtree(folder)
    result = train(subset, folder, options.train_options(seed), progress=progress, echo=echo)
    if not options.keep_weights:  # the GGUF is what the study evaluates; 0.5 GB of float32 each is not kept
        for name in ("model.safetensors", "adapter"):
            path = folder / name
            with contextlib.suppress(OSError):
                path.unlink() if path.is_file() else None
    record = result.record
    perf = record.get("performance") or {}
    steps = record.get("steps") or []
    return {"examples": (record.get("examples") or {}).get("train"), "steps": record.get("global_step"),
            "tokens": perf.get("tokens"), "seconds": perf.get("train_s"), "cpu_s": perf.get("cpu_s"),
            "wall_s": perf.get("wall_s"),
            "loss": steps[-1]["loss"] if steps else None, "trained_now": result.trained}


# --- scoring into study lines -----------------------------------------------------------------


def _lines(model: Model, rows: list[dict[str, Any]], spec: Spec, dataset: Path,
           settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One study line per setting × category (and ``all``) of one model's scored answers."""
    groups: dict[tuple[str, str], Group] = {}
    spent: dict[tuple[str, str], dict[str, float]] = {}
    verdicts: dict[tuple[str, str], list[float]] = defaultdict(list)
    sent: dict[str, dict[str, Any]] = {}
    for row in rows:
        label = setting_label(row["settings"])
        sent[label] = {**settings, **row["settings"]}
        for category in (row["category"], curves.ALL):
            key = (category, label)
            groups.setdefault(key, Group(*key)).add(row)
            total = spent.setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "seconds": 0.0})
            for name, value in (row.get("usage") or {}).items():
                total[name] += value
            if "judge" in (row.get("scores") or {}):
                verdicts[key].append(row["scores"]["judge"])
    order = sorted(groups, key=lambda k: (list(sent).index(k[1]), k[0] == curves.ALL, k[0]))
    listed = any("metrics" in row for row in rows)
    lines = []
    for category, label in order:
        group, usage = groups[(category, label)], spent[(category, label)]
        data = group.as_dict()
        metrics = {"pass": data["pass_rate"], "score": data["mean_score"]}
        if listed:  # all five, None where none applies (``values`` when no answer had the keys)
            metrics |= {name: data.get(f"metric_{name}") for name in AnswerList.METRICS}
        if verdicts.get((category, label)):
            metrics["judge"] = statistics.fmean(verdicts[(category, label)])
        lines.append({
            "study": spec.name, "dataset": str(dataset), "kind": model.kind, "size": model.size, "seed": model.seed,
            "setting": label, "settings": sent[label], "category": category, "n": group.n, "errors": group.errors,
            "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
            "tokens": {"prompt": int(usage["prompt_tokens"]), "completion": int(usage["completion_tokens"])},
            "eval_s": round(usage["seconds"], 2), "cost": round(usage["cost"], 6),
            "train": model.train, "model": model.name or None,
        })
    return lines


def full_prompts(spec: Spec, dataset: Path, items: list[TestItem]) -> dict[str, list[dict[str, Any]]] | None:
    """Per test item, the messages the teacher was sent for its answer (the last step's request,
    read from the dataset's store): the prompt that baking replaces. None without a store."""
    store_path = default_store(dataset)
    metadata = {row["id"]: row for _, row in read_jsonl(dataset / "metadata.jsonl", "metadata")
                if row.get("split") == "test"} if (dataset / "metadata.jsonl").is_file() else {}
    wanted = {item.id: (metadata.get(item.id) or {}).get("provenance", {}).get("request") for item in items}
    if not store_path.is_file() or not all(wanted.values()):
        return None
    with Store(store_path, lock=False) as store:
        bodies = {r.id: r.body for r in store.succeeded(spec.name, len(spec.steps) - 1)}
    if not all(request in bodies for request in wanted.values()):
        return None
    return {item: bodies[str(request)]["messages"] for item, request in wanted.items()}


def teacher_usage(spec: Spec, dataset: Path, items: list[TestItem]) -> dict[str, dict[str, float]]:
    """What the teacher's test answers cost, by test item id, from the dataset's store."""
    store_path = default_store(dataset)
    if not store_path.is_file() or not (dataset / "metadata.jsonl").is_file():
        return {}
    request = {row["id"]: (row.get("provenance") or {}).get("request")
               for _, row in read_jsonl(dataset / "metadata.jsonl", "metadata") if row.get("split") == "test"}
    with Store(store_path, lock=False) as store:
        spent = store.answer_usage(r for r in request.values() if r)
    return {item.id: spent[str(request.get(item.id))] for item in items if request.get(item.id) in spent}


# --- the run ----------------------------------------------------------------------------------


@dataclass
class StudyReport:
    """What a study did: the lines written, what was trained and sent, and where the files are."""

    out: Path
    dataset: Path
    lines: list[dict[str, Any]]
    targets: dict[str, float]
    trained: list[str] = field(default_factory=list)  # students trained (or resumed) by this run
    reused: list[str] = field(default_factory=list)  # students found trained
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    hosted: str | None = None  # what this run did at the provider (study --provider)
    failed: dict[str, str] = field(default_factory=dict)  # student → why it was not studied

    @property
    def sent(self) -> int:
        return self.usage.sent

    def format(self) -> str:
        from promptbake.output.curves import curves as curve_set
        from promptbake.output.curves import gains, metric_names, reached, references

        lines = list(self.notes)
        names = metric_names(self.lines)
        rank = curves.ranking_metric(self.lines, next(iter(self.targets), None)) if names else None
        if names and rank is not None:
            header = f"{'model':<22}" + "".join(f" {m:>7}" for m in names)
            lines.append(header)
            refs = {m: references(self.lines, m, rank) for m in names}
            for kind in ("teacher", "prompted"):
                if any(kind in refs[m] for m in names):
                    lines.append(f"{kind:<22}" + "".join(f" {_pct(refs[m].get(kind, {}).get(curves.ALL)):>7}"
                                                         for m in names))
            drawn = {m: curve_set(self.lines, m, rank).get(curves.ALL, []) for m in names}
            for size in sorted({p.size for points in drawn.values() for p in points}):
                cells = []
                for m in names:
                    point = next((p for p in drawn[m] if p.size == size), None)
                    cells.append(_pct(point.mean if point else None)
                                 + ("" if point is None or point.low == point.high else "±"))
                name = f"student, {size} example" + ("s" if size != 1 else "")
                lines.append(f"{name:<22}" + "".join(f" {c:>7}" for c in cells))
            for metric, value in self.targets.items():
                if metric not in names:
                    lines.append(f"target {metric}={value:g}: the study did not measure {metric}")
                    continue
                per = curve_set(self.lines, metric, rank)
                got = ", ".join(f"{c} {reached(p, value) if reached(p, value) is not None else 'not reached'}"
                                for c, p in per.items())
                lines.append(f"target {metric} ≥ {value:g} first reached at: {got}")
            if len({line["setting"] for line in self.lines if line["kind"] != "teacher"}) > 1:
                best = curves.best_settings([x for x in self.lines if x["kind"] != "teacher"], rank)
                lines.append(f"best setting by {rank}: " + ", ".join(
                    f"{kind if kind != 'student' else f'{size} examples' + ('' if seed is None else f'/{seed}')} "
                    f"{setting}" for (kind, size, seed), setting in sorted(
                        best.items(), key=lambda kv: (kv[0][0] != "prompted", kv[0][1] or 0, kv[0][2] or 0))))
            step = gains(curve_set(self.lines, rank, rank))
            if step:
                lines.append(f"{rank} gained between the last two sizes: " + ", ".join(
                    f"{c} {g.gain:+.2f} ({g.start}→{g.end})" for c, g in step.items()))
        lines += [f"{student}: not studied: {why}" for student, why in self.failed.items()]
        u = self.usage
        lines.append(f"this run: {len(self.trained)} students trained, {len(self.reused)} found trained"
                     + (f" ({self.hosted})" if self.hosted else "") + "; "
                     f"{u.planned} answers, {u.planned - u.sent} from the store, {u.sent} sent ({u.failed} failed), "
                     f"${u.cost:.4f}; {self.seconds:.0f} s")
        lines.append(f"study: {self.out / curves.STUDY_FILE}" + (f"; report: {self.report}" if self.report else ""))
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


@dataclass
class Study:
    """One study in progress: the spec, where things go, and what has been done so far."""

    spec: Spec
    out: Path
    dataset: Path
    options: StudyOptions
    teacher: Teacher | None
    judge: Teacher | None
    generate: GenerateOptions
    progress: bool
    echo: Echo
    report: StudyReport = field(init=False)

    def __post_init__(self) -> None:
        self.report = StudyReport(self.out, self.dataset, [], dict(self.options.targets))

    async def run(self) -> StudyReport:
        started = time.monotonic()
        options = self.options
        options.check()
        scoring = Scoring.build(self.spec)
        grid = parse_sweeps(options.sweep)
        judge = judge_config(self.spec, self.judge) if scoring.criteria else None
        self.report.notes += await ensure_dataset(self.spec, self.dataset, options.sizes, self.teacher, self.generate,
                                                  self.echo)
        items = load_test(self.dataset / "test.jsonl")
        versions = Versions.read(self.dataset)
        sizes = sorted({*options.sizes, *versions.sizes()})
        chosen, warnings = subsets(versions, sizes)
        self.report.notes += [f"warning: {w}" for w in warnings]
        sampling = eval_sampling(self.spec)
        eval_options = EvalOptions(self.out / EVAL_STORE, max_cost=self.generate.max_cost, progress=self.progress)
        ensure_dir(self.out)
        lines: list[dict[str, Any]] = []
        jobs = self._hosted_jobs(chosen)
        if jobs is not None:  # all checked and priced before any upload; they train while the references answer
            jobs.check()
            await jobs.launch()

        async def score(model: Model, test: list[TestItem], given: Mapping[str, str] | None = None) -> None:
            config = model.config or TeacherConfig(model="teacher")
            rows = await evaluate_async(test, config, eval_options, scoring=scoring, grid=grid if given is None else
                                        [{}], judge=judge, usage=self.report.usage, sampling=sampling, given=given,
                                        with_usage=True)
            if given is not None:
                spent = teacher_usage(self.spec, self.dataset, test)
                for row in rows:
                    row["usage"] = spent.get(row["id"])
            ensure_dir(self.out / EVALS)
            write_jsonl_atomic(self.out / EVALS / f"{model.label}.jsonl", rows)
            lines.extend(_lines(model, rows, self.spec, self.dataset, sampling if given is None else {}))

        # the reference rows and size 0 first: they frame the curve, and cost no training
        teacher_answers = {item.id: item.reference for item in items if item.reference is not None}
        if teacher_answers:
            models = read_manifest(self.dataset).get("teacher", {}).get("models") or ["teacher"]
            await score(Model("teacher", None, None, "teacher", name=", ".join(models)), items, teacher_answers)
        base = self._base_model()
        if 0 in options.sizes:
            await score(replace(base, kind="student", size=0), items)
        prompts = full_prompts(self.spec, self.dataset, items)
        if prompts is None:
            self.report.notes.append("no prompted row: the teacher's prompts are not in a store beside the dataset")
        else:
            prompted = [replace(item, prompt=prompts[item.id]) for item in items]
            await score(replace(base, kind="prompted", size=None, label=f"prompted-{base.label}"), prompted)
        if jobs is not None:
            await jobs.follow()
            provider = options.hosted.connection.provider if options.hosted else ""
            self.report.hosted = (f"at {provider}: {jobs.uploaded} file{'s' if jobs.uploaded != 1 else ''} uploaded, "
                                  f"{jobs.created} job{'s' if jobs.created != 1 else ''} launched")
        for size, examples in chosen.items():
            for seed in options.seeds_of(size):
                if jobs is not None and (size, seed) in jobs.errors:
                    self.report.failed[f"size {size} seed {seed}"] = str(jobs.errors[(size, seed)])
                    continue
                model = self._student(size, seed, examples, jobs)
                await score(model, items)
        write_jsonl_atomic(self.out / curves.STUDY_FILE, lines)
        self.report.lines = lines
        self.report.seconds = time.monotonic() - started
        write_text_atomic(self.out / RECORD, json.dumps(self._record(sizes), indent=2, ensure_ascii=False) + "\n")
        from promptbake.output.study_report import write_study_report

        self.report.report = write_study_report(self.out / curves.STUDY_FILE, self.out / REPORT,
                                                targets=self.report.targets)
        return self.report

    def _hosted_jobs(self, chosen: Mapping[int, list[Example]]) -> JobSet | None:
        """The students to fine-tune at the provider, each checked and priced on its subset."""
        hosted = self.options.hosted
        if hosted is None:
            return None
        plans = {}
        for size, seed in self.options.hosted_keys(list(chosen)):
            folder, _ = write_subset(self.out, size, chosen[size])
            plans[(size, seed)] = plan = hosted.plan(folder, size, seed)
            self.echo(f"student: {size} examples, seed {seed}, at {hosted.connection.provider}: "
                      f"{plan.estimate.format(note=False)}")
        for note in dict.fromkeys([*(f"warning: {w}" for plan in plans.values() for w in plan.warnings),
                                   *(plan.estimate.token_note for plan in plans.values())]):  # once, not per student
            if note:
                self.echo(note)
        return JobSet(plans, hosted.train_options(self.generate.max_cost), self.echo)

    def _elsewhere(self, size: int, seed: int | None, model: str, train: dict[str, Any] | None = None) -> Model:
        """A model trained elsewhere, answered through the teacher's server."""
        label = f"size-{size}-{_slug(model)}" if seed is None else f"size-{size}-seed-{seed}-{_slug(model)}"
        return Model("student", size, seed, label, hosted_config(self.spec, self.teacher, model), train, name=model)

    def _base_model(self) -> Model:
        hosted = self.options.base
        if hosted is not None:
            return self._elsewhere(0, None, hosted)
        folder = untrained_gguf(self.out, self.options.student, self.echo)
        config = local_config(folder, self.teacher)
        from promptbake.teacher.config import model_name

        return Model("student", 0, None, folder.name, config, name=model_name(config))

    def _student(self, size: int, seed: int, examples: list[Example], jobs: JobSet | None) -> Model:
        hosted = self.options.trained.get((size, seed))
        if hosted is not None:
            return self._elsewhere(size, seed, hosted)
        job = jobs.jobs.get((size, seed)) if jobs is not None else None
        if job is not None and jobs is not None:
            self.echo(f"student: {size} examples, seed {seed} → {job.fine_tuned_model} ({job.provider} job "
                      f"{job.job_id})")
            model = self._elsewhere(size, seed, str(job.fine_tuned_model), hosted_figures(job, len(examples)))
            (self.report.reused if (size, seed) in jobs.found else self.report.trained).append(model.label)
            return model
        subset, digest = write_subset(self.out, size, examples)
        settings = self.options.train_options(seed).settings()
        folder = self.out / STUDENTS / f"size-{size}-seed-{seed}-{student_key(digest, self.options.student, settings)}"
        self.echo(f"student: {size} examples, seed {seed} → {folder}")
        figures = train_student(subset, folder, self.options, seed, self.progress, self.echo)
        (self.report.trained if figures.pop("trained_now") else self.report.reused).append(folder.name)
        config = local_config(folder, self.teacher)
        from promptbake.teacher.config import model_name

        return Model("student", size, seed, folder.name, config, figures, model_name(config))

    def _record(self, sizes: list[int]) -> dict[str, Any]:
        o = self.options
        return {"spec": self.spec.name, "spec_hash": self.spec.spec_hash(), "dataset": str(self.dataset),
                "sizes": sizes, "seeds": o.seeds, "sweep": parse_sweeps(o.sweep), "targets": dict(o.targets),
                "training": o.train_options(0).settings() | {"seed": list(range(o.seeds))},
                "student": (f"{o.hosted.model} at {o.hosted.connection.provider}" if o.hosted is not None else
                            o.student or "SmolLM2-135M-Instruct (embedded)"),
                "trained_elsewhere": {f"{size}/{seed}": model for (size, seed), model in o.trained.items()},
                "hosted": None if o.hosted is None else {
                    "provider": o.hosted.connection.provider, "base_url": o.hosted.connection.base_url,
                    "account": o.hosted.connection.account, "model": o.hosted.model, "epochs": o.hosted.epochs,
                    "price": o.hosted.price},
                "last_run": {"seconds": round(self.report.seconds, 1),
                             "trained": self.report.trained, "reused": self.report.reused,
                             "answers": self.report.usage.planned, "sent": self.report.usage.sent}}


def hosted_figures(job: TrainJob, examples: int) -> dict[str, Any]:
    """What a hosted student's study lines say about its training (``train`` of a local one's)."""
    return {"examples": examples, "provider": job.provider, "base_model": job.base_model, "job_id": job.job_id,
            "epochs": job.settings.get("epochs"), "trained_tokens": job.trained_tokens,
            "estimated_cost": (job.estimate or {}).get("cost")}


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40] or "model"


async def study_async(spec: Spec, out: str | Path | None = None, *, dataset: str | Path | None = None,
                      options: StudyOptions, teacher: Teacher | None = None, judge: Teacher | None = None,
                      generate: GenerateOptions | None = None, progress: bool = True,
                      echo: Echo | None = None) -> StudyReport:
    """Run (or resume) the study; see the module docstring."""
    study = Study(spec, Path(out) if out is not None else default_out(spec),
                  Path(dataset) if dataset is not None else default_dataset(spec), options, teacher, judge,
                  generate or GenerateOptions(progress=progress), progress, echo or (lambda _: None))
    return await study.run()


def study(*args: Any, **kwargs: Any) -> StudyReport:
    """Blocking form of :func:`study_async` (safe in a notebook cell)."""
    return run_sync(study_async(*args, **kwargs))


# --- the dry run --------------------------------------------------------------------------------


@dataclass
class StudyPlan:
    """What a study would do, counted before anything runs: the models to train, the requests to
    send, and the time this machine would take (or the hosted eval's cost)."""

    spec: str
    out: Path
    dataset: Path
    lines: list[str] = field(default_factory=list)
    train_s: float = 0.0
    answer_s: float = 0.0
    generate_s: float = 0.0
    requests: int = 0
    to_train: int = 0
    cost: float = 0.0
    basis: str = ""
    training: list[TrainEstimate] = field(default_factory=list)  # the hosted jobs to launch
    refused: BudgetExceeded | None = None  # what --max-cost would refuse, before anything is uploaded

    def format(self) -> str:
        total = self.generate_s + self.train_s + self.answer_s
        tail = [f"total: {self.to_train} students to train, {self.requests} requests to send, "
                f"~{_duration(total)} on this machine" + (f", ≤ ${self.cost:.4f} hosted" if self.cost else ""),
                f"time estimates: {self.basis}"]
        if self.training:
            known = [e.cost for e in self.training if e.cost is not None]
            price = (f"estimated ${sum(known):,.2f}" if len(known) == len(self.training) else
                     "estimated cost unknown (give --price USD_PER_1M)")
            tail.insert(1, f"hosted training: {len(self.training)} jobs to launch, "
                           f"{sum(e.billed_tokens for e in self.training):,} billed tokens, {price}")
        return "\n".join([f"study of {self.spec} → {self.out} (dataset {self.dataset})", *self.lines, *tail])


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _measured(out: Path) -> tuple[float | None, float | None]:
    """This study's own speeds so far: training tokens/s (its students' train.json) and seconds
    per answer (its eval store's attempts), when it has any."""
    speeds = []
    for record in (out / STUDENTS).glob("*/train.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            speed = float(json.loads(record.read_text(encoding="utf-8"))["performance"]["tokens_per_s"])
            speeds.append(speed) if speed > 0 else None
    answer = None
    if (out / EVAL_STORE).is_file():
        with Store(out / EVAL_STORE, lock=False) as store:
            row = store.db.execute("SELECT AVG(latency_ms) FROM attempts WHERE error_kind IS NULL").fetchone()
            answer = row[0] / 1000 if row and row[0] else None
    return (statistics.median(speeds) if speeds else None), answer


def plan_study(spec: Spec, out: str | Path | None = None, *, dataset: str | Path | None = None,
               options: StudyOptions, teacher: Teacher | None = None, max_cost: float | None = None) -> StudyPlan:
    """The dry run: reads what exists (dataset, students, answers) and writes nothing. Hosted
    students are checked and priced as ``train --provider --dry-run`` does, on their subsets
    written to a temporary folder; ``plan.refused`` is what ``max_cost`` would refuse."""
    with tempfile.TemporaryDirectory(prefix="promptbake-study-plan-") as scratch:
        return _plan(spec, out, dataset, options, teacher, max_cost, Path(scratch))


def _plan(spec: Spec, out: str | Path | None, dataset: str | Path | None, options: StudyOptions,
          teacher: Teacher | None, max_cost: float | None, scratch: Path) -> StudyPlan:
    from promptbake.plan.estimate import estimate
    from promptbake.teacher.config import model_name
    from promptbake.teacher.local import core_count
    from promptbake.teacher.pricing import PriceTable

    options.check()
    out = Path(out) if out is not None else default_out(spec)
    directory = Path(dataset) if dataset is not None else default_dataset(spec)
    plan = StudyPlan(spec.name, out, directory)
    speed, answer_s = _measured(out)
    plan.basis = ("this study's own measurements" if speed and answer_s else
                  f"{'this study' if speed or answer_s else 'none yet of this study'}; otherwise SmolLM2-135M on 2 "
                  f"shared cores: {ANSWER_S} s per answer per llama.cpp server, {TRAIN_TOKENS_PER_S:.0f} training "
                  "tokens/s")
    speed, answer_s = speed or TRAIN_TOKENS_PER_S, answer_s or ANSWER_S
    servers = max(1, core_count())
    config = merge(spec.teacher, teacher)
    state = dataset_state(spec, directory)
    grid = parse_sweeps(options.sweep)
    sampling = eval_sampling(spec)
    per_example: float | None = None
    if state in ("current", "foreign"):
        versions = Versions.read(directory)
        test = load_test(directory / "test.jsonl")
        plan.lines.append(f"dataset: {state}: {len(versions.latest)} train ({versions.names[-1]}), {len(test)} test "
                          "(rebuilt from its store: nothing sent)" if state == "current" else
                          f"dataset: {len(versions.latest)} train, {len(test)} test, used as it is (no store)")
        chosen, warnings = subsets(versions, sorted({*options.sizes, *versions.sizes()}))
        plan.lines += [f"warning: {w}" for w in warnings]
        n_test = len(test)
        prompt_tokens = sum(count_messages(item.prompt) for item in test)
    else:
        found = estimate(spec, model_name(config), config.kind)
        plan.requests += sum(s.requests for s in found.steps)
        plan.cost += found.cost if config.kind == "remote" else 0.0
        asked = sum(s.requests for s in found.steps)
        if config.kind == "local":
            plan.generate_s = asked * answer_s / servers
        when = f"~{_duration(plan.generate_s)}" if config.kind == "local" else \
            f"≤ ${found.cost:.4f}, at the pace the server's limits allow"
        plan.lines.append(f"dataset: {state} in {directory}: the teacher ({found.model}) answers {asked:,} "
                          f"requests first, {when}")
        per_example = sum(s.prompt_tokens + s.completion_tokens for s in found.steps) / max(1, found.examples_wanted)
        chosen = {n: [] for n in options.sizes if n > 0}
        n_test = int(spec.split.test) if isinstance(spec.split.test, int) else math.ceil(
            spec.split.test * found.examples_wanted)
        prompt_tokens = int(n_test * per_example)
    settings = max(1, len(grid))
    answers_per_model = n_test * settings
    models: list[str] = ["teacher: its own answers in the test split (no request)"]
    pending_answers = 0
    evaluated = {p.stem for p in (out / EVALS).glob("*.jsonl")}
    base_done = any(name.startswith("size-0-") for name in evaluated)
    remote_answers = 0  # answered by a provider: no time on this machine
    if 0 in options.sizes:
        models.append(f"size 0: {'the untrained student' if options.base is None else options.base}, "
                      f"{answers_per_model} answers" + (" (answered)" if base_done else ""))
        pending_answers += 0 if base_done else answers_per_model
        remote_answers += 0 if base_done or options.base is None else answers_per_model
    prompted_done = any(name.startswith("prompted-") for name in evaluated)
    models.append(f"prompted: the untrained student given the teacher's prompts, {answers_per_model} answers"
                  + (" (answered)" if prompted_done else ""))
    pending_answers += 0 if prompted_done else answers_per_model
    remote_answers += 0 if prompted_done or options.base is None else answers_per_model
    hosted_cost = 0.0
    prices = PriceTable(config.prices)
    hosted_keys = options.hosted_keys(list(chosen))
    notes: list[str] = []  # said once, under the models
    for size in sorted(n for n in options.sizes if n > 0):
        examples = chosen.get(size)
        if examples is None and state in ("current", "foreign"):
            continue
        for seed in options.seeds_of(size):
            hosted = options.trained.get((size, seed))
            work = f"{hosted}, trained elsewhere;"
            if (size, seed) in hosted_keys and options.hosted is not None:
                where = f"{options.hosted.model} at {options.hosted.connection.provider}"
                if not examples:
                    models.append(f"size {size} seed {seed}: fine-tune {where}, priced once the dataset is built")
                    continue
                subset, _ = write_subset(scratch, size, examples)
                job_plan = options.hosted.plan(subset, size, seed)
                job = recorded_job(out / SUBSETS / subset.name, job_plan.key)
                hosted = options.hosted.answer_name(job)
                if launches(job, options.hosted.new_job):
                    plan.training.append(job_plan.estimate)
                    work = f"fine-tune {where}: {job_plan.estimate.format(note=False)}; then"
                    notes += [n for n in (*(f"warning: {w}" for w in job_plan.warnings), job_plan.estimate.token_note)
                              if n and n not in notes]
                elif job is not None and job.status != "succeeded" and job.finished:
                    models.append(f"size {size} seed {seed}: {job.provider} job {job.job_id} {job.status}: "
                                  f"{job.error or 'no reason given'}; not studied (--new-job launches another)")
                    continue
                else:
                    assert job is not None
                    work = f"{hosted}, {job.provider} job {job.job_id} {job.status};"
            if hosted is not None:
                answered = f"size-{size}-seed-{seed}-{_slug(hosted)}" in evaluated
                cost = 0.0 if answered else prices.cost(hosted, prompt_tokens * settings, n_test * settings * int(
                    sampling.get("max_tokens") or 512))
                hosted_cost += cost
                models.append(f"size {size} seed {seed}: {work}" + (" answered" if answered else (
                    f" {answers_per_model} answers, ≤ ${cost:.4f}" + ("" if prices.known(hosted) else
                                                                       f" (no price known for {hosted})"))))
                pending_answers += 0 if answered else answers_per_model
                remote_answers += 0 if answered else answers_per_model
                continue
            settings_used = options.train_options(seed)
            if examples:
                digest = stable_hash(*_subset_texts(examples), length=32)
                key = student_key(digest, options.student, settings_used.settings())
                folder = out / STUDENTS / f"size-{size}-seed-{seed}-{key}"
                tokens = sum(count_messages(e.messages) for e in examples)
            else:
                folder, tokens = None, int(size * (per_example or 200))
            trained = folder is not None and (folder / "train.json").is_file() and (folder / "model.gguf").is_file()
            answered = trained and folder is not None and folder.name in evaluated
            steps = math.ceil(size / options.batch_size) * math.ceil(options.epochs)
            steps = min(steps, options.max_steps) if options.max_steps else steps
            seconds = 0.0 if trained else tokens * options.epochs / speed
            plan.train_s += seconds
            plan.to_train += 0 if trained else 1
            pending_answers += 0 if answered else answers_per_model
            work = "trained" if trained else (f"train ~{steps} steps on ~{tokens:,} tokens × {options.epochs:g} "
                                              f"epochs, ~{_duration(seconds)}")
            models.append(f"size {size} seed {seed}: {work}"
                          + (", answered" if answered else f", then {answers_per_model} answers"))
    judged = 2 if Scoring.build(spec).criteria else 1
    plan.requests += pending_answers * judged
    plan.answer_s = (pending_answers - remote_answers) * judged * answer_s / servers
    plan.cost += hosted_cost
    plan.to_train += len(plan.training)
    try:
        check_budget(plan.training, max_cost)
    except BudgetExceeded as refusal:
        plan.refused = refusal
    plan.lines += models + notes
    plan.lines.append(f"answers: {pending_answers * judged:,} requests to send ({n_test} test prompts × {settings} "
                      f"setting{'s' if settings > 1 else ''} per model{', each judged' if judged > 1 else ''}), "
                      f"~{_duration(plan.answer_s)}")
    return plan


def _subset_texts(examples: list[Example]) -> tuple[str, str]:
    from promptbake.output.atomic import json_line
    from promptbake.output.formats import get_format

    convert = get_format("openai-chat").convert
    return ("".join(json_line(convert(e)) + "\n" for e in examples),
            "".join(json_line({**e.metadata(), "split": "train"}) + "\n" for e in examples))


# --- top-up from a study ------------------------------------------------------------------------


async def topup_from_study_async(spec: Spec, study_path: str | Path, dataset: str | Path | None = None, *,
                                 metric: str | None = None, threshold: float | None = None,
                                 rising: float | None = None, bottom: int | None = None, per_category: int = 10,
                                 store_path: str | Path | None = None, teacher: Teacher | None = None,
                                 options: GenerateOptions | None = None) -> Any:
    """One top-up round for the categories a study shows weak: lowest at the largest size, or
    still rising steeply (:func:`promptbake.output.curves.weak_categories`). The dataset is the
    one the study measured unless ``dataset`` says otherwise; running the study again afterwards
    adds the new training version's size to the curve."""
    from promptbake.ids import file_sha256
    from promptbake.output.eval_results import CategoryScore
    from promptbake.workflows.topup import topup_weak_async

    path = Path(study_path)
    lines = curves.read_study(path)
    used, weak = curves.weak_categories(lines, metric, threshold=threshold, rising=rising, bottom=bottom)
    directory = Path(dataset) if dataset is not None else Path(str(lines[0].get("dataset") or ""))
    if not (directory / "train.jsonl").is_file():
        raise InputError(f"{directory}: not the study's built dataset (no train.jsonl); pass --dataset")
    counts = {line["category"]: int(line.get("n") or 0) for line in lines if line["kind"] == "student"}
    scores = [CategoryScore(w.category, n=counts.get(w.category, 0), scores=[w.value]) for w in weak]
    largest = max((w.size for w in weak), default=None)
    limit = curves.DEFAULT_THRESHOLD if threshold is None else threshold
    record = {"path": str(path), "sha256": file_sha256(path), "metric": used, "size": largest,
              "threshold": None if bottom is not None else limit,
              "rising": None if bottom is not None else (curves.DEFAULT_RISING if rising is None else rising),
              "bottom": bottom}
    return await topup_weak_async(spec, directory, scores, f"{used} at the largest size (study)", ("study", record),
                                  per_category=per_category, store_path=store_path, teacher=teacher, options=options,
                                  why={w.category: w.why for w in weak})
