"""Jinja2 templates in a sandbox, with errors that name the template and line.

Inline templates from a spec are registered under a name like ``rude.yaml:steps[1].messages[0]`` so
that a missing variable is reported exactly like one in a file under ``templates/``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from promptbake.errors import TemplateError


class _Loader(jinja2.BaseLoader):
    """Inline sources by name first, then files from the search path."""

    def __init__(self, search_path: list[Path], base_dir: Path | None = None) -> None:
        self.inline: dict[str, str] = {}
        self.files = jinja2.FileSystemLoader([str(p) for p in search_path])
        self.base_dir = base_dir

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template in self.inline:
            return self.inline[template], template, lambda: True
        try:
            return self.files.get_source(environment, template)
        except jinja2.TemplateNotFound:
            # A path with a folder in it may point anywhere relative to the spec (a long prompt
            # kept in samples/ for distillation); errors then name that file as written.
            if self.base_dir is None or "/" not in template or not (self.base_dir / template).is_file():
                raise
            path = Path(os.path.normpath(self.base_dir / template))
            shown = os.path.relpath(path) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)
            try:
                return path.read_text(encoding="utf-8"), shown, lambda: True
            except UnicodeDecodeError as exc:
                raise TemplateError(f"{shown}: not UTF-8 text (byte {exc.start})") from exc


def _template_line(name: str) -> int | None:
    """Jinja rewrites tracebacks so template frames carry the template's name and line."""
    tb = sys.exc_info()[2]
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in (name, str(name)):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Templates:
    """The template environment of one spec (search path: the spec's folder, its ``templates/``,
    the project's ``templates/`` above it and the working directory's ``templates/``; a name with a
    folder in it, like ``../samples/prompt.md``, may also be a file relative to the spec)."""

    def __init__(self, search_path: list[Path] | None = None, base_dir: Path | None = None) -> None:
        self.search_path = search_path or [Path.cwd() / "templates"]
        self._loader = _Loader(self.search_path, base_dir)
        self.env = SandboxedEnvironment(
            loader=self._loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.env.filters["tojson"] = _tojson
        self._compiled: dict[str, jinja2.Template] = {}

    @classmethod
    def for_spec_dir(cls, base_dir: Path) -> Templates:
        candidates = [base_dir / "templates", base_dir.parent / "templates", Path.cwd() / "templates"]
        seen: list[Path] = []
        for c in candidates:
            if c.resolve() not in [s.resolve() for s in seen]:
                seen.append(c)
        return cls(seen, base_dir)

    def add_inline(self, name: str, source: str) -> str:
        self._loader.inline[name] = source
        return name

    def get(self, name: str) -> jinja2.Template:
        """Compile once; a syntax error or a missing file names the template and line."""
        compiled = self._compiled.get(name)
        if compiled is not None:
            return compiled
        try:
            compiled = self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or name}:{exc.lineno}: template syntax error: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            where = ", ".join(str(p) for p in self.search_path)
            raise TemplateError(f"{name}: template file not found (searched {where})") from exc
        self._compiled[name] = compiled
        return compiled

    def render(self, name: str, variables: dict[str, Any]) -> str:
        template = self.get(name)
        try:
            return template.render(variables)
        except jinja2.UndefinedError as exc:
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            raise TemplateError(f"{template.filename or name}{at}: {exc.message}") from exc
        except SecurityError as exc:
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            raise TemplateError(f"{template.filename or name}{at}: refused by the sandbox: {exc}") from exc
        except jinja2.TemplateError as exc:
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            raise TemplateError(f"{template.filename or name}{at}: {exc}") from exc

    def expression(self, name: str, source: str, variables: dict[str, Any]) -> str:
        """Render a category expression: a bare Jinja expression, or a ``{{ }}`` template."""
        if "{{" not in source and "{%" not in source:
            source = "{{ " + source + " }}"
        self.add_inline(name, source)
        return self.render(name, variables).strip()


def _tojson(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
