"""Refuse a tokenizer whose ids run past the model's embedding rows, before any training.

A token id >= vocab_size indexes past the embedding table: JAX clamps or fills such
gathers instead of failing, so a mismatched tokenizer shows up only later as garbage or
non-finite losses (issue 31: a 1416-token tokenizer on a 512-row model). Each stage checks
right after loading its tokenizer, from the model's config alone (no weights read).
"""

from __future__ import annotations

import os

from jaxrlhf.models import CheckpointError


def model_vocab_size(path: str | os.PathLike | None = None, arch: str | os.PathLike | None = None) -> int:
    """Embedding rows of the model in the HF folder ``path``, else of the architecture YAML ``arch``."""
    from jaxrlhf.config import read_yaml
    from jaxrlhf.models import config_from_hf, read_config

    if path:
        return int(read_config(path).vocab_size)
    if arch:
        return int(config_from_hf(read_yaml(arch), strict=True, source=str(arch)).vocab_size)
    raise ValueError("model_vocab_size needs a model folder or an architecture file")


def check_tokenizer_fits(tokenizer, rows: int, *, tokenizer_at, model_at) -> None:
    """One-line :class:`CheckpointError` when ``len(tokenizer)`` (added tokens included)
    exceeds ``rows``; fewer tokens than rows is fine (padded vocabularies are common)."""
    n = len(tokenizer)
    if n > rows:
        raise CheckpointError(f"{tokenizer_at}: the tokenizer has {n} tokens but the model {model_at} has "
                              f"{rows} embedding rows (vocab_size); ids {rows} and up would index past "
                              f"the embedding. Use the model's own tokenizer, or a model with vocab_size >= {n}")


def check_stage_tokenizer(tokenizer, model_cfg, tokenizer_at, *, extra_models=()) -> None:
    """The check for a stage config: ``model.path`` (or ``model.arch``) and any ``extra_models``
    folders (a DPO / PPO reference, a critic) against the tokenizer loaded from ``tokenizer_at``."""
    model_at = model_cfg.path or model_cfg.arch
    check_tokenizer_fits(tokenizer, model_vocab_size(model_cfg.path, model_cfg.arch),
                         tokenizer_at=tokenizer_at, model_at=model_at)
    for folder in extra_models:
        if folder:
            check_tokenizer_fits(tokenizer, model_vocab_size(folder), tokenizer_at=tokenizer_at, model_at=folder)
