"""Re-export a built dataset for other trainers: every format in ``formats.FORMATS``, plus ``hf``.

A built directory holds ``train.jsonl``/``test.jsonl`` (openai-chat) and ``metadata.jsonl``, whose
lines follow the training lines in order (train first, then test, or grouped by a ``split`` key).
``read_dataset`` turns them back into ``Example`` records, so exporting never needs the store or
the teacher again; a ``rejected`` message in a metadata line restores a DPO pair.

``hf`` (SFT: the ``messages`` format) and ``hf-preference`` (DPO: ``preference-trl``) write
``DIR2/<name>/{split}.parquet`` and a ``DIR2/<name>/dataset`` folder (``save_to_disk``) with one
schema for all splits, so they load together:
``datasets.load_dataset("parquet", data_files={"train": ..., "test": ...})``. The metadata stays
in the built directory's ``metadata.jsonl``, line for line with the rows.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError, OutputError
from promptbake.output.atomic import ensure_dir
from promptbake.output.formats import (
    FORMATS,
    FormatRefused,
    Row,
    WriteReport,
    convert_all,
    get_format,
    write_rows,
    write_split,
)
from promptbake.output.jsonl import read_jsonl
from promptbake.output.sidecar import metadata_file
from promptbake.records import Example
from promptbake.specification.models import OutputConfig

SPLITS = ("train", "test")
HF = "hf"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path)]


def read_manifest(directory: Path) -> dict[str, Any]:
    """A built directory's ``manifest.json`` ({} when there is none)."""
    path = directory / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return manifest
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{path}: cannot read the manifest ({exc})") from None


def train_file(directory: Path, version: int | None = None) -> str:
    """The training file of version ``version`` (1: ``train.jsonl``, N: ``train.vN.jsonl``, the
    top-up rounds' files); by default the latest one the manifest records."""
    if version is None:
        topups = read_manifest(directory).get("topups") or []
        return str(topups[-1]["train"]) if topups else "train.jsonl"
    if version < 1:
        raise DataFileError(f"--train-version {version}: versions start at 1 (train.jsonl)")
    name = "train.jsonl" if version == 1 else f"train.v{version}.jsonl"
    if not (directory / name).exists():
        raise DataFileError(f"{directory / name}: no such training file (version {version})")
    return name


@dataclass
class ExportResult:
    """What ``promptbake.export`` wrote: one report per file, and ``train``, the training file of
    the dataset they hold (after a top-up the latest ``train.vN.jsonl``, unless a version was
    asked for), so the caller knows which version went out without reading the manifest again."""

    files: list[WriteReport]
    train: str


def _metadata_by_split(
    directory: Path, sizes: dict[str, int], train: str = "train.jsonl"
) -> dict[str, list[dict[str, Any]]]:
    path = metadata_file(directory / train)
    if not path.exists():
        # Plain training files (not built by promptbake): ids from the position, no category.
        return {s: [{"id": f"{s}-{i:06d}", "category": ""} for i in range(1, n + 1)] for s, n in sizes.items()}
    meta = _read_jsonl(path)
    if all("split" in m for m in meta):
        grouped = {s: [m for m in meta if m["split"] == s] for s in sizes}
    else:
        grouped, start = {}, 0
        for split, n in sizes.items():
            grouped[split], start = meta[start : start + n], start + n
        if start != len(meta):
            raise DataFileError(f"{path}: {len(meta)} lines for {sum(sizes.values())} training examples")
    for split, n in sizes.items():
        if len(grouped[split]) != n:
            raise DataFileError(f"{path}: {len(grouped[split])} lines for split {split}, {split}.jsonl has {n}")
    return grouped


