"""Load an OpenELM directory straight into int8/int4 weights, one tensor at a time (issue 19).

Quantising a loaded float model (:func:`elmforge.model.quant.quantize_model`) holds the whole
float32 model first: 2.1-2.2 GB resident at the peak for OpenELM-270M, whose int8 weights are
0.27 GB. Here the model is built on the ``meta`` device (no memory), every linear layer becomes
an empty :class:`QuantizedLinear`, and each safetensors tensor is read with plain file reads
(no memory map, whose touched pages would count as resident until the file is closed), turned
into float32, quantised if it is a linear weight, and dropped: the peak is about the quantised
model plus one float32 matrix. The codes are the same bytes ``quantize_model`` gives (the same
functions on the same float32 values; tested).

The checks are :func:`elmforge.model.convert.load_pretrained`'s: a corrupt or truncated file,
a missing tensor (never initialised at random), NaN or absurd values, all one-line
``CheckpointError``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from elmforge.errors import CheckpointError
from elmforge.model.convert import check_safetensors
from elmforge.model.integrity import check_finite, check_tensor_names, read_openelm_config
from elmforge.model.modeling import OpenELMForCausalLM, OpenELMRotaryEmbedding
from elmforge.model.quant import (
    INT4_GROUP_SIZE,
    QuantizedLinear,
    quantize_int4,
    quantize_int8,
)

SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def read_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of ``file``, read one at a time with ``readinto`` into a
    fresh tensor (nothing of the file stays mapped or cached by this process)."""
    with open(file, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
        base = 8 + header_len
        entries = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for name, entry in entries:
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise CheckpointError(f"{file}: {name} has an unsupported dtype {entry['dtype']}")
            start, end = entry["data_offsets"]
            tensor = torch.empty(entry["shape"], dtype=dtype)
            view = memoryview(tensor.view(torch.uint8).numpy()).cast("B") if end > start else b""
            handle.seek(base + start)
            if end > start and handle.readinto(view) != end - start:
                raise CheckpointError(f"{file}: truncated inside {name}")
            yield name, tensor


def load_quantized_pretrained(
    model_dir: str | os.PathLike, quantization: str, device: str = "cpu"
) -> OpenELMForCausalLM:
    """An OpenELM directory loaded with int8 (``quantization="int8"``) or int4 linear layers,
    norms and the embedding in float32, in eval mode on ``device``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    config = read_openelm_config(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no model weights (*.safetensors)")
    check_safetensors(model_dir)
    bits = 8 if quantization == "int8" else 4
    with torch.device("meta"):
        model = OpenELMForCausalLM(config)
    expected = set(model.state_dict())  # persistent tensors; the tied head shares the embedding
    tied = model.lm_head.weight is model.transformer.token_embeddings.weight
    if tied:
        expected.discard("lm_head.weight")
    quantized = _empty_quantized_layers(model, bits)
    found: set[str] = set()
    for file in files:
        for name, tensor in read_safetensors(file):
            if name not in expected:
                continue  # transformers ignores unexpected tensors too
            check_finite({name: tensor}, str(file))
            found.add(name)
            _place(model, quantized, name, tensor, bits)
            if tied and name == "transformer.token_embeddings.weight" and "lm_head" in quantized:
                _place(model, quantized, "lm_head.weight", tensor, bits)
    check_tensor_names(expected, found, str(model_dir))
    for module in model.modules():  # non-persistent tables are not in the file
        if isinstance(module, OpenELMRotaryEmbedding):
            module.cos, module.sin = module.compute_tables(module.cos.shape[0])
    model.quantization = quantization
    return model.to(device).eval()


def _empty_quantized_layers(model: nn.Module, bits: int) -> dict[str, QuantizedLinear]:
    """Replace every bias-free linear layer by a QuantizedLinear to be filled (as
    ``quantize_model`` chooses them); keyed by the layer's name."""
    layers = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module.bias is not None:
            continue
        if bits == 4 and module.in_features % INT4_GROUP_SIZE:
            continue  # stays float32, as in quantize_model
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        empty = torch.empty(0)
        layer = QuantizedLinear(module.in_features, module.out_features, bits, empty, empty)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


ROW_BLOCK = 1024
"""Rows quantised at a time: the quantisers' float temporaries stay a few MB instead of several
copies of the largest matrix (the 32000 x 1280 output head: 164 MB each)."""


def _quantize_in_row_blocks(value: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_int8/int4(value)``, a block of rows at a time (every scale is per row or per
    group within a row, so the result is the same)."""
    quantize = quantize_int8 if bits == 8 else quantize_int4
    codes, scales = [], []
    for block in value.split(ROW_BLOCK):
        code, scale = quantize(block)
        codes.append(code)
        scales.append(scale)
    if len(codes) == 1:
        return codes[0], scales[0]
    return torch.cat(codes), torch.cat(scales)


def _place(
    model: nn.Module, quantized: dict[str, QuantizedLinear], name: str, tensor: torch.Tensor,
    bits: int,
) -> None:  # fmt: skip
    module_name, _, attr = name.rpartition(".")
    value = tensor.float()
    layer = quantized.get(module_name)
    if layer is not None and attr == "weight":
        expected = (layer.out_features, layer.in_features)
        if tuple(value.shape) != expected:
            raise CheckpointError(f"{name}: shape {tuple(value.shape)}, expected {expected}")
        layer.qweight, layer.scale = _quantize_in_row_blocks(value, bits)
        return
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if tuple(current.shape) != tuple(value.shape):
        raise CheckpointError(
            f"{name}: shape {tuple(value.shape)}, expected {tuple(current.shape)}"
        )
    if isinstance(current, nn.Parameter):
        setattr(module, attr, nn.Parameter(value))
    else:
        setattr(module, attr, value)
