"""The Click command line: a thin layer over the library."""

from promptbake.cli import batch as _batch  # noqa: F401  (registers `promptbake batch ...`)
from promptbake.cli import rate as _rate  # noqa: F401  (registers `promptbake rate`)
from promptbake.cli import report  # noqa: F401  (registers `promptbake report`)
from promptbake.cli import study as _study  # noqa: F401  (registers `promptbake study`)
from promptbake.cli import train as _train  # noqa: F401  (registers `promptbake train ...`)
from promptbake.cli.main import cli

__all__ = ["cli"]
