"""The spec a store was generated with: what ``run``/``generate`` save of it, and reading it back.

``build STORE``, the report and the offline batch import rebuild from the store alone, so the
spec's text travels with the answers; it lives here, with the store, so that any stage can read it
without reaching into the workflows that wrote it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from promptbake.errors import StoreError
from promptbake.specification.models import Spec, parse_spec
from promptbake.store.db import Store


def spec_text(spec: Spec) -> str:
    """What the store keeps of a spec: its file as written, or (a spec built in code, such as a
    distillation) the validated model as YAML, so ``build STORE`` can always rebuild."""
    if spec.path is not None:
        return spec.path.read_text(encoding="utf-8")
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def spec_from_store(store_path: str | Path, name: str | None = None) -> Spec:
    """The spec a store was generated with (``build STORE``), re-read from the text it saved."""
    if not Path(store_path).exists():
        raise StoreError(f"{store_path}: no such store")
    with Store(store_path, lock=False) as store:
        saved = [s for s in store.saved_specs() if name is None or s[0] == name]
    if not saved:
        raise StoreError(f"{store_path}: holds no spec{f' named {name!r}' if name else ''}; pass the spec file")
    spec_name, path, text = saved[0]
    return parse_spec(text, path or f"{store_path}:{spec_name}", Path(path) if path else None)
