"""Weight-only int8 and int4 inference (``--dtype int8`` / ``--dtype int4``), quantised at load.

Any float checkpoint works: :func:`quantize_model` replaces every linear layer (the output head
included) by a :class:`QuantizedLinear` that keeps integer weights and float32 scales; activations,
norms and the token embedding stay float32, so the only error is the weights' rounding.

- int8: symmetric, one scale per output channel (``scale = max|w| / 127``); 1 byte per weight.
- int4: symmetric groups of 32 input columns like llama.cpp's q4_0 (the group's largest-magnitude
  weight maps to -8, ``scale = that weight / -8``, codes 0..15 stand for ``(q - 8) * scale``);
  two codes per byte (block layout in ``csrc/decode_linear.cpp``), 0.625 bytes per weight.

A decode step (1 to 8 rows on the CPU) runs the integer weights through elmforge's kernels
(``elmforge.model.cpu_kernels``) without ever making a float copy; anything else (prompt
processing, GPUs, no kernels) multiplies with the dequantised weight, which is also the oracle
the tests compare the kernels with. Quality against float32 (perplexity, zero-shot accuracy) is
in ``docs/inference.md``.

torchao was measured and not used: on this CPU its int8 weight-only path decodes slower than
float32 and breaks ``generate`` through ``OpenELMLinear``'s fast path (issue 13).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmforge.errors import ElmforgeError
from elmforge.model import cpu_kernels, prefill
from elmforge.runtime import QUANTIZED_DTYPES

INT4_GROUP_SIZE = 32
INT4_BLOCK = 32  # columns per 16-byte block: byte j holds column j (low nibble) and j + 16


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (N, K), float32 scales (N,)) with ``weight ~= codes * scales[:, None]``."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(weight / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes.contiguous(), scale.contiguous()


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale[:, None]


def quantize_int4(
    weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (N, K/2), float32 scales (N, K/group_size)), q4_0's rounding rule."""
    rows, cols = weight.shape
    if group_size % INT4_BLOCK or cols % group_size:
        raise ElmforgeError(
            f"int4 needs in_features divisible by the group size {group_size} (got {cols})"
        )
    groups = weight.detach().float().reshape(rows, cols // group_size, group_size)
    # The weight of largest magnitude, with its sign, maps to code 0 (= -8 * scale).
    index = groups.abs().argmax(dim=-1, keepdim=True)
    scale = torch.gather(groups, -1, index).squeeze(-1) / -8.0
    safe = torch.where(scale != 0, scale, torch.ones_like(scale))
    codes = (torch.round(groups / safe[..., None]) + 8).clamp_(0, 15).to(torch.uint8)
    blocks = codes.reshape(rows, cols // INT4_BLOCK, 2, INT4_BLOCK // 2)
    packed = blocks[:, :, 0] | (blocks[:, :, 1] << 4)  # (N, K/32, 16)
    return packed.reshape(rows, cols // 2).contiguous(), scale.contiguous()


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, half = packed.shape
    blocks = packed.reshape(rows, (2 * half) // INT4_BLOCK, 1, INT4_BLOCK // 2)
    codes = torch.cat([blocks & 0x0F, blocks >> 4], dim=2).reshape(rows, 2 * half)
    values = codes.float().sub_(8).reshape(rows, -1, group_size) * scale[..., None]
    return values.reshape(rows, 2 * half)


class QuantizedLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights and float32 scales."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        group_size: int = INT4_GROUP_SIZE,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int) -> QuantizedLinear:
        if linear.bias is not None:
            raise ElmforgeError("weight-only quantisation here is for bias-free linear layers")
        quantize = quantize_int8 if bits == 8 else quantize_int4
        qweight, scale = quantize(linear.weight)
        return cls(linear.in_features, linear.out_features, bits, qweight, scale)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these codes stand for."""
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scale)
        return dequantize_int4(self.qweight, self.scale, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_kernels.usable_for(x, self.in_features):
            if self.bits == 8:
                return cpu_kernels.linear_int8(x, self.qweight, self.scale)
            return cpu_kernels.linear_int4(x, self.qweight, self.scale, self.group_size)
        if (
            x.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and cpu_kernels.kernels_ready()
        ):
            if self.bits == 8:  # a prompt
                return prefill.int8_prompt_linear(x, self.qweight, self.scale)
            return prefill.int4_prompt_linear(x, self.qweight, self.scale, self.group_size)
        return F.linear(x, self.dequantize().to(x.dtype))

    def weight_bytes(self) -> int:
        return self.qweight.numel() * self.qweight.element_size() + self.scale.numel() * 4

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}"


def quantize_model(model: nn.Module, dtype: str) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` of a float model by its int8 / int4 version, in
    place; returns the model (float32 elsewhere). The tied output head gets its own integer copy
    (the embedding stays float32 for the lookups)."""
    if dtype not in QUANTIZED_DTYPES:
        raise ElmforgeError(f"--dtype {dtype}: quantised dtypes are {', '.join(QUANTIZED_DTYPES)}")
    bits = 8 if dtype == "int8" else 4
    model.float()
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.bias is None
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if bits == 4 and module.in_features % INT4_GROUP_SIZE:
            continue  # stays float32; the group size does not divide its columns
        setattr(parent, child, QuantizedLinear.from_linear(module, bits))
    model.quantization = dtype
    return model


def weight_bytes_read_per_step(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every linear layer in full (integer codes and
    scales for quantised ones), one embedding row, the norms; the embedding table is read in
    full only when it is also the output head."""
    modules = list(model.modules())
    linear_weights = {id(m.weight) for m in modules if isinstance(m, nn.Linear)}
    total = 0
    for module in modules:
        if isinstance(module, QuantizedLinear):
            total += module.weight_bytes()
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, nn.Embedding) and id(module.weight) not in linear_weights:
            total += module.weight.shape[1] * module.weight.element_size()
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            total += param.numel() * param.element_size()
    return total
