"""Training a student on a built dataset: on this machine (:mod:`promptbake.train.local`, with
:mod:`~promptbake.train.data`, :mod:`~promptbake.train.student`, :mod:`~promptbake.train.gguf` and
:mod:`~promptbake.train.record`), or on a provider's hosted fine-tuning.

The library entry point is ``promptbake.train_local``; ``promptbake train`` is its command.
"""