def read_dataset(directory: str | Path, train_version: int | None = None) -> dict[str, list[Example]]:
    """The examples of a built dataset directory, per split (``test`` may be absent); the training
    split is the latest top-up version (``train_file``) unless ``train_version`` picks one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFileError(f"{directory}: not a dataset directory")
    if not (directory / "train.jsonl").exists():
        raise DataFileError(f"{directory}: no train.jsonl (build the dataset first)")
    files = {"train": train_file(directory, train_version), "test": "test.jsonl"}
    rows = {s: _read_jsonl(directory / files[s]) for s in SPLITS if (directory / files[s]).exists()}
    meta = _metadata_by_split(directory, {s: len(r) for s, r in rows.items()}, files["train"])
    data: dict[str, list[Example]] = {}
    for split, split_rows in rows.items():
        examples = []
        for lineno, (row, m) in enumerate(zip(split_rows, meta[split], strict=True), 1):
            if not isinstance(row.get("messages"), list):
                raise DataFileError(f"{directory / files[split]}:{lineno}: not an openai-chat line (no 'messages')")
            examples.append(
                Example(
                    id=str(m.get("id", f"{split}-{lineno:06d}")),
                    category=str(m.get("category", "")),
                    cell=m.get("cell") or {},
                    messages=row["messages"],
                    tools=row.get("tools"),
                    rejected=m.get("rejected"),
                    provenance=m.get("provenance") or {},
                )
            )
        data[split] = examples
    return data


def export(
    source: str | Path,
    formats: Iterable[str],
    out: str | Path,
    *,
    config: OutputConfig | None = None,
    system: str | None = None,
    train_version: int | None = None,
) -> list[WriteReport]:
    """Write each format's splits under ``out/<format>/``; returns one report per file written.
    ``train.jsonl`` there holds the latest training version of ``source`` (or ``train_version``).

    A format that refuses every example of a split raises ``FormatRefused`` before writing it
    (an empty training file is never what anyone wants); partial refusals are in the reports.
    ``system`` is given to every example without a system message: left without one, the
    student's chat template adds its own default at training time (SmolLM2: "You are a helpful AI
    assistant named SmolLM..."), which is rarely the prompt it will see at inference.
    """
    names = _check_formats(formats)  # unknown names fail before anything is read
    data = read_dataset(source, train_version)
    if system is not None:
        data = {split: [e.with_default_system(system) for e in examples] for split, examples in data.items()}
    return export_examples(data, names, out, config=config)


def _check_formats(formats: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(formats))
    for name in names:
        get_format(HF_FORMATS.get(name, name))
    return names


def export_examples(
    data: dict[str, list[Example]],
    formats: Iterable[str],
    out: str | Path,
    *,
    config: OutputConfig | None = None,
) -> list[WriteReport]:
    """Each format's splits of ``data`` under ``out/<format>/`` (``export`` and ``Dataset.write``)."""
    names = _check_formats(formats)  # unknown names fail before anything is written
    return [report for name in names for report in write_format(name, data, Path(out) / name, config)]


def write_format(
    name: str,
    data: Mapping[str, Iterable[Example]],
    folder: Path,
    config: OutputConfig | None = None,
    *,
    strict: bool = True,
) -> list[WriteReport]:
    """One format's splits into ``folder`` (JSONL per split, or the HF files). ``strict``: a split
    whose every example the format refuses raises ``FormatRefused`` before anything is written.
    Not strict, a JSONL split is converted and written one example at a time (a build reads them
    from disk); the HF files need every row at once."""
    fmt = get_format(HF_FORMATS.get(name, name))
    if not strict and name not in HF_FORMATS:
        return [write_split(examples, fmt, folder / f"{split}.jsonl", config) for split, examples in data.items()]
    converted = {split: convert_all(examples, fmt, config) for split, examples in data.items()}
    for split, (rows, refused) in converted.items():
        if strict and refused and not rows:
            first = refused[0]
            raise FormatRefused(
                first.example_id, name, f"{first.reason} (and so do all {len(refused)} {split} examples)"
            )
    if name in HF_FORMATS:
        return export_hf(converted, folder, name)
    return [
        write_rows(folder / f"{split}.jsonl", name, rows, refused) for split, (rows, refused) in converted.items()
    ]


# --- Hugging Face datasets -------------------------------------------------------------------

# Each HF export is the Arrow form of one line format and has exactly that format's columns.
# TRL decides whether a dataset is conversational from whichever of its known columns a set
# yields first (an order that changes with PYTHONHASHSEED), so a column of the other kind, even
# an all-null one, makes training fail on some process starts.
HF_FORMATS = {HF: "messages", "hf-preference": "preference-trl"}
_MESSAGE_COLUMNS = ("messages", "prompt", "chosen", "rejected")
HF_DOCS = {  # name: (kind, read by, shape, beyond the file), for the README's export table
    HF: (
        "sft",
        "Hugging Face `datasets`, trl",
        "Parquet per split + `save_to_disk` folder with exactly the `messages` format's columns: "
        "`messages` (plus `tools` when a row has tools); metadata stays in `metadata.jsonl`, line for line.",
        "TRL SFTTrainer as is; `tools` is a JSON string (its schemas differ from row to row): parse it "
        "before training tool calls.",
    ),
    "hf-preference": (
        "preference",
        "Hugging Face `datasets`, trl",
        "Parquet + `save_to_disk` folder with exactly `prompt`, `chosen`, `rejected` (as `preference-trl`).",
        "TRL DPOTrainer as is.",
    ),
}


def _message_feature(keys: set[str]) -> dict[str, Any]:
    """A message struct with only the keys some message uses: a key null in every message would
    reach the chat template as an explicit ``None``."""
    from datasets import Value

    function = {"name": Value("string"), "arguments": Value("string")}
    types: dict[str, Any] = {
        "role": Value("string"),
        "content": Value("string"),
        "name": Value("string"),
        "tool_calls": [{"id": Value("string"), "type": Value("string"), "function": function}],
        "tool_call_id": Value("string"),
        "function_call": function,
    }
    return {k: v for k, v in types.items() if k in keys}


