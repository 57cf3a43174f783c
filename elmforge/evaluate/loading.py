"""Load a checkpoint and its tokenizer for evaluation (the shared loader, CPU by default)."""

from __future__ import annotations

import os
from typing import Any

import torch

from elmforge.infer.loading import load_model_and_tokenizer

# Config attributes that carry a context length, in the order they are checked.
CONTEXT_LENGTH_ATTRS = ("max_context_length", "max_position_embeddings", "n_positions", "n_ctx")
DEFAULT_CONTEXT_LENGTH = 2048


def context_length_of(model: Any) -> int:
    config = getattr(model, "config", None)
    for attr in CONTEXT_LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT_LENGTH


def load_model_for_eval(
    path_or_name: str | os.PathLike,
    tokenizer: Any = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "auto",
) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF-layout directory (or hub name), in eval mode on ``device``.

    ``tokenizer`` is a tokenizer object, a tokenizer spec (``tokenizer.model``, directory, hub
    name) or None to use the one stored with the model.
    """
    return load_model_and_tokenizer(path_or_name, tokenizer, device=device, dtype=dtype)
