"""Re-export a built dataset for other trainers: every format in ``formats.FORMATS``, plus ``hf``.

A built directory holds ``train.jsonl``/``test.jsonl`` (openai-chat) and ``metadata.jsonl``, whose
lines follow the training lines in order (train first, then test, or grouped by a ``split`` key).
``read_dataset`` turns them back into ``Example`` records, so exporting never needs the store or
the teacher again; a ``rejected`` message in a metadata line restores a DPO pair.

``hf`` writes ``DIR2/hf/{split}.parquet`` and a ``DIR2/hf/dataset`` folder (``save_to_disk``)
with one fixed schema, so splits with and without tool calls load together:
``datasets.load_dataset("parquet", data_files={"train": ..., "test": ...})``. ``cell``,
``provenance`` and ``tools`` are JSON strings because their shape differs from row to row.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from promptbake.errors import DataFileError, OutputError
from promptbake.output.atomic import ensure_dir
from promptbake.output.formats import FormatRefused, WriteReport, convert_all, get_format, write_rows
from promptbake.output.jsonl import read_jsonl
from promptbake.records import Example
from promptbake.spec.models import OutputConfig

SPLITS = ("train", "test")
HF = "hf"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path)]


def _metadata_by_split(directory: Path, sizes: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    path = directory / "metadata.jsonl"
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


def read_dataset(directory: str | Path) -> dict[str, list[Example]]:
    """The examples of a built dataset directory, per split (``test`` may be absent)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFileError(f"{directory}: not a dataset directory")
    if not (directory / "train.jsonl").exists():
        raise DataFileError(f"{directory}: no train.jsonl (build the dataset first)")
    rows = {s: _read_jsonl(directory / f"{s}.jsonl") for s in SPLITS if (directory / f"{s}.jsonl").exists()}
    meta = _metadata_by_split(directory, {s: len(r) for s, r in rows.items()})
    data: dict[str, list[Example]] = {}
    for split, split_rows in rows.items():
        examples = []
        for lineno, (row, m) in enumerate(zip(split_rows, meta[split], strict=True), 1):
            if not isinstance(row.get("messages"), list):
                raise DataFileError(f"{directory / split}.jsonl:{lineno}: not an openai-chat line (no 'messages')")
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
) -> list[WriteReport]:
    """Write each format's splits of the built dataset ``source`` under ``out/<format>/``; returns
    one report per file written (see ``export_examples``)."""
    _check_formats(formats)  # unknown names fail before anything is read
    return export_examples(read_dataset(source), formats, out, config=config)


def _check_formats(formats: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(formats))
    for name in names:
        if name != HF:
            get_format(name)
    return names


def export_examples(
    data: dict[str, list[Example]],
    formats: Iterable[str],
    out: str | Path,
    *,
    config: OutputConfig | None = None,
) -> list[WriteReport]:
    """Write each format's splits under ``out/<format>/``; returns one report per file written.

    A format that refuses every example of a split raises ``FormatRefused`` before writing it
    (an empty training file is never what anyone wants); partial refusals are in the reports.
    """
    formats = _check_formats(formats)  # unknown names fail before anything is written
    out = Path(out)
    reports: list[WriteReport] = []
    for name in formats:
        if name == HF:
            reports += export_hf(data, out / HF)
            continue
        fmt = get_format(name)
        converted = {split: convert_all(examples, fmt, config) for split, examples in data.items()}
        for split, (rows, refused) in converted.items():
            if refused and not rows:
                first = refused[0]
                raise FormatRefused(
                    first.example_id, name, f"{first.reason} (and so do all {len(refused)} {split} examples)"
                )
        reports += [
            write_rows(out / name / f"{split}.jsonl", name, rows, refused)
            for split, (rows, refused) in converted.items()
        ]
    return reports


# --- Hugging Face datasets -------------------------------------------------------------------


def _features() -> Any:
    from datasets import Features, Value

    message = {
        "role": Value("string"),
        "content": Value("string"),
        "name": Value("string"),
        "weight": Value("int64"),
        "tool_calls": [
            {
                "id": Value("string"),
                "type": Value("string"),
                "function": {"name": Value("string"), "arguments": Value("string")},
            }
        ],
        "tool_call_id": Value("string"),
    }
    return Features(
        {
            "id": Value("string"),
            "category": Value("string"),
            "cell": Value("string"),
            "provenance": Value("string"),
            "messages": [message],
            "tools": Value("string"),
            "rejected": message,
        }
    )


def _hf_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return {
        "role": "system" if message.get("role") == "developer" else message.get("role"),
        "content": content if content is None or isinstance(content, str) else json.dumps(content),
        "name": message.get("name"),
        "weight": message.get("weight"),
        "tool_calls": message.get("tool_calls"),
        "tool_call_id": message.get("tool_call_id"),
    }


def hf_row(example: Example) -> dict[str, Any]:
    """One example as a row of the fixed ``hf`` schema (metadata columns beside the messages)."""
    return {
        "id": example.id,
        "category": example.category,
        "cell": json.dumps(example.cell, ensure_ascii=False, sort_keys=True),
        "provenance": json.dumps(example.provenance, ensure_ascii=False, sort_keys=True),
        "messages": [_hf_message(m) for m in example.messages],
        "tools": json.dumps(example.tools, ensure_ascii=False) if example.tools else None,
        "rejected": _hf_message({"role": "assistant", **example.rejected}) if example.rejected else None,
    }


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise OutputError(
            "the hf export needs the optional dependencies: pip install 'promptbake[hf]' (datasets, pyarrow)"
        ) from None
    return datasets


def hf_dataset_dict(data: dict[str, list[Example]]) -> Any:
    """The splits as a ``datasets.DatasetDict`` in the fixed ``hf`` schema (``Dataset.to_hf``)."""
    datasets = _datasets()
    features = _features()
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_list([hf_row(e) for e in ex], features=features) for s, ex in data.items()}
    )


def export_hf(data: dict[str, list[Example]], out: str | Path) -> list[WriteReport]:
    """Parquet per split plus a ``save_to_disk`` folder; each written atomically (temp + rename)."""
    datasets = _datasets()
    out = Path(out)
    ensure_dir(out)
    # datasets draws its own progress bars on stderr; our CLI reports one line per file instead.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _write_hf(data, out)
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


def _write_hf(data: dict[str, list[Example]], out: Path) -> list[WriteReport]:
    splits = hf_dataset_dict(data)
    reports = []
    for split, ds in splits.items():
        with _replacing(out / f"{split}.parquet") as tmp:
            ds.to_parquet(str(tmp))
        reports.append(WriteReport(out / f"{split}.parquet", HF, len(ds)))
    with _replacing(out / "dataset") as tmp:
        splits.save_to_disk(str(tmp))
    reports.append(WriteReport(out / "dataset", HF, sum(len(ds) for ds in splits.values())))
    return reports
