"""Checkpoint conversion: Apple's CoreNet ``.pt`` checkpoints <-> the Hugging Face layout.

CoreNet's published OpenELM checkpoints (intermediate and averaged pretraining checkpoints) hold
the same tensors as the hub repos, named without the ``transformer.`` prefix, with the token
embedding padded to a multiple of 128 rows beyond the vocabulary (32128 rows for 32000 tokens;
row 32000 is the padding index). They are read with ``weights_only=True``: never unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from transformers.initialization import no_init_weights

from elmforge.errors import CheckpointError, first_line
from elmforge.files import atomic_directory, atomic_write, claim_output
from elmforge.layout import resolve_model_dir
from elmforge.model.config import OpenELMConfig
from elmforge.model.integrity import check_finite, check_tensor_names, read_openelm_config
from elmforge.model.modeling import OpenELMForCausalLM

# Keys that training frameworks wrap a state dict in.
_WRAPPER_KEYS = ("model_state_dict", "model", "state_dict", "module")
_EMBEDDING_KEY = "token_embeddings.weight"
_HEAD_KEYS = ("lm_head.weight", "classifier.weight")


def corenet_vocab_rows(vocab_size: int) -> int:
    """Rows of CoreNet's embedding: vocabulary plus the padding row, rounded up to 128."""
    return (vocab_size + 1 + 127) // 128 * 128


def load_corenet_state_dict(
    path: str | os.PathLike, embedding_key: str = _EMBEDDING_KEY
) -> dict[str, torch.Tensor]:
    """Tensors of a CoreNet ``.pt`` checkpoint, unwrapped, with CoreNet's (unprefixed) names.

    ``embedding_key`` is the tensor every OpenELM checkpoint has (a PEFT checkpoint renames it
    ``token_embeddings.base_layer.weight``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, not a torch file, pickled code, ...
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({first_line(err)})"
        ) from None
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "transformer."):  # DDP wrappers, or an HF-named dict
            key = key.removeprefix(prefix)
        state[key] = value
    if embedding_key not in state:
        raise CheckpointError(f"{path}: no '{embedding_key}': not an OpenELM checkpoint")
    check_finite(state, str(path))
    return state


def corenet_to_hf_state_dict(
    state: Mapping[str, torch.Tensor], config: OpenELMConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """CoreNet names -> Apple's HF names, padding rows of the embedding (and head) trimmed."""
    hf_state = {}
    for key, value in state.items():
        if key in (_EMBEDDING_KEY, *_HEAD_KEYS):
            if value.shape[0] < config.vocab_size:
                raise CheckpointError(
                    f"{source}: {key} has {value.shape[0]} rows, fewer than the config's "
                    f"vocab_size={config.vocab_size}"
                )
            value = value[: config.vocab_size]
        hf_key = "lm_head.weight" if key in _HEAD_KEYS else f"transformer.{key}"
        hf_state[hf_key] = value.contiguous()
    return hf_state


def hf_to_corenet_state_dict(model: OpenELMForCausalLM) -> dict[str, torch.Tensor]:
    """Apple's HF names -> CoreNet names, the embedding padded as CoreNet has it."""
    config = model.config
    rows = corenet_vocab_rows(config.vocab_size)
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and config.share_input_output_layers:
            continue
        key = key.removeprefix("transformer.")
        if key in (_EMBEDDING_KEY, "lm_head.weight"):
            padded = value.new_zeros(rows, value.shape[1])
            padded[: value.shape[0]] = value
            value = padded
        state[key] = value.detach().clone()
    return state


