"""Applying and merging PEFT adapters (LoRA, DoRA): model work that inference, evaluation, export
and fine-tuning's resume all share.

OpenELM ties its output head to the embedding. PEFT 0.21.2 wraps the embedding and leaves
``lm_head`` pointing at the wrapped layer's *base* weight (it does not recognise
``token_embeddings`` as an embedding name, so ``ensure_weight_tying`` finds nothing to tie), so
an embedding adapter changes the input embeddings and the head keeps reading the frozen base
embedding: exactly CoreNet's behaviour (its classifier computes ``F.linear(x,
token_embeddings.weight)``, the base layer's weight).

Merging. ``merge_and_unload`` adds the embedding's delta to the weight the head shares, which
would change the head (measured: relative logit error 0.6 on a perturbed two-layer model). When the
embedding carries an adapter and the head is tied, :func:`merge_adapter` therefore writes an
untied model (``share_input_output_layers: false``, ``lm_head.weight`` = the base embedding),
Apple's own layout for an untied head, which transformers, mlx-lm and llama.cpp load; merged
logits then equal the adapter's. Without an embedding adapter the model stays tied.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from elmforge.errors import CheckpointError, first_line
from elmforge.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from elmforge.model.integrity import check_finite


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT and transformers warn about deprecations and tied layers we handle ourselves."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*tied.*")
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        yield


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, trainable: bool = False) -> Any:
    """``model`` with the PEFT adapter of ``adapter_dir``; an adapter made for another model's
    shape (other layer sizes, another layer count, other targets) is a one-line error."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not (adapter_dir / ADAPTER_CONFIG).is_file() or not weights.is_file():
        raise CheckpointError(
            f"{adapter_dir}: not a PEFT adapter directory ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
        )
    try:
        with safe_open(weights, "pt") as handle:
            names = list(handle.keys())
            stored = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except Exception as err:
        raise CheckpointError(f"{weights}: corrupt or truncated ({first_line(err)})") from None
    try:
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except Exception as err:  # peft raises ValueError, KeyError, RuntimeError (shapes) alike
        detail = first_line(err)
        if "size mismatch" in str(err):
            detail = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
        raise CheckpointError(
            f"{adapter_dir}: the adapter does not fit this model ({detail})"
        ) from None
    expected = {
        key: tuple(value.shape) for key, value in get_peft_model_state_dict(peft_model).items()
    }
    for key in sorted(set(stored) ^ set(expected)):
        detail = (
            f"it has {key}, which the model lacks"
            if key in stored
            else f"the model expects {key}, which it lacks"
        )
        raise CheckpointError(
            f"{adapter_dir}: the adapter does not fit this model (made for another one: {detail})"
        )
    return peft_model


def merge_adapter(peft_model: Any) -> nn.Module:
    """The base model with the adapter merged into its weights (module docstring: the head)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = peft_model.get_base_model()
    embedding = base.get_input_embeddings()
    tied = getattr(base.config, "share_input_output_layers", False)
    head = None
    if tied and isinstance(embedding, BaseTunerLayer):
        head = embedding.get_base_layer().weight.detach().clone()
    with quiet_peft():
        merged = peft_model.merge_and_unload()
    if head is None:
        return merged.eval()
    return untie_head(merged, head)


def untie_head(model: nn.Module, head: Any) -> nn.Module:
    """An untied copy of an OpenELM model whose output head is ``head``."""
    from transformers.initialization import no_init_weights

    from elmforge.model.config import OpenELMConfig
    from elmforge.model.convert import load_model_state
    from elmforge.model.modeling import OpenELMForCausalLM

    fields = {**model.config.to_dict(), "share_input_output_layers": False}
    fields.pop("tie_word_embeddings", None)
    config = OpenELMConfig.from_dict(fields)
    dtype = next(model.parameters()).dtype
    with no_init_weights():
        untied = OpenELMForCausalLM(config).to(dtype)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["lm_head.weight"] = head.to(dtype)
    load_model_state(untied, state, "merged adapter")
    untied.config.dtype = dtype
    return untied.eval()


def apply_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """``model`` with the PEFT adapter in ``adapter_dir`` merged into its weights (an adapter made
    for another model, or one whose weights are not finite, is a one-line error)."""
    merged = merge_adapter(load_adapter(model, adapter_dir))
    check_finite(merged.state_dict(), str(adapter_dir))
    return merged
