"""One way to load a model with its tokenizer, for every verb that runs a model.

``generate``, ``evaluate``, ``chat``, ``serve``, ``bench`` and the demo all go through
:func:`load`, which returns one :class:`LoadedModel` record (model, tokenizer, directory, device,
dtype), so the dtype and device rules, the tokenizer lookup, PEFT adapters and the one-line errors
are the same everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elmforge.errors import CheckpointError, first_line
from elmforge.layout import resolve_model_dir
from elmforge.model.integrity import (
    check_finite,
    check_tensor_names,
    check_tokenizer_fits,
    read_config_json,
    safetensors_names,
)
from elmforge.runtime import QUANTIZED_DTYPES, pick_device, resolve_dtype

if TYPE_CHECKING:
    import torch

# Config attributes that carry a context length, in the order they are checked.
CONTEXT_LENGTH_ATTRS = ("max_context_length", "max_position_embeddings", "n_positions", "n_ctx")
DEFAULT_CONTEXT_LENGTH = 2048


def context_length_of(model: Any) -> int:
    """The context length a model's config declares (2048 when it declares none); ``model`` is
    a model, or a ``config.json`` read as a mapping."""
    config = getattr(model, "config", None)
    for attr in CONTEXT_LENGTH_ATTRS:
        value = model.get(attr) if isinstance(model, dict) else getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT_LENGTH


def find_tokenizer(path_or_name: str | os.PathLike, tokenizer: Any = None) -> Any:
    """The tokenizer :func:`load` uses with the model ``path_or_name`` names (an object or a spec
    to load): ``tokenizer`` if given, a hub model's own, else the model directory's rule
    (:func:`elmforge.data.tokenizer_choice.model_tokenizer`: its own tokenizer, LLaMA-2's for a
    32000-token model, else a one-line error saying how to give one). Checked before any
    weights load."""
    return _tokenizer_spec(local_model_dir(path_or_name), path_or_name, tokenizer)


def _tokenizer_spec(model_dir: Path | None, path_or_name: Any, tokenizer: Any) -> Any:
    if model_dir is None:  # a hub name brings its own
        return tokenizer if tokenizer is not None else str(path_or_name)
    from elmforge.data.tokenizer_choice import model_tokenizer

    return model_tokenizer(model_dir, _config_json(model_dir), tokenizer)


def _config_json(model_dir: Path) -> dict[str, Any] | None:
    """The directory's config.json as a dict, None if it cannot be read as one."""
    try:
        return read_config_json(model_dir)
    except CheckpointError:
        return None


def _is_openelm_dir(model_dir: Path) -> bool:
    config = _config_json(model_dir)
    # An unreadable config.json goes to the OpenELM loader, which says what is wrong with it.
    return config is None or config.get("model_type") == "openelm"


def local_model_dir(path_or_name: str | os.PathLike) -> Path | None:
    """The model directory ``path_or_name`` names (:func:`elmforge.layout.resolve_model_dir`:
    a run's ``final/``, a checkpoint's ``model/``), None for a hub name ("name" or "org/name"
    that is not a local path, in the hub cache or, online, on the hub: checked at once, see
    :mod:`elmforge.modeldir.hub`)."""
    from elmforge.modeldir.hub import check_hub_model, looks_like_a_path

    spec = str(path_or_name)
    if not Path(spec).expanduser().exists() and not looks_like_a_path(spec):
        check_hub_model(spec)
        return None
    return resolve_model_dir(spec)


