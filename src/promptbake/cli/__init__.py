"""The Click command line: a thin layer over the library."""

from promptbake.cli.main import cli

__all__ = ["cli"]
