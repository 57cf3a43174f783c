"""Is this really the model it claims to be? Checks every loader runs before trusting weights.

A file can be readable and still wrong: a tensor missing (transformers would initialise it at
random and carry on), a ``config.json`` naming another architecture (a random model of that
architecture), bytes overwritten in the middle of a file (NaN, or values near float32's limit).
Each check raises :class:`~elmforge.errors.CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from elmforge.errors import CheckpointError

OPENELM_MODEL_TYPE = "openelm"
# No trained weight comes near this: its square overflows float32 (3.4e38), so one such value
# turns every activation it touches into inf. Overwritten bytes do produce such values (0x7f7f...
# reads as 3.39e38 in bfloat16 and float32), and NaN (0xff...).
MAX_WEIGHT_MAGNITUDE = 1e18


def config_json_path(model_dir_or_file: str | os.PathLike) -> Path:
    """``DIR/config.json`` for a directory, the path itself for a file."""
    path = Path(model_dir_or_file)
    return path / "config.json" if path.is_dir() else path


def read_config_json(model_dir_or_file: str | os.PathLike) -> dict[str, Any]:
    """A model directory's ``config.json`` (or a config file) as a mapping; one-line errors name
    the file."""
    path = config_json_path(model_dir_or_file)
    if not path.is_file():
        raise CheckpointError(f"{model_dir_or_file}: no config.json (not a model directory)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file (expected JSON)") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def check_openelm_config(config: Mapping[str, Any], source: str) -> None:
    """Refuse a ``config.json`` of another architecture where only OpenELM makes sense."""
    model_type = config.get("model_type")
    if model_type != OPENELM_MODEL_TYPE:
        shown = f"{model_type!r}" if model_type is not None else "missing"
        raise CheckpointError(
            f"{source}: model_type is {shown}, not {OPENELM_MODEL_TYPE!r}: not an OpenELM model"
        )


def read_openelm_config(model_dir_or_file: str | os.PathLike) -> Any:
    """The ``OpenELMConfig`` of a model directory (or config file), refusing other
    architectures."""
    from elmforge.errors import ConfigError, first_line
    from elmforge.model.config import OpenELMConfig

    config_file = config_json_path(model_dir_or_file)
    check_openelm_config(read_config_json(config_file), str(config_file))
    try:
        return OpenELMConfig.from_json_file(config_file)
    except ConfigError as err:
        raise CheckpointError(f"{config_file}: {err}") from None
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{config_file}: not a valid OpenELM config ({first_line(err)})"
        ) from None


def check_finite(tensors: Mapping[str, Any], source: str) -> None:
    """Refuse floating-point tensors holding NaN, inf or values beyond any trained weight."""
    import torch

    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        low, high = torch.aminmax(tensor.detach())  # NaN propagates into both
        if -MAX_WEIGHT_MAGNITUDE <= float(low) and float(high) <= MAX_WEIGHT_MAGNITUDE:
            continue
        nonfinite = int((~torch.isfinite(tensor)).sum())
        what = (
            f"{nonfinite} NaN or infinite values"
            if nonfinite
            else f"a value of {max(abs(float(low)), abs(float(high))):.3g}"
        )
        raise CheckpointError(f"{source}: tensor {name} holds {what} (corrupt file?)")


def check_tensor_names(
    expected: Collection[str], found: Collection[str], source: str, context: str = ""
) -> None:
    """Refuse weights that lack a tensor the model needs (it would be initialised at random)."""
    missing = sorted(set(expected) - set(found))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: no tensor {missing[0]}{more}{context}")


def safetensors_names(model_dir: str | os.PathLike) -> set[str]:
    """Tensor names stored in a directory's ``*.safetensors`` files (headers only)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as handle:
                names.update(handle.keys())
        except Exception as err:
            from elmforge.errors import first_line

            raise CheckpointError(f"{file}: corrupt or truncated ({first_line(err)})") from None
    return names


def check_tokenizer_fits(tokenizer: Any, model: Any, source: str) -> None:
    """Refuse a tokenizer that can produce ids beyond the model's embedding rows."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        return
    size = len(tokenizer)
    if size > rows:
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise CheckpointError(
            f"{name}: {size} tokens, more than the {rows} embedding rows of {source}; "
            "use the tokenizer the model was trained with"
        )
