"""One way to load a model with its tokenizer, for every verb that runs a model.

``generate``, ``evaluate``, ``chat``, ``serve``, ``bench`` and the demo all go through
:func:`load`, which returns one :class:`LoadedModel` record (model, tokenizer, directory, device,
dtype), so the dtype and device rules, the tokenizer lookup, PEFT adapters and the one-line errors
are the same everywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elmforge.errors import CheckpointError, OptionError, first_line
from elmforge.train.run_dir import CHECKPOINT_MODEL

if TYPE_CHECKING:
    import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Spelling -> torch dtype name: the short spellings of run configs and transformers' long ones.
# (Names, not torch objects: the CLI lists them before it imports torch.)
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
DTYPE_CHOICES = ("auto", *DTYPES)
# Config attributes that carry a context length, in the order they are checked.
CONTEXT_LENGTH_ATTRS = ("max_context_length", "max_position_embeddings", "n_positions", "n_ctx")
DEFAULT_CONTEXT_LENGTH = 2048


def pick_device(device: str = "auto") -> str:
    """``auto`` is CUDA where there is a GPU, else the CPU; asking for a missing GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", f"{{option}} {device}: CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto`` is float32 on the CPU (its bf16 matmuls are slow) and bfloat16 on an accelerator."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if dtype not in DTYPES:
        raise OptionError(
            "dtype", f"{{option}} {dtype}: expected one of {', '.join(DTYPE_CHOICES)}"
        )
    return getattr(torch, DTYPES[dtype])


def context_length_of(model: Any) -> int:
    """The context length a model's config declares (2048 when it declares none)."""
    config = getattr(model, "config", None)
    for attr in CONTEXT_LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT_LENGTH


def has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES)


def find_tokenizer(model_dir: str | os.PathLike, tokenizer: Any = None) -> Any:
    """The tokenizer to use: ``tokenizer`` if given, else the model directory's own, else (for a
    model with LLaMA-2's 32000-token vocabulary, as Apple's checkpoints have) the LLaMA-2
    ``tokenizer.model`` where :func:`elmforge.data.tokenizer.default_tokenizer_path` finds it,
    which is what Apple evaluated with.

    Anything else is an error rather than a silent guess: scores and text depend on the exact
    tokenizer.
    """
    if tokenizer is not None:
        return tokenizer
    model_dir = Path(model_dir)
    if has_tokenizer(model_dir) or not model_dir.exists():  # a hub name brings its own
        return str(model_dir)
    from elmforge.data.tokenizer import LLAMA2_VOCAB_SIZE, default_tokenizer_path

    llama2 = default_tokenizer_path()
    config = _config_json(model_dir) or {}
    if llama2 is not None and config.get("vocab_size") == LLAMA2_VOCAB_SIZE:
        return llama2
    example = f", e.g. {{option}} {llama2}" if llama2 else ""
    raise OptionError(
        "tokenizer",
        f"{model_dir}: the model directory has no tokenizer (tokenizer.json or tokenizer.model); "
        f"pass {{option}} PATH (OpenELM uses LLaMA-2's{example})",
    )


def _config_json(model_dir: Path) -> dict[str, Any] | None:
    """The directory's config.json as a dict, None if it cannot be read as one."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _is_openelm_dir(model_dir: Path) -> bool:
    config = _config_json(model_dir)
    # An unreadable config.json goes to the OpenELM loader, which says what is wrong with it.
    return config is None or config.get("model_type") == "openelm"


def local_model_dir(path_or_name: str | os.PathLike) -> Path | None:
    """The model directory ``path_or_name`` names, None for a hub name; a training checkpoint
    (``checkpoints/step-N``) names its ``model/``. A local path that is neither is an error."""
    spec = str(path_or_name)
    model_dir = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if not model_dir.exists() and not looks_local:  # hub names are "name" or "org/name"
        return None
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    checkpoint_model = model_dir / CHECKPOINT_MODEL
    if not (model_dir / "config.json").is_file() and (checkpoint_model / "config.json").is_file():
        return checkpoint_model
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir}: not a model directory (no config.json)")
    return model_dir


def load_model(
    path_or_name: str | os.PathLike,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> Any:
    """A causal LM in eval mode on ``device``: an OpenELM directory (integrity-checked), another
    architecture's HF directory, or a hub name (needs the network or the local hub cache)."""
    from elmforge.model.convert import load_pretrained

    model_dir = local_model_dir(path_or_name)
    device = pick_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if model_dir is not None and _is_openelm_dir(model_dir):
        return load_pretrained(model_dir, dtype=torch_dtype, device=device)
    from transformers import AutoModelForCausalLM

    from elmforge.model.registration import register_models

    register_models()  # a hub name may be an OpenELM model (model_type openelm)

    spec = str(model_dir or path_or_name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=torch_dtype, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{spec}: cannot load the model ({first_line(err)})") from None
    return model.to(device).eval()


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

    ``tokenizer`` is a tokenizer object, a spec (``tokenizer.model``, a directory, a hub name) or
    None for the model's own (see :func:`find_tokenizer`); it is checked before the model loads.
    ``adapter`` is a PEFT adapter directory (``adapter_config.json``), merged into the weights
    after loading so inference runs at the base model's speed.
    """
    from elmforge.data.tokenizer import load_tokenizer

    model_dir = local_model_dir(path_or_name)
    spec = find_tokenizer(model_dir or path_or_name, tokenizer)
    source = str(spec) if isinstance(spec, (str, os.PathLike)) else None
    tokenizer = load_tokenizer(spec) if source is not None else spec
    resolved_device = pick_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    model = load_model(model_dir or path_or_name, device=resolved_device, dtype=torch_dtype)
    adapter_dir = None
    if adapter is not None:
        adapter_dir = Path(adapter)
        model = merge_adapter(model, adapter_dir)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        directory=model_dir,
        name=str(path_or_name),
        device=resolved_device,
        dtype=torch_dtype,
        adapter=adapter_dir,
        tokenizer_source=source,
    )


def merge_adapter(model: Any, adapter_dir: str | os.PathLike) -> Any:
    """``model`` with the PEFT adapter in ``adapter_dir`` merged into its weights."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)"
        )
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except Exception as err:  # peft raises ValueError, KeyError, RuntimeError (shapes) alike
        raise CheckpointError(
            f"{adapter_dir}: cannot apply the adapter ({first_line(err)})"
        ) from None
    return peft_model.merge_and_unload().eval()


def load_model_and_tokenizer(
    path_or_name: str | os.PathLike,
    tokenizer: Any = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> tuple[Any, Any]:
    """(model, tokenizer). ``tokenizer`` is a tokenizer object, a spec (``tokenizer.model``,
    a directory, a hub name) or None for the model's own; both are checked before the model
    loads."""
    from elmforge.data.tokenizer import load_tokenizer

    model_dir = local_model_dir(path_or_name)
    tokenizer = find_tokenizer(model_dir or path_or_name, tokenizer)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return load_model(model_dir or path_or_name, device=device, dtype=dtype), tokenizer
