"""Apple's released LoRA/DoRA checkpoints (CoreNet ``.pt``) -> a PEFT adapter (and a merged model).

CoreNet (``corenet/third_party/modeling/lora.py``, adapted from PEFT) wraps each targeted layer
in place, so a PEFT checkpoint holds, under CoreNet's unprefixed names:

- the frozen base weights renamed ``<module>.base_layer.weight`` (the configs' ``rename_scopes_map``);
  the embedding keeps CoreNet's 32128 padded rows;
- per linear layer ``<module>.lora_A.<adapter>.weight`` (r, in) and ``<module>.lora_B.<adapter>.
  weight`` (out, r), and with DoRA ``<module>.lora_magnitude_vector.<adapter>`` (out,): the norm
  of each output row of ``W + scaling * B A``, as in PEFT;
- for the embedding ``token_embeddings.lora_embedding_A.<adapter>`` (r, 32128) and
  ``token_embeddings.lora_embedding_B.<adapter>`` (d, r), plain LoRA even in DoRA runs (CoreNet's
  embedding has no DoRA); the adapter is named ``lora``.

These are PEFT's own tensors, so conversion renames them (``base_model.model.transformer.`` +
name, adapter name dropped), trims the embedding adapter's padded columns (rows past the
vocabulary are never looked up) and, for a DoRA checkpoint, gives PEFT's DoRA embedding the
magnitude that makes it compute exactly CoreNet's plain LoRA embedding (the norm of the adapted
weight, so the DoRA factor is 1). Alpha is not stored in the file: Apple's recipe is 32.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from elmforge.errors import CheckpointError, OptionError
from elmforge.finetune import adapters

BASE_EMBEDDING = "token_embeddings.base_layer.weight"
APPLE_ALPHA = 32.0
APPLE_DROPOUT = 0.1
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector)\.(?P<adapter>[^.]+)(?P<weight>\.weight)?$"
)


def split_checkpoint(
    state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(base weights under CoreNet's plain names, {module: {kind: tensor}} of the adapter)."""
    base, lora = {}, {}
    names = set()
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match:
            lora.setdefault(match["module"], {})[match["kind"]] = value
            names.add(match["adapter"])
        elif "lora_" in key:
            raise CheckpointError(f"{source}: tensor {key!r} is not a CoreNet LoRA/DoRA tensor")
        else:
            base[key.replace(".base_layer.", ".")] = value
    if not lora:
        raise CheckpointError(
            f"{source}: no LoRA tensors (lora_A/lora_B, lora_embedding_A/B): not a CoreNet "
            "LoRA/DoRA checkpoint (a plain checkpoint converts with corenet-to-hf)"
        )
    if len(names) > 1:
        raise CheckpointError(
            f"{source}: several adapters ({', '.join(sorted(names))}); expected one"
        )
    for module, parts in lora.items():
        pairs = (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B"))
        if not any(a in parts and b in parts for a, b in pairs):
            raise CheckpointError(f"{source}: {module} has {sorted(parts)}, not an A/B pair")
    return base, lora


def _rank(lora: dict[str, dict[str, torch.Tensor]], source: str) -> int:
    ranks = {parts.get("lora_A", parts.get("lora_embedding_A")).shape[0] for parts in lora.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"{source}: the adapters have different ranks {sorted(ranks)}")
    return ranks.pop()


def peft_state_dict(
    lora: dict[str, dict[str, torch.Tensor]], vocab_size: int
) -> dict[str, torch.Tensor]:
    """CoreNet's adapter tensors under the names PEFT saves them with."""
    out = {}
    for module, parts in lora.items():
        prefix = f"base_model.model.transformer.{module}"
        for kind, value in parts.items():
            if kind == "lora_embedding_A":
                value = value[:, :vocab_size]  # columns of CoreNet's padding rows
            suffix = f".{kind}.weight" if kind in ("lora_A", "lora_B") else f".{kind}"
            out[prefix + suffix] = value.float().contiguous()
    return out


def build_peft_model(
    checkpoint: str | os.PathLike, config: Any, alpha: float = APPLE_ALPHA
) -> tuple[Any, str]:
    """(the base model carrying the converted adapter, ``lora`` or ``dora``) from Apple's ``.pt``."""
    from peft import set_peft_model_state_dict
    from transformers.initialization import no_init_weights

    from elmforge.model.convert import (
        corenet_to_hf_state_dict,
        load_corenet_state_dict,
        load_model_state,
    )
    from elmforge.model.modeling import OpenELMForCausalLM

    source = str(checkpoint)
    base, lora = split_checkpoint(load_corenet_state_dict(checkpoint, BASE_EMBEDDING), source)
    hf_state = {k: v.float() for k, v in corenet_to_hf_state_dict(base, config).items()}
    with no_init_weights():
        model = OpenELMForCausalLM(config)
    load_model_state(model, hf_state, source)
    method = "dora" if any("lora_magnitude_vector" in p for p in lora.values()) else "lora"
    targets = sorted({module.rsplit(".", 1)[-1] for module in lora})
    spec = adapters.lora_config(method, _rank(lora, source), alpha, APPLE_DROPOUT, targets)
    peft_model = adapters.add_adapter(model, spec)
    tensors = peft_state_dict(lora, config.vocab_size)
    expected = {k: tuple(v.shape) for k, v in _saved_shapes(peft_model).items()}
    for key, value in tensors.items():
        shape = expected.get(key)
        if shape is not None and tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: {key.removeprefix('base_model.model.')} has shape "
                f"{tuple(value.shape)}, the model expects {shape} (wrong --name?)"
            )
    result = set_peft_model_state_dict(peft_model, tensors)
    missing = [k for k in result.missing_keys if "lora_" in k and "magnitude" not in k]
    if missing:
        raise CheckpointError(f"{source}: no adapter tensor for {missing[0]}")
    if method == "dora":
        _embedding_dora_as_lora(peft_model)
    return peft_model.eval(), method


