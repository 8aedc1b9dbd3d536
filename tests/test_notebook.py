"""examples/quickstart.ipynb runs headless (nbclient + ipykernel) against the loopback teacher.

The notebook's own cells assert what they show (run_async gives the same examples from the store);
this test checks the outputs a reader sees and the files the run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
from fakeserver import FakeServer
from helpers import list_then_reply_responder
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_notebook(tmp_path, monkeypatch):
    for folder in ("generators", "templates"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "examples").mkdir()  # opened where it lives: the kernel starts in examples/
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # the kernel is a child process: it must import this checkout's promptbake
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with FakeServer(responder=list_then_reply_responder()).running() as srv:
        monkeypatch.setenv("TEACHER_URL", srv.base_url)
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path / "examples")}}).execute()
        sent = srv.count
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source

    def cell(start: str) -> nbformat.NotebookNode:
        return next(c for c in code if c.source.startswith(start))

    def shown(start: str) -> str:
        return "".join(o.data["text/plain"] for o in cell(start).outputs if o.output_type == "execute_result")

    assert shown("ds = promptbake.run(") == "Dataset(train=900, test=100, directory='out/rude_agent')"
    bars = [o for o in cell("ds = promptbake.run(").outputs if o.output_type == "display_data"]
    assert len(bars) == 2 and all("application/vnd.jupyter.widget-view+json" in o.data for o in bars)  # tqdm.auto
    first = shown("ds.train[0]")
    assert first.startswith("Example(id=") and "'role': 'assistant'" in first
    assert shown("spec = promptbake.load_spec(") == "(8, 2)"  # 10 examples, every category in both splits
    assert "DatasetDict" in shown("ds.to_hf()")
    out = tmp_path / "out" / "rude_agent"
    assert len((out / "train.jsonl").read_text().splitlines()) == 900
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["requests"] + 12 == sent  # tiny sent 12; the awaited re-run sent nothing
    assert (tmp_path / "out" / "exports" / "messages" / "train.jsonl").exists()  # under out/, nothing loose
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples", "generators", "out", "templates"]
    assert not any((tmp_path / "examples").iterdir())
    first = notebook.cells[0].source
    assert "TEACHER_URL" in first and "OPENAI_API_KEY" in first
