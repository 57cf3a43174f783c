"""What a report says about where it was made: package versions and the machine, in one place.

Evaluation results, benchmark reports and the CPU kernels' build name all describe the same
environment; a figure is only meaningful beside the CPU that produced it (Intel with AMX and AMD
Zen differ by tens of percent on the same code).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

# The distributions whose versions decide numbers in our reports.
REPORTED_DISTRIBUTIONS = ("elmforge", "lm_eval", "transformers", "torch", "datasets", "tokenizers")


def versions(distributions: tuple[str, ...] = REPORTED_DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions of ``distributions`` (those not installed are left out)."""
    found = {}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cpuinfo_field(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (``model name``, ``flags``), None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512f``, ``amx_bf16``...) as /proc/cpuinfo lists them (read
    once: prompt products ask on every call)."""
    return frozenset((cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name, as ``lscpu`` prints it."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine(threads: int | None = None) -> dict[str, Any]:
    """The machine a measurement ran on: CPU, core count, threads used, Python."""
    return {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
    }
