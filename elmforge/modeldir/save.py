"""Writing a model as an HF-layout model directory: the weights in Apple's layout
(``config.json`` + ``model.safetensors``), completed by :mod:`elmforge.modeldir.complete`.

Checkpoints, the final model of a run, averaging, merged adapters and conversions all write
through here. Nothing is atomic by itself: callers write into a temporary directory
(:func:`elmforge.files.atomic_directory`) and rename it into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from elmforge.data.chat import APPLE_CHAT_TEMPLATE
from elmforge.modeldir.complete import complete_model_dir
from elmforge.progress import quiet_transformers


def model_from_state(model_config: Any, model_state: dict[str, torch.Tensor], source: str) -> Any:
    """An ``OpenELMForCausalLM`` holding ``model_state`` (its dtype); a mismatch with the config
    is a one-line error naming ``source``."""
    from transformers.initialization import no_init_weights

    from elmforge.model.convert import load_model_state
    from elmforge.model.modeling import OpenELMForCausalLM

    with no_init_weights():  # every tensor is about to be overwritten
        model = OpenELMForCausalLM(model_config)
    state = dict(model_state)
    if model_config.share_input_output_layers:
        state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    model = model.to(dtype)
    load_model_state(model, state, source)
    model.config.dtype = dtype
    return model


def save_model(model: Any, directory: Path, tokenizer: Any = None) -> None:
    """``save_pretrained`` (and the tokenizer's) into ``directory``, without a progress bar."""
    with quiet_transformers():
        model.save_pretrained(directory)
    if tokenizer is not None:  # a complete model directory (tokenizer files, generation config)
        complete_model_dir(directory, tokenizer)


def save_model_dir(
    model_config: Any,
    model_state: dict[str, torch.Tensor],
    directory: Path,
    tokenizer: Any = None,
) -> None:
    """Write an HF-layout model directory (not atomic: callers write into a temporary dir)."""
    save_model(model_from_state(model_config, model_state, str(directory)), directory, tokenizer)


def write_model_dir(
    model: Any, tokenizer: Any, directory: Path, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Apple's layout (config.json + model.safetensors), completed by
    :func:`~elmforge.modeldir.complete.complete_model_dir`: tokenizer files, generation config and Apple's chat template (the
    template fine-tuning renders conversations with, whatever the tokenizer carried). ``state``:
    the weights when ``model``'s own are sharded (gathered by the caller)."""
    save_model_dir(model.config, model.state_dict() if state is None else state, directory)
    complete_model_dir(
        directory, tokenizer, chat_template=APPLE_CHAT_TEMPLATE, require_tokenizer=True
    )
