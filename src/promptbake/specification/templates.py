"""Jinja2 templates in a sandbox, with errors that name the template and line.

Inline templates from a spec are registered under a name like ``rude.yaml:steps[1].messages[0]`` so
that a missing variable is reported exactly like one in a file under ``templates/``.

Jinja's sandbox keeps templates away from Python internals but not from exhausting the machine:
``range(10**9)`` is refused, yet two nested loops of 10^5, ``'x' * 10**9``, a string doubled by
``~`` in a loop or a macro calling itself twice per level would run for hours or fill memory. One
render is therefore bounded by :class:`Limits`: loop iterations plus calls, the size of any value
an operator, filter or call makes (checked *before* the big ones are built), the output, and wall
time. Recursion (a macro, a self-include) ends at Python's recursion limit. Any of these is a
one-line error naming the template.
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from promptbake.errors import TemplateError


@dataclass(frozen=True)
class Limits:
    """What one render may use. Prompts are kilobytes rendered in microseconds; these are orders
    of magnitude above any real template and far below what would hurt the machine."""

    steps: int = 1_000_000  # loop iterations plus calls (macros, methods, globals)
    chars: int = 4_000_000  # characters (or items) of any value made, and of the output
    int_bits: int = 100_000  # bits of an integer an operator makes (10**10**10 is refused)
    seconds: float = 5.0


DEFAULT_LIMITS = Limits()


class LimitExceeded(TemplateRuntimeError):
    """A render went past its :class:`Limits`."""


class _Meter:
    """The running count of one render (held in a context variable while it runs)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.steps = 0
        self.deadline = time.monotonic() + limits.seconds

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise LimitExceeded(f"more than {self.limits.steps:,} loop iterations and calls")
        if self.steps % 1024 == 0 and time.monotonic() > self.deadline:
            raise LimitExceeded(f"rendering took longer than {self.limits.seconds:g} s")


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar("promptbake_template_meter", default=None)
_FORMAT_SPEC = re.compile(r"%[-+ #0*]*(\d*)(?:\.(\d+))?|\{[^{}]*?:[^{}\d]*(\d+)(?:\.(\d+))?")


def _tick() -> None:
    meter = _METER.get()
    if meter is not None:
        meter.tick()


def _limits() -> Limits:
    meter = _METER.get()
    return meter.limits if meter is not None else DEFAULT_LIMITS


_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def _refuse_size(size: float, what: str) -> None:
    limit = _limits().chars
    if size > limit:
        raise LimitExceeded(f"{what} would be {size:,.0f} long, over the limit of {limit:,}")


def _checked(value: Any, what: str) -> Any:
    _refuse_size(_size(value), what)
    if isinstance(value, int) and value.bit_length() > _limits().int_bits:
        raise LimitExceeded(f"{what} makes an integer of more than {_limits().int_bits:,} bits")
    return value


def _check_format(fmt: Any, args: Iterable[Any] = ()) -> None:
    """A printf or ``str.format`` width or precision of a billion builds a billion characters
    (written in the format, or passed for a ``*``)."""
    if isinstance(fmt, str):
        widths = [int(n) for match in _FORMAT_SPEC.finditer(fmt) for n in match.groups() if n]
        if "*" in fmt:
            widths += [a for a in args if isinstance(a, int)]
        _refuse_size(max(widths, default=0), "a formatted field")


def _precheck_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``+``, ``**`` and ``%`` results that would be too big, before building them."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if _size(seq) and isinstance(times, int):
                _refuse_size(_size(seq) * times, "a repeated value")
        if isinstance(left, int) and isinstance(right, int):
            _checked_bits(left.bit_length() + right.bit_length())
    elif operator == "+" and _size(left) and _size(right):
        _refuse_size(_size(left) + _size(right), "a joined value")
    elif operator == "**" and isinstance(left, int | float) and isinstance(right, int | float):
        if abs(left) > 1 and right > 0:
            _checked_bits(right * math.log2(abs(left)))
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))


def _checked_bits(bits: float) -> None:
    if bits > _limits().int_bits:
        raise LimitExceeded(f"an integer of about {bits:,.0f} bits, over the limit of {_limits().int_bits:,}")


def _precheck_filter(name: str, args: tuple[Any, ...]) -> None:
    """The filters that can build a huge value from small arguments, estimated before they run."""
    if name in ("center", "indent", "batch", "slice") and len(args) > 1:
        width = args[1]
        _refuse_size(width if isinstance(width, int) else _size(width) * _size(args[0]), f"|{name}")
    elif name == "format" and args:
        _check_format(args[0], args[1:])
    elif name == "replace" and len(args) > 2:
        text, old, new = (str(a) for a in args[:3])
        hits = text.count(old) if old else len(text) + 1
        _refuse_size(len(text) + hits * max(0, len(new) - len(old)), "|replace")
    elif name in ("join", "sum") and args and isinstance(args[0], list | tuple):
        sep = _size(args[1]) if name == "join" and len(args) > 1 else 0
        _refuse_size(sum(_size(i) + sep for i in args[0]), f"|{name}")


# the filters that can make a value much bigger than their input; the others (upper, sort, tojson,
# ...) make at most a few times what they are given, which is itself bounded
SIZING_FILTERS = ("center", "indent", "batch", "slice", "format", "replace", "join", "sum")


def _guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    passes_arg = getattr(fn, "jinja_pass_arg", None) is not None

    @functools.wraps(fn)  # keeps ``jinja_pass_arg``: context and environment filters still get theirs
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _precheck_filter(name, args[1:] if passes_arg else args)
        return _checked(fn(*args, **kwargs), f"|{name}")

    return guarded


