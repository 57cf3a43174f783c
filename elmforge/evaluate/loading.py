"""Load a checkpoint and its tokenizer for evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from elmforge.data.tokenizer import default_tokenizer_path, load_tokenizer
from elmforge.errors import CheckpointError, ElmforgeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config attributes that carry a context length, in the order they are checked.
CONTEXT_LENGTH_ATTRS = ("max_context_length", "max_position_embeddings", "n_positions", "n_ctx")
DEFAULT_CONTEXT_LENGTH = 2048


def has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16 matmuls are slow there) and bfloat16 on an accelerator."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if dtype not in DTYPES:
        raise ElmforgeError(f"--dtype {dtype}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


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
    name) or None to use the one stored with the model; a model without one is an error rather
    than a silent guess, because scores depend on the exact tokenizer.
    """
    from transformers import AutoModelForCausalLM

    import elmforge  # noqa: F401  (registers OpenELM with the Auto classes)

    spec = str(path_or_name)
    model_dir = Path(spec)
    is_local = model_dir.exists()
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if not is_local and looks_local:  # hub names are "name" or "org/name"
        raise CheckpointError(f"{model_dir}: no such model directory")
    if is_local and not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a model directory (no config.json)")

    if tokenizer is None:
        if is_local and not has_tokenizer(model_dir):
            llama2 = default_tokenizer_path()
            example = f", e.g. --tokenizer {llama2}" if llama2 else ""
            raise ElmforgeError(
                f"{model_dir}: the model directory has no tokenizer (tokenizer.json or "
                f"tokenizer.model); pass --tokenizer PATH (OpenELM uses LLaMA-2's{example})"
            )
        tokenizer = load_tokenizer(spec)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)

    torch_dtype = resolve_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=torch_dtype, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{spec}: cannot load the model ({first_line})") from None
    model.to(device)
    model.eval()
    return model, tokenizer
