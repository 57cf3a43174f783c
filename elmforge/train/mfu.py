"""Model FLOPs utilisation: FLOPs per token, and the peak a device is measured against.

MFU = tokens/s x FLOPs per token / (peak FLOP/s x devices). The peak of a GPU comes from its
datasheet (dense bf16); a CPU's is estimated from the widest vector unit ``/proc/cpuinfo`` lists
at an assumed clock, so CPU MFU is indicative only. ``log.peak_flops`` overrides both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from elmforge.environment import cpu_flags

if TYPE_CHECKING:
    import torch

    from elmforge.train.config import RunConfig

# Peak dense bf16 FLOP/s of common accelerators, for the MFU estimate (vendor datasheets).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                  "L4": 121e12, "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12}  # fmt: skip
# CPU peak FLOP per cycle per core, by the widest unit /proc/cpuinfo lists (two FMA ports, each
# lane a multiply and an add): AVX2 8 fp32 lanes, AVX-512 16; bf16 dot products double the lanes
# (AVX512_BF16), and an AMX tile unit does 1024 bf16 FLOP per cycle. The clock is assumed.
CPU_CLOCK_HZ = 2.5e9
CPU_FP32_FLOP_PER_CYCLE = (("avx512f", 64), ("avx2", 32))
CPU_BF16_FLOP_PER_CYCLE = (("amx_bf16", 1024), ("avx512_bf16", 128))


def flops_per_token(model_config: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of N parameters plus PaLM's attention term.

    N counts the tied embedding once (it is the output layer's matmul); attention adds
    12 x seq_len x (query width) per layer for QK^T and AV in forward and backward (PaLM, App. B).
    """
    attention = sum(
        12 * seq_len * heads * model_config.head_dim for heads in model_config.num_query_heads
    )
    return 6 * model_config.num_parameters_total() + attention


def cpu_peak_flops(precision: str, threads: int) -> tuple[float, str]:
    """An indicative CPU peak for ``precision`` (fp32 or bf16) over ``threads`` cores."""
    flags = cpu_flags()
    table = CPU_FP32_FLOP_PER_CYCLE
    if precision == "bf16":
        table = CPU_BF16_FLOP_PER_CYCLE + CPU_FP32_FLOP_PER_CYCLE
    unit, per_cycle = next(((f, n) for f, n in table if f in flags), ("scalar", 16))
    return (
        per_cycle * CPU_CLOCK_HZ * threads,
        f"CPU {precision}: {unit} {per_cycle} FLOP/cycle x {CPU_CLOCK_HZ / 1e9:g} GHz (assumed) "
        f"x {threads} threads",
    )


def peak_flops_per_device(
    config: RunConfig, device: torch.device, precision: str = "fp32"
) -> tuple[float, str]:
    """(peak FLOP/s, how it was obtained) for one device at ``precision``."""
    import torch

    if config.log.peak_flops:
        return config.log.peak_flops, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"{key} bf16 dense datasheet"
        return 312e12, f"unknown GPU {name!r}: assumed A100 bf16"
    return cpu_peak_flops(precision, torch.get_num_threads())