def _saved_shapes(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def _embedding_dora_as_lora(peft_model: Any) -> None:
    """Give PEFT's DoRA embedding the magnitude under which it computes CoreNet's plain LoRA."""
    embedding = peft_model.get_base_model().get_input_embeddings()
    magnitudes = getattr(embedding, "lora_magnitude_vector", None)
    if not magnitudes:
        return
    for name, layer in magnitudes.items():
        with torch.no_grad():
            layer.update_layer(
                base_layer=embedding.get_base_layer(),
                lora_A=embedding.lora_embedding_A[name],
                lora_B=embedding.lora_embedding_B[name],
                scaling=embedding.scaling[name],
            )


def convert_corenet_peft(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Any,
    *,
    base_name: str,
    merge: bool = False,
    tokenizer: Any = None,
    alpha: float = APPLE_ALPHA,
    force: bool = False,
) -> Path:
    """``elmforge convert corenet-peft-to-hf``: OUT_DIR is the PEFT adapter, or with ``merge`` the
    merged model (Apple's layout, tokenizer and chat template) with the adapter in OUT_DIR/adapter."""
    from elmforge.files import atomic_directory, claim_output
    from elmforge.layout import ADAPTER
    from elmforge.modeldir.adapters import merge_adapter
    from elmforge.modeldir.save import write_model_dir

    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < math.inf:
        # NaN would be written into adapter_config.json (not JSON) and merged into every weight.
        raise OptionError("alpha", f"{{option}} {alpha}: must be a positive finite number",
                          flag="--lora-alpha")  # fmt: skip
    out = claim_output(out_dir, "convert", force, inputs=(checkpoint,))
    if merge and tokenizer is None:
        raise CheckpointError(
            "--merge writes a complete model directory and needs a tokenizer: pass --tokenizer "
            "(OpenELM uses LLaMA-2's tokenizer.model)"
        )
    peft_model, _ = build_peft_model(checkpoint, config, alpha)
    with atomic_directory(out, verb="convert") as tmp:
        adapter_dir = tmp / ADAPTER if merge else tmp
        adapters.save_adapter(peft_model, adapter_dir, base_name)
        if merge:
            write_model_dir(merge_adapter(peft_model), tokenizer, tmp)
    return out


def corenet_peft_to_hf(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    *,
    merge: bool = False,
    tokenizer: str | os.PathLike | None = None,
    alpha: float = APPLE_ALPHA,
    force: bool = False,
) -> Path:
    """``elmforge convert corenet-peft-to-hf``: the base shape from ``name`` (a preset, a model
    directory or a ``config.json``), the adapter recorded as made for ``apple/NAME`` (or the
    directory), and for ``merge`` the tokenizer given or else LLaMA-2's where it is found."""
    from elmforge.data.tokenizer import default_tokenizer_path, load_tokenizer
    from elmforge.model.profile import resolve_config

    tokenizer = tokenizer or default_tokenizer_path()
    base_name = name if "/" in name or Path(name).exists() else f"apple/{name}"
    return convert_corenet_peft(
        checkpoint,
        out_dir,
        resolve_config(name),
        base_name=base_name,
        merge=merge,
        tokenizer=load_tokenizer(tokenizer) if merge and tokenizer else None,
        alpha=alpha,
        force=force,
    )
