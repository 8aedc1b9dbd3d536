"""export: read a built dataset back, write every format and the Hugging Face datasets folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import TOOLS, same_output_under_hash_seeds, tool_call_example

from promptbake.cli.main import cli
from promptbake.errors import DataFileError, OutputError
from promptbake.output.export import export, formats_table, read_dataset
from promptbake.output.formats import FORMATS, FormatRefused
from promptbake.records import Example


def chat(i: int, *, rejected: bool = True) -> Example:
    return Example(
        id=f"ex{i}",
        category="late" if i % 2 else "rude",
        cell={"place": "shop", "n": i},
        messages=[
            {"role": "system", "content": "Be rude."},
            {"role": "user", "content": f"Where is order {i}?"},
            {"role": "assistant", "content": "Ask nicely.", "weight": 1},
        ],
        rejected={"role": "assistant", "content": "So sorry!"} if rejected else None,
        provenance={"answer": f"req{i}"},
    )


def tool_call() -> Example:
    return tool_call_example(rejected=True)


def multi_turn() -> Example:
    return Example(
        id="multi",
        category="late",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "What."},
            {"role": "user", "content": "My order?"},
            {"role": "assistant", "content": "Wait."},
        ],
        rejected={"role": "assistant", "content": "Right away!"},
    )


def build_dir(train: list[Example], test: list[Example], *, split_key: bool = True, path: str = "built") -> Path:
    """A directory shaped like ``build`` writes it: openai-chat splits plus the metadata sidecar."""
    out = Path(path)
    out.mkdir()
    for name, rows in (("train", train), ("test", test)):
        lines = [json.dumps(FORMATS["openai-chat"].convert(e)) for e in rows]
        (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    meta = [
        {**e.metadata(), **({"split": name} if split_key else {}), "rejected": e.rejected}
        for name, rows in (("train", train), ("test", test))
        for e in rows
    ]
    (out / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta), encoding="utf-8")
    (out / "manifest.json").write_text("{}", encoding="utf-8")
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("split_key", [True, False])
def test_read_dataset_restores_examples(split_key):
    train, test = [chat(1), tool_call(), chat(2)], [chat(3)]
    data = read_dataset(build_dir(train, test, split_key=split_key))
    assert data == {"train": train, "test": test}


def test_read_dataset_without_metadata_uses_positions():
    directory = build_dir([chat(1)], [chat(2)])
    (directory / "metadata.jsonl").unlink()
    data = read_dataset(directory)
    assert [e.id for e in data["train"]] == ["train-000001"] and data["test"][0].messages == chat(2).messages


def test_read_dataset_errors_name_the_file():
    with pytest.raises(DataFileError, match="nowhere: not a dataset directory"):
        read_dataset("nowhere")
    directory = build_dir([chat(1), chat(2)], [chat(3)])
    lines = (directory / "metadata.jsonl").read_text().splitlines()
    (directory / "metadata.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataFileError, match=r"metadata.jsonl: 0 lines for split test, test.jsonl has 1"):
        read_dataset(directory)
    (directory / "metadata.jsonl").unlink()
    (directory / "train.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataFileError, match=r"train.jsonl:1: not an openai-chat line"):
        read_dataset(directory)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_export_round_trips_every_format(name):
    train, test = [chat(i) for i in range(1, 5)], [chat(9)]
    reports = export(build_dir(train, test), [name], "out")
    assert [(r.path, r.written, r.refused) for r in reports] == [
        (Path("out", name, "train.jsonl"), 4, 0),
        (Path("out", name, "test.jsonl"), 1, 0),
    ]
    assert read_jsonl(Path("out", name, "train.jsonl")) == [FORMATS[name].convert(e) for e in train]
    assert read_jsonl(Path("out", name, "test.jsonl")) == [FORMATS[name].convert(test[0])]


def test_tool_and_multi_turn_examples_export_or_are_refused_with_reasons():
    directory = build_dir([chat(1), tool_call(), multi_turn()], [chat(2)])
    reports = {(r.format, r.path.stem): r for r in export(directory, ["messages", "sharegpt", "alpaca"], "out")}
    assert reports["messages", "train"].written == 3  # tool calls and multi-turn both fit
    messages = read_jsonl(Path("out/messages/train.jsonl"))
    assert messages[1]["tools"] == TOOLS and messages[1]["messages"][2]["role"] == "tool"
    assert reports["sharegpt", "train"].refused_ids == ["tool"]
    alpaca = reports["alpaca", "train"]
    assert (alpaca.written, alpaca.refused_ids) == (1, ["tool", "multi"])
    assert "single-turn" in alpaca.refusals[1].reason


def test_a_format_refusing_a_whole_split_fails_before_writing():
    directory = build_dir([chat(1, rejected=False)], [chat(2, rejected=False)])
    with pytest.raises(FormatRefused, match=r"no rejected answer.*all 1 train examples"):
        export(directory, ["preference-trl"], "out")
    assert not Path("out/preference-trl/train.jsonl").exists()


def test_unknown_format_fails_before_anything_is_written():
    with pytest.raises(Exception, match="unknown format 'csv'"):
        export(build_dir([chat(1)], [chat(2)]), ["messages", "csv"], "out")
    assert not Path("out").exists()


HF_COLUMNS = {
    "sft": ("hf", {"messages"}),
    "sft-tools": ("hf", {"messages", "tools"}),
    "preference": ("hf-preference", {"prompt", "chosen", "rejected"}),
}


def hf_dataset(kind: str) -> tuple[str, list[Example], list[Example]]:
    name = HF_COLUMNS[kind][0]
    train = [chat(1), tool_call(), chat(2)] if kind == "sft-tools" else [chat(1), chat(2)]
    return name, train, [chat(3)]


def _without_nones(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _load_both(datasets, name: str, cache: Path) -> list:
    files = {"train": f"out/{name}/train.parquet", "test": f"out/{name}/test.parquet"}
    return [
        datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache)),
        datasets.load_from_disk(f"out/{name}/dataset"),
    ]


@pytest.mark.parametrize("kind", sorted(HF_COLUMNS))
def test_hf_export_has_exactly_the_columns_of_its_kind(kind, tmp_path, capfd):
    datasets = pytest.importorskip("datasets")
    name, train, test = hf_dataset(kind)
    reports = export(build_dir(train, test), [name], "out")
    assert capfd.readouterr().err == ""  # no progress bars from datasets
    assert datasets.is_progress_bar_enabled()  # and the caller's setting is restored
    assert [(r.path.name, r.written) for r in reports] == [
        ("train.parquet", len(train)), ("test.parquet", 1), ("dataset", len(train) + 1)
    ]
    line_format = FORMATS["messages" if name == "hf" else "preference-trl"]
    for loaded in _load_both(datasets, name, tmp_path / "cache"):
        for split, examples in (("train", train), ("test", test)):
            ds = loaded[split]
            assert set(ds.column_names) == HF_COLUMNS[kind][1]
            for row, example in zip(ds, examples, strict=True):
                expected = line_format.convert(example)
                if "tools" in row:
                    assert (json.loads(row["tools"]) if row["tools"] else None) == expected.get("tools")
                for column in HF_COLUMNS[kind][1] - {"tools"}:
                    # absent keys come back as None; dropping them gives back the format's own messages
                    assert _without_nones(row[column]) == _without_nones(expected[column])
        # the splits share one schema (so they load together), and no column is null in every row
        for column in HF_COLUMNS[kind][1]:
            assert any(v is not None for split in loaded.values() for v in split[column]), column
        # no message key is null in every message of a column
        for column in HF_COLUMNS[kind][1] - {"tools"}:
            messages = [m for split in loaded.values() for row in split[column] for m in row]
            assert {k for k in messages[0] if all(m[k] is None for m in messages)} == set()
    if kind == "sft":
        assert set(loaded["train"][0]["messages"][0]) == {"role", "content"}


TRL_CHECK = """
import json, sys
import datasets

