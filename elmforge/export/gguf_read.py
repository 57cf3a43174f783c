"""GGUF -> Apple's HF layout: a GGUF found in the wild becomes a model directory that elmforge
(and transformers, mlx-lm) can evaluate and fine-tune.

The file is read with ``gguf.GGUFReader`` (memory-mapped); f32, f16, bf16 and q8_0 tensors are
dequantised with ``gguf.quants``; ``ffn_gate`` and ``ffn_up`` are stacked back into ``proj_1``.
The config is rebuilt from the ``openelm.*`` keys: when the per-layer shapes are those of a
preset (``OpenELM-270M`` ...) the preset's own fields are used, so the ``config.json`` is Apple's;
otherwise the per-layer lists are written as they are (FFN multipliers ``ffn_dim / model_dim``
with the largest power-of-two divisor, which gives the same widths back). Weights are stored as
float32 by default: every value of these four types is exact in float32.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elmforge.errors import CheckpointError, OptionError, first_line
from elmforge.export.gguf import ARCH, tensor_plan
from elmforge.export.vocab import checked_int, field_value, int_field

READABLE_TYPES = ("F32", "F16", "BF16", "Q8_0")
DTYPES = ("float32", "float16", "bfloat16")
_DIVISORS = (256, 128, 64, 32, 16, 8, 4, 2, 1)


@contextlib.contextmanager
def open_gguf(path: Path) -> Iterator[Any]:
    """A ``GGUFReader`` of an OpenELM GGUF file (a one-line error saying what is wrong with it
    otherwise), released on exit: the reader has no ``close()``, and its memory map stays open as
    long as any array it handed out (fields, tensors) is referenced."""
    from gguf import GGUFReader

    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # bad magic, short header, cut-off tensor data, ...
        raise CheckpointError(
            f"{path}: not a readable GGUF file, or truncated ({first_line(err)})"
        ) from None
    try:
        _check_reader(reader, path)
        yield reader
    finally:
        reader.fields, reader.tensors, reader.data = OrderedDict(), [], None


def _check_reader(reader: Any, path: Path) -> None:
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise CheckpointError(f"{path}: truncated ({size} bytes, the tensors need {end})")
    arch = field_value(reader, "general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{path}: a GGUF of architecture {arch!r}, not OpenELM ({ARCH!r})")
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in READABLE_TYPES:
            raise CheckpointError(
                f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}; gguf-to-hf reads "
                f"{', '.join(t.lower() for t in READABLE_TYPES)}"
            )


def _per_layer(reader: Any, key: str, layers: int, source: str, least: int = 1) -> list[int]:
    name = f"{ARCH}.{key}"
    value = field_value(reader, name)
    if value is None:
        raise CheckpointError(f"{source}: no {name}")
    values = [value] * layers if not isinstance(value, list) else value
    if len(values) != layers:
        raise CheckpointError(f"{source}: {name} has {len(values)} values for {layers} blocks")
    return [checked_int(v, name, source, least) for v in values]


def config_from_gguf(reader: Any, source: str) -> Any:
    """The :class:`OpenELMConfig` a GGUF file describes."""
    from elmforge.model.config import OpenELMConfig

    def scalar(key: str, kind: type = int) -> Any:
        value = field_value(reader, f"{ARCH}.{key}")
        if value is None:
            raise CheckpointError(f"{source}: no {ARCH}.{key}")
        if kind is int:
            return checked_int(value, f"{ARCH}.{key}", source, least=1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CheckpointError(f"{source}: {ARCH}.{key} is {value!r}, expected a number > 0")
        return float(value)

    layers, d = scalar("block_count"), scalar("embedding_length")
    if layers > len(reader.tensors):  # each block has several tensors
        raise CheckpointError(
            f"{source}: {ARCH}.block_count {layers}, but the file has {len(reader.tensors)} tensors"
        )
    queries = _per_layer(reader, "attention.head_count", layers, source)
    kv_heads = _per_layer(reader, "attention.head_count_kv", layers, source, least=0)
    ffn = _per_layer(reader, "feed_forward_length", layers, source)
    if field_value(reader, f"{ARCH}.attention.key_length") is not None:
        head_dim = scalar("attention.key_length")
    else:  # llama.cpp's own default: the embedding split over the heads
        head_dim = d // queries[0]
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise CheckpointError(f"{source}: no token_embd.weight tensor")
    if len(embedding.shape) != 2:
        raise CheckpointError(
            f"{source}: token_embd.weight has {len(embedding.shape)} dimensions, expected 2"
        )
    groups = {q // kv for q, kv in zip(queries, kv_heads) if kv and q % kv == 0}
    if len(groups) != 1 or any(not kv or q % kv for q, kv in zip(queries, kv_heads)):
        raise CheckpointError(
            f"{source}: query/kv head counts {queries} / {kv_heads} do not share one GQA group size"
        )
    shared = dict(
        vocab_size=int(embedding.shape[1]),
        max_context_length=scalar("context_length"),
        rope_freq_constant=scalar("rope.freq_base", float),
        rms_norm_eps=scalar("attention.layer_norm_rms_epsilon", float),
        bos_token_id=int_field(reader, "tokenizer.ggml.bos_token_id", source, 1),
        eos_token_id=int_field(reader, "tokenizer.ggml.eos_token_id", source, 2),
    )
    shape = (layers, d, head_dim, queries, kv_heads, ffn)
    divisor = next(c for c in _DIVISORS if all(f % c == 0 for f in ffn))
    try:
        preset = _preset_of(shape, shared)
        if preset is not None:
            return preset
        config = OpenELMConfig(
            num_transformer_layers=layers,
            model_dim=d,
            head_dim=head_dim,
            num_query_heads=queries,
            num_kv_heads=kv_heads,
            num_gqa_groups=groups.pop(),
            qkv_multipliers=[
                max(round(q * head_dim / d, 2), 0.01) for q in (queries[0], queries[-1])
            ],
            ffn_multipliers=[f / d for f in ffn],
            ffn_dim_divisor=divisor,
            rope_max_length=max(4096, shared["max_context_length"]),
            **shared,
        )
    except ValueError as err:  # ConfigError names the field
        raise CheckpointError(f"{source}: {first_line(err)}") from None
    if config.ffn_dims() != ffn:
        raise CheckpointError(f"{source}: FFN widths {ffn} cannot be expressed in config.json")
    return config


def _preset_of(shape: tuple, shared: dict[str, Any]) -> Any:
    """The preset whose per-layer shapes are ``shape``, with the file's ``shared`` fields."""
    from elmforge.model.config import PRESETS, OpenELMConfig

    for name in PRESETS:
        preset = OpenELMConfig.from_name(name, **shared)
        preset_shape = (
            preset.num_transformer_layers,
            preset.model_dim,
            preset.head_dim,
            preset.num_query_heads,
            preset.num_kv_heads,
            preset.ffn_dims(),
        )
        if preset_shape == shape:
            return preset
    return None


