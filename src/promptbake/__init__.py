"""promptbake: bake prompts into fine-tuning data."""

__version__ = "0.1.0"
