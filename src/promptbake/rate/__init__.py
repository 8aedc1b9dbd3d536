"""Blind side-by-side rating by people: ``promptbake rate``.

LLM judges are a proxy that must be checked against people. ``sources.py`` reads what is rated
(eval files, built datasets) and matches it by example; ``store.py`` keeps the study and every
rating in SQLite as it is given; ``assign.py`` decides who sees which pair, on which side;
``server.py`` serves the page; ``stats.py`` computes win rates, Bradley–Terry strengths, position
bias, agreement and judge–human agreement; ``results.py`` prints them and makes the report
section; ``html.py`` is the autoescaping template environment both pages use.
"""

from promptbake.rate.results import RateResults

__all__ = ["RateResults"]
