"""From stored answers to examples: checks, dedupe, balance, split."""
