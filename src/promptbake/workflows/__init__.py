"""Workflows on top of the pipeline: run, distill, evaluate, top-up."""