def is_conversational(example):
    # TRL's own test (trl.data_utils.is_conversational): the first supported key a *set* yields
    supported_keys = ["prompt", "chosen", "rejected", "completion", "messages"]
    example_keys = {key for key in example.keys() if key in supported_keys}
    if example_keys:
        key = example_keys.pop()
        maybe_messages = example[key]
        if isinstance(maybe_messages, list):
            maybe_message = maybe_messages[0]
            if isinstance(maybe_message, dict) and "role" in maybe_message:
                return True
    return False

datasets.disable_progress_bars()
names, cache = sys.argv[1:]
for name in names:
    files = {"train": f"out/{name}/train.parquet"}
    for ds in (datasets.load_dataset("parquet", data_files=files, cache_dir=cache)["train"],
               datasets.load_from_disk(f"out/{name}/dataset")["train"]):
        first = ds[0]
        columns = [c for c in ("messages", "prompt", "chosen", "rejected") if c in first]
        shapes = all(isinstance(first[c], list) and all({"role", "content"} <= set(m) for m in first[c])
                     for c in columns)
        print(is_conversational(first), shapes, sorted(ds.column_names))
"""


def test_hf_export_is_conversational_to_trl_under_every_hash_seed(tmp_path):
    """TRL picks the column it inspects from a set: with a column of the other kind present (the
    old all-null ``rejected``), SFTTrainer failed on seeds 0, 2, 5, 8 and 9."""
    pytest.importorskip("datasets")
    export(build_dir([chat(1), chat(2)], [chat(3)]), ["hf", "hf-preference"], "out")
    script = TRL_CHECK.replace("sys.argv[1:]", f"['hf', 'hf-preference'], {str(tmp_path / 'cache')!r}")
    output = same_output_under_hash_seeds(script, seeds=("0", "1", "2", "5", "8", "9"))
    sft, preference = "True True ['messages']", "True True ['chosen', 'prompt', 'rejected']"
    assert output.splitlines() == [sft, sft, preference, preference]


def test_export_system_fills_in_a_system_message_where_there_is_none():
    build_dir([chat(1), multi_turn()], [chat(2)])
    result = CliRunner().invoke(
        cli, ["export", "built", "-f", "messages", "-f", "alpaca", "--system", "You are Grumpy.", "-o", "out"]
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(Path("out/messages/train.jsonl"))
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be rude."}  # its own is kept
    system, user = rows[1]["messages"][:2]
    assert (system, user) == ({"role": "system", "content": "You are Grumpy."}, {"role": "user", "content": "Hi"})
    assert len(rows[1]["messages"]) == len(multi_turn().messages) + 1
    assert read_jsonl(Path("out/alpaca/test.jsonl"))[0]["instruction"] == "Be rude."
    export("built", ["messages"], "plain")
    assert read_jsonl(Path("plain/messages/train.jsonl"))[1]["messages"][0] == {"role": "user", "content": "Hi"}


def test_hf_export_system_reaches_the_dataset():
    datasets = pytest.importorskip("datasets")
    export(build_dir([multi_turn()], [multi_turn()]), ["hf"], "out", system="You are Grumpy.")
    first = datasets.load_from_disk("out/hf/dataset")["train"][0]["messages"][0]
    assert first == {"role": "system", "content": "You are Grumpy."}


def test_readme_export_table_is_the_registry_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert formats_table() in readme


def test_hf_re_export_replaces_files_and_leaves_no_temp_files():
    pytest.importorskip("datasets")
    export(build_dir([chat(1), chat(2)], [chat(3)]), ["hf"], "out")
    export(build_dir([chat(4)], [chat(5)], path="built2"), ["hf"], "out")
    import datasets

    rows = datasets.load_from_disk("out/hf/dataset")["train"]
    assert [r["messages"][1]["content"] for r in rows] == ["Where is order 4?"]
    assert sorted(p.name for p in Path("out/hf").iterdir()) == ["dataset", "test.parquet", "train.parquet"]
    umask = os.umask(0)
    os.umask(umask)
    assert Path("out/hf/train.parquet").stat().st_mode & 0o777 == 0o666 & ~umask


def test_hf_export_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(OutputError, match=r"pip install 'promptbake\[hf\]'"):
        export(build_dir([chat(1)], [chat(2)]), ["hf"], "out")


def test_cli_export_writes_each_format_and_reports_on_stderr():
    build_dir([chat(1), multi_turn()], [chat(2)])
    result = CliRunner().invoke(cli, ["export", "built", "-f", "messages", "--format", "alpaca", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert Path("out/messages/train.jsonl").exists() and Path("out/alpaca/test.jsonl").exists()
    assert "out/alpaca/train.jsonl: 1 written as alpaca, 1 refused" in result.stderr
    assert result.stdout == ""


def test_cli_export_errors_exit_2():
    result = CliRunner().invoke(cli, ["export", "missing", "-f", "messages", "-o", "out"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: missing: not a dataset directory"
    build_dir([chat(1, rejected=False)], [chat(2, rejected=False)])
    result = CliRunner().invoke(cli, ["export", "built", "-f", "preference-openai", "-o", "out"])
    assert result.exit_code == 2 and "no rejected answer" in result.stderr
