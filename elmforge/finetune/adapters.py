"""LoRA and DoRA adapters through PEFT (pinned), and merging them back into Apple's layout.

Targets. CoreNet's recipe (``projects/openelm/peft_configs``) puts adapters of rank 32, alpha 32,
dropout 0.1 on ``qkv_proj``, ``out_proj``, ``proj_1``, ``proj_2`` and the token embedding; that is
the default here. OpenELM ties its output head to the embedding. PEFT 0.21.2 wraps the embedding
and leaves ``lm_head`` pointing at the wrapped layer's *base* weight (it does not recognise
``token_embeddings`` as an embedding name, so ``ensure_weight_tying`` finds nothing to tie), so
while training the embedding adapter changes the input embeddings and the head keeps reading the
frozen base embedding. That is exactly CoreNet's behaviour (its classifier computes
``F.linear(x, token_embeddings.weight)``, the base layer's weight). With DoRA, PEFT gives the
embedding its own magnitude vector; CoreNet has no DoRA embedding and keeps plain LoRA there.

Merging. ``merge_and_unload`` adds the embedding's delta to the weight the head shares, which
would change the head (measured: relative logit error 0.6 on a perturbed micro model). When the
embedding carries an adapter and the head is tied, :func:`merge_adapter` therefore writes an
untied model (``share_input_output_layers: false``, ``lm_head.weight`` = the base embedding),
Apple's own layout for an untied head, which transformers, mlx-lm and llama.cpp load; merged
logits then equal the adapter's. Without an embedding adapter the model stays tied.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from elmforge.errors import CheckpointError, ConfigError, first_line

PEFT_METHODS = ("none", "lora", "dora")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT and transformers warn about deprecations and tied layers we handle ourselves."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*tied.*")
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        yield


def adaptable_modules(model: nn.Module) -> dict[str, list[str]]:
    """Short module name (``qkv_proj``) -> full names, for the layers PEFT can wrap."""
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and name:
            found.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return found


def check_targets(model: nn.Module, targets: Sequence[str], option: str = "--lora.targets") -> None:
    """Every target must name at least one linear or embedding layer of ``model``."""
    if not targets:
        raise ConfigError(f"{option}: no target modules given")
    modules = adaptable_modules(model)
    full_names = {full for names in modules.values() for full in names}
    for target in targets:
        if target not in modules and target not in full_names:
            raise ConfigError(
                f"{option}: {target!r} is not a linear or embedding layer of this model "
                f"(layers: {', '.join(sorted(modules))})"
            )


def lora_config(method: str, r: int, alpha: float, dropout: float, targets: Sequence[str]) -> Any:
    """PEFT's LoraConfig for ``method`` ``lora`` or ``dora`` (no rsLoRA, no bias, as CoreNet)."""
    from peft import LoraConfig

    if method not in ("lora", "dora"):
        raise ConfigError(f"peft.method: {method!r} has no adapter (expected lora or dora)")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        use_dora=method == "dora",
        use_rslora=False,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=True,
    )


def add_adapter(model: nn.Module, config: Any) -> Any:
    """``model`` wrapped by PEFT: base weights frozen, only the adapter's parameters train."""
    from peft import get_peft_model

    check_targets(model, sorted(config.target_modules))
    with _quiet_peft():
        return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(peft_model: Any, directory: str | os.PathLike, base_model: str) -> None:
    """PEFT's own adapter format (``adapter_config.json`` + safetensors); not atomic by itself."""
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base_model
    with _quiet_peft():
        # The embedding adapter is saved as lora_embedding_A/B; never the whole base embedding.
        peft_model.save_pretrained(str(directory), save_embedding_layers=False)


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
        with _quiet_peft():
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
    with _quiet_peft():
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


def merge_adapter_dir(
    base: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | None = None,
    force: bool = False,
) -> Path:
    """``elmforge merge-adapter``: BASE + ADAPTER -> a merged model directory at ``out_dir``."""
    from elmforge.files import atomic_directory, claim_output
    from elmforge.finetune.trainer import write_model_dir
    from elmforge.infer.loading import load

    inputs = tuple(p for p in (base, adapter_dir) if Path(p).exists())
    out = claim_output(out_dir, "merge-adapter", force, inputs=inputs)
    loaded = load(base, tokenizer=tokenizer, device="cpu", dtype="fp32")
    merged = merge_adapter(load_adapter(loaded.model, adapter_dir))
    with atomic_directory(out, verb="merge-adapter") as tmp:
        write_model_dir(merged, loaded.tokenizer, tmp)
    return out
