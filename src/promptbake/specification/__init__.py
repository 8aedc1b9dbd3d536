"""Spec models, the YAML loader and the sandboxed templates: what a dataset recipe is."""