def state_from_gguf(reader: Any, config: Any, source: str) -> dict[str, Any]:
    """Apple-named float32 tensors of the GGUF (dequantised), checked against ``config``."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    tensors = {t.name: t for t in reader.tensors}
    plan = tensor_plan(config)
    if "output.weight" in tensors:
        raise CheckpointError(
            f"{source}: has an output.weight (an untied head), which llama.cpp's openelm never "
            f"reads; not an OpenELM file elmforge can represent"
        )
    unexpected = sorted(set(tensors) - {t.name for t in plan})
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {', '.join(unexpected[:3])}")
    parts: dict[str, list[Any]] = {}
    for planned in plan:
        tensor = tensors.get(planned.name)
        if tensor is None:
            raise CheckpointError(f"{source}: no tensor {planned.name}")
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if shape != planned.shape:
            raise CheckpointError(
                f"{source}: {planned.name} has shape {shape}, the keys imply {planned.shape}"
            )
        values = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        parts.setdefault(planned.source, []).append(values)
    state = {}
    for name, pieces in parts.items():
        # One copy per tensor: out of the read-only memory map, or gate and up stacked into
        # proj_1 (dequantised f16/bf16/q8_0 arrays are fresh already).
        if len(pieces) > 1:
            values = np.concatenate(pieces, axis=0)
        elif not pieces[0].flags.writeable:
            values = pieces[0].copy()
        else:
            values = pieces[0]
        state[name] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return state


def gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    tokenizer: str | os.PathLike | None = None,
    dtype: str = "float32",
) -> Path:
    """Write the GGUF as a complete model directory (weights, config, tokenizer files, chat
    template when the file has one). ``tokenizer`` replaces the file's own vocabulary."""
    import torch
    from transformers.initialization import no_init_weights

    from elmforge.export.vocab import tokenizer_from_gguf
    from elmforge.files import atomic_directory, claim_output
    from elmforge.layout import SENTENCEPIECE_MODEL
    from elmforge.model.convert import load_model_state
    from elmforge.model.modeling import OpenELMForCausalLM
    from elmforge.modeldir.complete import complete_model_dir, is_instruct

    if dtype not in DTYPES:
        raise OptionError("dtype", f"{{option}} {dtype}: expected one of {', '.join(DTYPES)}")
    gguf_path = Path(gguf_path)
    with open_gguf(gguf_path) as reader:
        target = claim_output(out_dir, "convert", force, inputs=(gguf_path,))
        source = str(gguf_path)
        config = config_from_gguf(reader, source)
        state = state_from_gguf(reader, config, source)
        template = field_value(reader, "tokenizer.chat_template")
        if tokenizer is None:
            tokenizer = tokenizer_from_gguf(reader, source)
    torch_dtype = getattr(torch, dtype)
    with atomic_directory(target, verb="convert") as tmp:
        with no_init_weights():  # every tensor is overwritten below
            model = OpenELMForCausalLM(config).to(torch_dtype)
        load_model_state(model, {k: v.to(torch_dtype) for k, v in state.items()}, source)
        model.config.dtype = torch_dtype
        model.save_pretrained(tmp)
        if isinstance(tokenizer, bytes):  # the file's SentencePiece model
            (tmp / SENTENCEPIECE_MODEL).write_bytes(tokenizer)
            tokenizer = tmp / SENTENCEPIECE_MODEL
        complete_model_dir(
            tmp,
            tokenizer,
            chat_template=template if isinstance(template, str) else None,
            require_tokenizer=True,
            instruct=is_instruct(target),
        )
    return target