def load_model(
    path_or_name: str | os.PathLike,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> Any:
    """A causal LM in eval mode on ``device``, without a tokenizer (a draft model): see
    :func:`load`."""
    resolved_device = pick_device(device)
    quantization = dtype if dtype in QUANTIZED_DTYPES else None
    model_dir = local_model_dir(path_or_name)
    if quantization and _loads_quantized(model_dir):
        return _load_quantized(model_dir, quantization, resolved_device)
    model = _load_weights(
        model_dir,
        str(path_or_name),
        "cpu" if quantization else resolved_device,
        resolve_dtype(dtype, resolved_device),
    )
    return _quantized(model, quantization, resolved_device)


def _loads_quantized(model_dir: Path | None) -> bool:
    """Whether int8/int4 can load tensor by tensor (an OpenELM directory of safetensors files),
    without the float32 model in memory first."""
    return (
        model_dir is not None
        and _is_openelm_dir(model_dir)
        and any(model_dir.glob("*.safetensors"))
    )


def _load_quantized(model_dir: Path, quantization: str, device: str) -> Any:
    from elmforge.model.quant_load import load_quantized_pretrained

    return load_quantized_pretrained(model_dir, quantization, device)


def _quantized(model: Any, quantization: str | None, device: str) -> Any:
    """``model`` with int8/int4 linear layers (quantised on the CPU, then moved to ``device``)."""
    if quantization is None:
        return model
    from elmforge.model.quant import quantize_model

    return quantize_model(model, quantization).to(device)


def _load_weights(model_dir: Path | None, name: str, device: str, torch_dtype: torch.dtype) -> Any:
    """The model of an OpenELM directory (integrity-checked), another architecture's HF
    directory, or a hub name (needs the network or the local hub cache), in eval mode."""
    if model_dir is not None and _is_openelm_dir(model_dir):
        from elmforge.model.convert import load_pretrained

        return load_pretrained(model_dir, dtype=torch_dtype, device=device)
    from transformers import AutoModelForCausalLM

    from elmforge.model.registration import register_models

    register_models()  # a hub name may be an OpenELM model (model_type openelm)

    spec = str(model_dir or name)
    try:
        if model_dir is not None:
            _check_architecture(model_dir)
        model, info = AutoModelForCausalLM.from_pretrained(
            spec, dtype=torch_dtype, trust_remote_code=False, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{spec}: cannot load the model ({first_line(err)})") from None
    # transformers initialises a missing tensor at random and carries on: refuse instead.
    check_tensor_names(info["missing_keys"], (), spec)
    check_finite(model.state_dict(), spec)
    return model.to(device).eval()


def _check_architecture(model_dir: Path) -> None:
    """Refuse weights that hold none of the tensors ``config.json``'s architecture needs (say an
    OpenELM directory whose config says llama) before transformers builds a random model of it,
    at that architecture's full size (a 7B Llama: 18 GB and two minutes, measured)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    names = safetensors_names(model_dir)
    if not names:
        return  # no safetensors (a .bin model): transformers' own report is checked after loading
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    prefix = f"{skeleton.base_model_prefix}."
    expected = [name for name, _ in skeleton.named_parameters()]
    if not {n.removeprefix(prefix) for n in expected} & {n.removeprefix(prefix) for n in names}:
        raise CheckpointError(
            f"{model_dir}: none of the tensors of a {config.model_type!r} model (such as "
            f"{expected[0]}) is in its weights; does config.json name the right model_type?"
        )


@dataclass
class LoadedModel:
    """A model ready to run, with everything a verb needs to know about it."""

    model: Any
    """The causal LM, in eval mode on ``device`` (adapters merged in, if any)."""
    tokenizer: Any
    """Its tokenizer object."""
    directory: Path | None
    """The local model directory, None for a hub name."""
    name: str
    """What the user passed (directory or hub name), for reports."""
    device: str
    """The resolved device (``cpu``, ``cuda``, ``cuda:1``...)."""
    dtype: torch.dtype
    """The weights' dtype."""
    adapter: Path | None = None
    """The PEFT adapter directory merged into the model, if any."""
    tokenizer_source: str | None = None
    """Where the tokenizer came from (a path or hub name), None when given as an object."""
    quantization: str | None = None
    """``int8`` / ``int4`` for weight-only quantised linear layers (``dtype`` is then float32)."""

    @property
    def context_length(self) -> int:
        return context_length_of(self.model)


def load(
    path_or_name: str | os.PathLike,
    *,
    tokenizer: Any = None,
    adapter: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> LoadedModel:
    """Load a model directory (or hub name) with its tokenizer and, optionally, a PEFT adapter.

    ``path_or_name`` is a model directory, a run directory (its ``final/``), a training
    checkpoint (its ``model/``) or a hub name. ``tokenizer`` is a tokenizer object, a spec
    (``tokenizer.model``, a directory, a hub name) or None for the model's own (see
    :func:`find_tokenizer`); it is checked before the model loads. ``adapter`` is a PEFT adapter
    directory (``adapter_config.json``), merged into the weights after loading so inference runs
    at the base model's speed.
    """
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.modeldir.adapters import apply_adapter

    model_dir = local_model_dir(path_or_name)
    spec = _tokenizer_spec(model_dir, path_or_name, tokenizer)
    source = str(spec) if isinstance(spec, (str, os.PathLike)) else None
    tokenizer = load_tokenizer(spec) if source is not None else spec
    resolved_device = pick_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    quantization = dtype if dtype in QUANTIZED_DTYPES else None
    # An adapter is merged into the float weights; quantisation (if asked) comes after the merge.
    # Without an adapter, int8/int4 load tensor by tensor (no float32 model in memory).
    direct = quantization is not None and adapter is None and _loads_quantized(model_dir)
    if direct:
        model = _load_quantized(model_dir, quantization, resolved_device)
    else:
        model = _load_weights(
            model_dir, str(path_or_name), "cpu" if quantization else resolved_device, torch_dtype
        )
    check_tokenizer_fits(tokenizer, model, str(path_or_name))
    adapter_dir = None
    if adapter is not None:
        adapter_dir = Path(adapter)
        model = apply_adapter(model, adapter_dir)
    if not direct:
        model = _quantized(model, quantization, resolved_device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        directory=model_dir,
        name=str(path_or_name),
        device=resolved_device,
        dtype=torch_dtype,
        adapter=adapter_dir,
        tokenizer_source=source,
        quantization=quantization,
    )