def _loop_guard(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates through: each iteration is a step of the render."""
    for item in iterable:
        _tick()
        yield item


def _concat_guard(parts: list[Any]) -> str:
    """``a ~ b``, sized before it is built (a string doubled by ``~`` in a loop)."""
    return _bounded_concat([str(p) for p in parts], "a ~ concatenation")


def _bounded_concat(parts: Iterable[str], what: str = "the rendered text") -> str:
    """What Jinja joins a template's, a macro's, a ``{% set %}`` block's or a ``{% filter %}``
    block's output with: a loop yielding a 3 MB string 100,000 times must not become a 300 GB join."""
    texts, size, limit = [], 0, _limits().chars
    for text in parts:  # sized as they come: each part may be a new string of megabytes
        size += len(text)
        if size > limit:
            raise LimitExceeded(f"{what} is over the limit of {limit:,} characters")
        texts.append(text)
    return "".join(texts)


def _lipsum_guard(lipsum: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(lipsum)
    def bounded(n: int = 5, *args: Any, **kwargs: Any) -> str:
        if isinstance(n, int) and n > 100:
            raise LimitExceeded(f"lipsum({n}) would build {n:,} paragraphs; at most 100")
        return lipsum(n, *args, **kwargs)

    return bounded


class _Metering(NodeTransformer):
    """Routes every loop through ``_loop_guard`` and every ``~`` through ``_concat_guard``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = cast(nodes.For, self.generic_visit(node))
        node.iter = nodes.Filter(node.iter, "_pb_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = cast(nodes.Concat, self.generic_visit(node))
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(parts, "_pb_concat", [], [], None, None, lineno=node.lineno)


class BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, with every loop, call and size-making operation metered (see :class:`Limits`).
    Intercepting the operators also stops Jinja from folding ``10**10**10`` while compiling."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_bounded_concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["lipsum"] = _lipsum_guard(cast(Callable[..., str], self.globals["lipsum"]))
        self.filters.update({name: _guard_filter(name, self.filters[name]) for name in SIZING_FILTERS})
        self.filters["_pb_loop"] = _loop_guard
        self.filters["_pb_concat"] = _concat_guard

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Metering().visit(super()._parse(source, name, filename))
        assert isinstance(tree, nodes.Template)
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return _checked(super().call(__context, __obj, *args, **kwargs), "a call")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _precheck_binop(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right), f"'{operator}'")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


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
        self.env = BoundedEnvironment(
            loader=self._loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
            finalize=_finalize,
        )
        self.env.filters["tojson"] = _tojson
        self._compiled: dict[str, jinja2.Template] = {}
        self._fixed: set[str] = set()  # templates with no Jinja syntax: the same text for any row
        self._rendered: dict[str, str] = {}  # ... and that text, once rendered
        self._globals: dict[str, dict[str, Any]] = {}  # per template, its globals as one flat dict

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
        source = self._loader.get_source(self.env, name)[0]
        if not any(mark in source for mark in ("{{", "{%", "{#")):
            self._fixed.add(name)
        return compiled

    def render(self, name: str, variables: dict[str, Any], limits: Limits | None = None) -> str:
        text = self._rendered.get(name) if limits is None else None
        if text is not None:  # a system prompt rendered for each of a million rows costs one render
            return text
        template = self.get(name)
        if name in self._fixed and limits is None:
            self._rendered[name] = text = self._render(template, name, variables, None)
            return text
        return self._render(template, name, variables, limits)

    def _render(self, template: jinja2.Template, name: str, variables: dict[str, Any], limits: Limits | None) -> str:
        token = _METER.set(_Meter(limits or DEFAULT_LIMITS))
        try:
            return self._run(template, name, variables)
        except (OverflowError, MemoryError, RecursionError) as exc:
            # the sandbox's range cap, or a macro or include that calls itself without end
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            why = "calls itself too deeply (recursion)" if isinstance(exc, RecursionError) else str(exc) or "too big"
            raise TemplateError(f"{template.filename or name}{at}: template refused: {why}") from None
        except LimitExceeded as exc:
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            raise TemplateError(f"{template.filename or name}{at}: template refused: {exc}") from None
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
        except Exception as exc:
            # a template's own runtime error ({{ 1 / 0 }}, a filter given the wrong type) is bad input
            line = _template_line(template.filename or name)
            at = f":{line}" if line else ""
            raise TemplateError(f"{template.filename or name}{at}: {type(exc).__name__}: {exc}") from exc
        finally:
            _METER.reset(token)

    def _run(self, template: jinja2.Template, name: str, variables: dict[str, Any]) -> str:
        """``template.render(variables)``, without merging the globals' chain of dicts into a new
        one for every row (a third of a short template's render): they are flattened once."""
        flat = self._globals.get(name)
        if flat is None:
            flat = self._globals[name] = dict(template.globals)
        # what template.new_context does, given the flat globals: Context takes their keys, and
        # taking them from the ChainMap it would get was a sixth of planning
        context = self.env.context_class(self.env, {**flat, **variables}, template.name, template.blocks,
                                         globals=flat)
        try:
            return self.env.concat(template.root_render_func(context))
        except Exception:
            self.env.handle_exception()  # as render does: the traceback points into the template

    def expression(self, name: str, source: str, variables: dict[str, Any]) -> str:
        """Render a category expression: a bare Jinja expression, or a ``{{ }}`` template."""
        if "{{" not in source and "{%" not in source:
            source = "{{ " + source + " }}"
        self.add_inline(name, source)
        return self.render(name, variables).strip()


def _tojson(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, default=str)  # str: preflight's placeholders


def _finalize(value: Any) -> Any:
    """``{{ answer }}`` of a ``parse: json`` step (or a table cell holding a list) prints as JSON, as
    a training message needs it, not as a Python repr with single quotes and ``True``."""
    return _tojson(value) if isinstance(value, (dict, list)) else value