def _hf_messages(messages: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    # Arrow needs one type per field: content given as parts becomes its JSON text.
    return [
        {k: json.dumps(m[k], ensure_ascii=False) if k == "content" and isinstance(m.get(k), list) else m.get(k)
         for k in keys}
        for m in messages
    ]


def hf_tables(rows: dict[str, list[Row]]) -> tuple[Any, dict[str, list[Row]]]:
    """One ``datasets.Features`` for every split (so they load together) and the rows shaped to it.

    Columns are the format's own; ``tools`` (a JSON string, since its schemas differ from row to
    row) only when some row has tools.
    """
    from datasets import Features, Value

    every = [row for split_rows in rows.values() for row in split_rows]
    columns = list(dict.fromkeys(k for row in every for k in row))
    keys = {
        column: {k for row in every for m in row.get(column) or [] for k, v in m.items() if v is not None}
        for column in columns
        if column in _MESSAGE_COLUMNS
    }
    structs = {c: _message_feature(k) for c, k in keys.items()}
    features = Features({c: [structs[c]] if c in structs else Value("string") for c in columns})
    order = {c: list(struct) for c, struct in structs.items()}

    def shape(row: Row) -> Row:
        out: Row = {}
        for column in columns:
            value = row.get(column)
            if column in order:
                out[column] = _hf_messages(value or [], order[column])
            else:
                out[column] = None if value is None else json.dumps(value, ensure_ascii=False)
        return out

    return features, {split: [shape(r) for r in split_rows] for split, split_rows in rows.items()}


def export_hf(
    converted: dict[str, tuple[list[Row], list[FormatRefused]]], out: str | Path, name: str = HF
) -> list[WriteReport]:
    """Parquet per split plus a ``save_to_disk`` folder; each written atomically (temp + rename)."""
    datasets = _datasets()
    out = Path(out)
    ensure_dir(out)
    # datasets draws its own progress bars on stderr; our CLI reports one line per file instead.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _write_hf(converted, out, name)
    finally:
        if bars:
            datasets.enable_progress_bars()


@contextmanager
def _replacing(final: Path) -> Iterator[Path]:
    """A temp path beside ``final`` for a writer to create (file or folder, with the umask's mode);
    moved over ``final`` on success, removed on any failure so no half export is left behind."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{final}: cannot write ({exc.strerror or exc})") from None
        raise


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise OutputError(
            "the hf export needs the optional dependencies: pip install 'promptbake[hf]' (datasets, pyarrow)"
        ) from None
    return datasets


def _hf_splits(rows: dict[str, list[Row]]) -> dict[str, Any]:
    datasets = _datasets()
    features, shaped = hf_tables(rows)
    return {s: datasets.Dataset.from_list(r, features=features) for s, r in shaped.items()}


def hf_dataset_dict(data: dict[str, list[Example]]) -> Any:
    """The splits as a ``datasets.DatasetDict`` in the ``hf`` export's schema (``Dataset.to_hf``)."""
    fmt = get_format(HF_FORMATS[HF])
    rows = {split: convert_all(examples, fmt)[0] for split, examples in data.items()}
    return _datasets().DatasetDict(_hf_splits(rows))


def _write_hf(converted: dict[str, tuple[list[Row], list[FormatRefused]]], out: Path, name: str) -> list[WriteReport]:
    import datasets

    splits = _hf_splits({split: rows for split, (rows, _) in converted.items()})
    reports = []
    for split, ds in splits.items():
        with _replacing(out / f"{split}.parquet") as tmp:
            ds.to_parquet(str(tmp))
        refused = converted[split][1]
        reports.append(WriteReport(out / f"{split}.parquet", name, len(ds), len(refused), refused[: WriteReport.KEEP]))
    with _replacing(out / "dataset") as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
    reports.append(WriteReport(out / "dataset", name, sum(len(ds) for ds in splits.values())))
    return reports


def formats_table() -> str:
    """The README's Markdown table of formats, the targets that read them and what those need beyond
    the file, from the registries (``hf`` formats from ``HF_DOCS``)."""
    from promptbake.output.targets import targets_for_format

    lines = ["| format | kind | read by | shape | beyond the file |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| `{f.name}` | {f.kind} | {', '.join(targets_for_format(f.name))} | {f.doc} | {f.needs} |"
        for f in FORMATS.values()
    ]
    lines += [f"| `{name}` | {kind} | {by} | {doc} | {needs} |" for name, (kind, by, doc, needs) in HF_DOCS.items()]
    return "\n".join(lines)
