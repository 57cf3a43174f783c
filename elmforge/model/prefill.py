"""Prompt products on the CPU (many rows at once): which GEMM, chosen by machine (issue 19).

- **float32**: oneDNN (``mkldnn::_linear_pointwise`` on the plain weight: no second, packed copy)
  rather than ``F.linear``'s BLAS (MKL in PyTorch's x86 wheels). MKL picks its kernels by CPU
  vendor and takes slower generic paths on AMD CPUs (issue 19: fp32 prefill at 0.57x llama.cpp
  on a Zen 5 while at 1.0x on a Xeon), whereas oneDNN JIT-compiles for the ISA it finds (AVX-512,
  AVX2) whatever the vendor. Measured at OpenELM-270M's shapes, 128 rows, on the Xeon of
  docs/inference.md: oneDNN 1.2x MKL with one thread, 1.5x with two. It is used on x86 where
  PyTorch has oneDNN and a first product agrees with ``F.linear`` (else MKL, as before);
  ``$ELMFORGE_PREFILL_GEMM=mkl`` forces MKL for comparisons.
- **int8 weights**: dequantised by elmforge's kernel in one threaded pass straight into the
  compute dtype: bfloat16 on CPUs with AMX-BF16 (a bf16 product runs several times faster than
  float32 there; the activations' bf16 rounding costs about +0.1% perplexity, as bf16 models),
  float32 elsewhere; then one GEMM. The old path made a float32 copy with three torch passes
  (``codes.float() * scale``) and multiplied in float32: measured on OpenELM-270M's largest FFN
  matrix (10240 x 1280, 128 rows, Xeon, loaded machine, interleaved): 271 ms before, 40 ms now.
  Dequantising in blocks of rows (to keep the float weight in L2) was measured too and was
  slower (0.26-0.46 s): oneDNN's bf16 product re-packs its weight for AMX on every call, so
  fewer, larger calls win.
- **int4 weights**: the same, through elmforge's int4 dequantising kernel (it was a float32 copy
  made by five torch passes, multiplied in float32).
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F

from elmforge.environment import cpu_flags

ENV_GEMM = "ELMFORGE_PREFILL_GEMM"


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")


@functools.cache
def float32_backend() -> str:
    """``onednn`` or ``mkl`` for float32 prompt products on this machine (see the module)."""
    if os.environ.get(ENV_GEMM, "").lower() == "mkl":
        return "mkl"
    if platform.machine() not in ("x86_64", "AMD64") or not torch.backends.mkldnn.is_available():
        return "mkl"
    try:  # an internal op: check it runs and agrees before trusting it
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(16, 64, generator=generator)
        weight = torch.randn(48, 64, generator=generator)
        with torch.no_grad():
            if torch.allclose(_onednn_linear(x, weight), F.linear(x, weight), atol=1e-4):
                return "onednn"
    except (RuntimeError, AttributeError):
        pass
    return "mkl"


def prompt_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) for a float32 CPU prompt without gradients."""
    if float32_backend() == "onednn" and x.dtype == torch.float32 == weight.dtype:
        flat = _onednn_linear(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous())
        return flat.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def quantized_compute_dtype() -> torch.dtype:
    """The dtype int8/int4 prompt products compute in on this CPU."""
    return torch.bfloat16 if "amx_bf16" in cpu_flags() else torch.float32


def int8_prompt_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, qweight * scale[:, None])`` for a CPU prompt: the weight dequantised in one
    threaded pass (elmforge's kernel) straight into the compute dtype, then one GEMM. The result
    has ``x``'s dtype."""
    dtype = quantized_compute_dtype()
    weight = torch.ops.elmforge.dequantize_int8_rows(qweight, scale, 0, qweight.shape[0], dtype)
    return _product(x, weight)


def int4_prompt_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``F.linear(x, quant.dequantize_int4(...))`` for a CPU prompt, as :func:`int8_prompt_linear`
    does it for int8 (one threaded pass into the compute dtype, then one GEMM)."""
    dtype = quantized_compute_dtype()
    weight = torch.ops.elmforge.dequantize_int4_rows(qweight, scale, group_size, dtype)
    return _product(x, weight)


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if weight.dtype == torch.float32:
        return prompt_linear(x.float(), weight).to(x.dtype)
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)
