"""LoRA and DoRA adapters for training, through PEFT (pinned).

Targets. CoreNet's recipe (``projects/openelm/peft_configs``) puts adapters of rank 32, alpha 32,
dropout 0.1 on ``qkv_proj``, ``out_proj``, ``proj_1``, ``proj_2`` and the token embedding; that is
the default here. With DoRA, PEFT gives the embedding its own magnitude vector; CoreNet has no
DoRA embedding and keeps plain LoRA there. How PEFT treats OpenELM's tied head, and merging an
adapter back into Apple's layout, are :mod:`elmforge.modeldir.adapters` (loading an adapter to
resume training is there too: inference, evaluation and export apply adapters the same way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from elmforge.errors import ConfigError
from elmforge.modeldir.adapters import quiet_peft


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
    with quiet_peft():
        return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(peft_model: Any, directory: str | os.PathLike, base_model: str) -> None:
    """PEFT's own adapter format (``adapter_config.json`` + safetensors); not atomic by itself."""
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base_model
    with quiet_peft():
        # The embedding adapter is saved as lora_embedding_A/B; never the whole base embedding.
        peft_model.save_pretrained(str(directory), save_embedding_layers=False)
    _sort_target_modules(Path(directory))


def _sort_target_modules(directory: Path) -> None:
    """PEFT keeps ``target_modules`` as a set and writes it in hash order, which changes from
    process to process: sorted, a re-run writes the same bytes."""
    for config_path in directory.rglob("adapter_config.json"):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def write_adapter(peft_model: Any, state: dict[str, Any], directory: str | os.PathLike) -> None:
    """An adapter in PEFT's format from its tensors under PEFT's saved names (gathered from a
    possibly sharded model: ``elmforge.finetune.tasks``), as ``save_pretrained`` writes it:
    ``adapter_config.json`` (inference mode) and ``adapter_model.safetensors``."""
    import copy
    from pathlib import Path

    from safetensors.torch import save_file

    from elmforge.layout import ADAPTER_WEIGHTS

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.inference_mode = True
    config.save_pretrained(str(directory))
    tensors = {key: value.detach().contiguous() for key, value in state.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    _sort_target_modules(directory)