def load_model_state(
    model: OpenELMForCausalLM, hf_state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``hf_state`` into ``model``, with a one-line error naming ``source`` on a mismatch."""
    expected = model.state_dict()
    if model.config.share_input_output_layers:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: tensors do not match the model config "
            f"(missing: {', '.join(missing[:3]) or 'none'}{'...' if len(missing) > 3 else ''}; "
            f"unexpected: {', '.join(unexpected[:3]) or 'none'}"
            f"{'...' if len(unexpected) > 3 else ''})"
        )
    for key, value in hf_state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, the config expects "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(hf_state, strict=False)
    if model.config.share_input_output_layers:
        model.tie_weights()


def save_pretrained_atomic(
    model: OpenELMForCausalLM,
    out_dir: str | os.PathLike,
    finish: Callable[[Path], None] | None = None,
    verb: str | None = None,
) -> Path:
    """``save_pretrained`` into a temporary sibling directory, ``finish(it)`` (the caller's last
    touches, e.g. tokenizer files) if given, then rename it into place (recording ``verb``)."""
    with atomic_directory(out_dir, verb=verb) as tmp:
        model.save_pretrained(tmp)
        if finish is not None:
            finish(tmp)
    return Path(out_dir)


def corenet_to_hf(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: OpenELMConfig,
    finish: Callable[[Path], None] | None = None,
    force: bool = False,
) -> Path:
    """Convert a CoreNet ``.pt`` checkpoint into an HF-layout directory (safetensors + config);
    ``finish`` is called on the directory before it is renamed into place (the model knows
    nothing of tokenizers: :func:`elmforge.export.prepare.corenet_to_model_dir` completes it).
    ``out_dir`` may replace only an earlier conversion, with ``force``
    (:func:`elmforge.files.claim_output`)."""
    out_dir = claim_output(out_dir, "convert", force, inputs=(checkpoint,))
    state = corenet_to_hf_state_dict(load_corenet_state_dict(checkpoint), config, str(checkpoint))
    dtype = state[f"transformer.{_EMBEDDING_KEY}"].dtype
    with no_init_weights():  # every tensor is about to be overwritten
        model = OpenELMForCausalLM(config).to(dtype)
    load_model_state(model, state, str(checkpoint))
    model.config.dtype = dtype
    return save_pretrained_atomic(model, out_dir, finish, verb="convert")


def hf_to_corenet(
    model_dir: str | os.PathLike, out_path: str | os.PathLike, force: bool = False
) -> Path:
    """Write an OpenELM model (a model, run or checkpoint directory: what MODEL names for every
    verb) as a CoreNet ``.pt`` state dict (an existing file is replaced only with ``force``)."""
    model_dir = resolve_model_dir(model_dir)
    out_path = claim_output(out_path, "convert", force, kind="file", inputs=(model_dir,))
    state = hf_to_corenet_state_dict(load_pretrained(model_dir))
    return atomic_write(out_path, lambda tmp: torch.save(state, tmp))


def load_pretrained(
    model_dir: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str = "cpu"
) -> OpenELMForCausalLM:
    """Load an HF-layout OpenELM directory, with one-line errors for missing, corrupt or
    inconsistent files (another architecture, a tensor missing, NaN or absurd values)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    config = read_openelm_config(model_dir)
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise CheckpointError(f"{model_dir}: no model weights (*.safetensors)")
    check_safetensors(model_dir)
    try:
        model, info = OpenELMForCausalLM.from_pretrained(
            model_dir, config=config, dtype=dtype or "auto", output_loading_info=True
        )
    except Exception as err:
        raise CheckpointError(f"{model_dir}: cannot load weights ({first_line(err)})") from None
    # transformers initialises a missing tensor at random and carries on: refuse instead.
    check_tensor_names(info["missing_keys"], (), str(model_dir))
    check_finite(model.state_dict(), str(model_dir))
    return model.to(device).eval()


def check_safetensors(model_dir: Path) -> None:
    """Catch truncated or corrupt safetensors files with a clear message before loading."""
    from safetensors import safe_open

    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(file, "pt") as handle:
                keys = list(handle.keys())
        except Exception as err:
            raise CheckpointError(f"{file}: corrupt or truncated ({first_line(err)})") from None
        header_end = _safetensors_data_end(file)
        if header_end is not None and file.stat().st_size < header_end:
            raise CheckpointError(
                f"{file}: truncated ({file.stat().st_size} bytes, header says {header_end})"
            )
        if not keys:
            raise CheckpointError(f"{file}: holds no tensors")


def _safetensors_data_end(file: Path) -> int | None:
    import json
    import struct

    with open(file, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            return None
        (header_len,) = struct.unpack("<Q", raw)
        header = json.loads(handle.read(header_len))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + header_len + max(ends, default=0)
