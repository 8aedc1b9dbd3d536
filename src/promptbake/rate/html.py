"""The rating page's and the results section's templates: one autoescaping Jinja environment, so
every text (answers may hold HTML) is escaped the same way in both."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment


def environment(**filters: Any) -> Environment:
    from jinja2 import PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("promptbake.rate", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(filters)
    return env
