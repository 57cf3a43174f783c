"""Device and dtype names, decided in one place for every verb (inference and training).

``auto`` device is a CUDA GPU where there is one, else the CPU; ``auto`` inference dtype is
float32 on the CPU (its bf16 matmuls are slow) and bfloat16 on an accelerator; ``auto`` training
precision is bf16 autocast where the GPU supports it, else fp32. The names are plain strings so
the CLI can list them before it imports torch; torch is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from elmforge.errors import OptionError

if TYPE_CHECKING:
    import torch

# Spelling -> torch dtype name: the short spellings of run configs and transformers' long ones.
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
# Weight-only quantised inference (elmforge.model.quant): loaded in float32, quantised at load.
QUANTIZED_DTYPES = ("int8", "int4")
DTYPE_CHOICES = ("auto", *DTYPES, *QUANTIZED_DTYPES)


def pick_device(device: str = "auto", option: str = "device") -> str:
    """``auto`` is CUDA where there is a GPU, else the CPU; asking for a device this machine
    does not have (a missing GPU, ``cuda:3`` on a one-GPU machine, ``tpu9``) is an
    :class:`OptionError` naming ``option``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    expected = "expected auto, cpu, cuda, cuda:N or mps"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(option, f"{{option}} {device}: not a device ({expected})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(option, f"{{option}} {device}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise OptionError(
                option,
                f"{{option}} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError(option, f"{{option}} {device}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise OptionError(option, f"{{option}} {device}: unsupported ({expected})")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto`` is float32 on the CPU and bfloat16 on an accelerator; ``int8``/``int4`` compute
    in float32 (only the linear weights are integers)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if dtype in QUANTIZED_DTYPES:
        return torch.float32
    if dtype not in DTYPES:
        raise OptionError(
            "dtype", f"{{option}} {dtype}: expected one of {', '.join(DTYPE_CHOICES)}"
        )
    return getattr(torch, DTYPES[dtype])


def training_precision(precision: str, device: torch.device) -> str:
    """``auto`` training precision: bf16 autocast on a GPU that supports it, else fp32."""
    import torch

    if precision != "auto":
        return precision
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "bf16" if bf16_ok else "fp32"
