"""The memory roofline ``elmforge bench`` measures in the same run as the engines.

A decode step reads every weight once, so its ceiling is the memory's bandwidth with the run's
threads. One loop cannot be trusted to find that ceiling on every CPU: the first probe here
(threaded float32 matrix-vector products through PyTorch, i.e. MKL) read 26 GB/s on the Intel
machine but only 20 GB/s on an AMD Zen 5 whose engines read weights at 34-46 GB/s (issue 19):
MKL's GEMV is not at the memory limit on every vendor. So the probe runs several streaming loops
over a buffer far larger than the caches and the roof is the best of them:

- ``read``: STREAM-style sum of the buffer (elmforge's kernel: one contiguous slice per thread,
  four accumulators; without the kernels, ``torch.sum``), bytes read over time;
- ``triad``: ``a = b + s * c`` (STREAM's triad, cache-bypassing stores), 3 bytes per element
  counted as STREAM counts them;
- ``copy``: ``torch`` copy of half the buffer into another (2 bytes counted per byte copied);
- ``gemv``: threaded float32 products through ``F.linear`` (the former probe);
- ``gemv_kernel``: the same products through elmforge's decode kernel (what the engines run).

Beside the roof the probe reports the single-thread read, which tells how far one core is from
the machine's bandwidth. An engine above 1.0 of this roof means the probe missed the machine's
real ceiling (or the weights fit in a cache): the report flags it instead of printing the
fraction.
"""

from __future__ import annotations

import time
from typing import Any

METHODS = ("read", "triad", "copy", "gemv", "gemv_kernel")
MATRIX_ROWS, MATRIX_COLS = 4096, 1024  # the gemv methods' matrices (16 MiB each)


class StreamBuffers:
    """The probe's buffers: ``mib`` MiB of float32 (read, gemv), and half that again for the
    copy/triad destination (its sources are the two halves of the first buffer)."""

    def __init__(self, mib: int, device: str = "cpu") -> None:
        import torch

        elements = (mib * 2**20 // 4) // (MATRIX_ROWS * MATRIX_COLS) * (MATRIX_ROWS * MATRIX_COLS)
        elements = max(elements, MATRIX_ROWS * MATRIX_COLS)
        # Filled (not torch.empty): every page is touched before timing, nothing is a zero page.
        self.buffer = torch.empty(elements, device=device).fill_(0.5)
        half = elements // 2
        self.source, self.other = self.buffer[:half], self.buffer[half : 2 * half]
        self.target = torch.empty(half, device=device).fill_(0.0)
        self.matrices = self.buffer.view(-1, MATRIX_ROWS, MATRIX_COLS)
        self.x = torch.full((1, MATRIX_COLS), 0.25, device=device)
        self.device = device

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * 4


def _timed(fn: Any, repeats: int, sync: Any) -> float:
    best = float("inf")
    for _ in range(repeats):  # the first pass also wakes the threads; the best is the figure
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(
    buffers: StreamBuffers, threads: int, repeats: int = 2, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    """GB/s of each method with ``threads`` threads, the roof (their best) and the single-thread
    read. Methods that cannot run here (no kernels, a GPU) are left out."""
    import torch
    import torch.nn.functional as F

    from elmforge.model import cpu_kernels

    cpu = buffers.device == "cpu"
    kernels = cpu and cpu_kernels.load_kernels()
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    read_bytes, half_bytes = buffers.nbytes, buffers.source.numel() * 4

    def read() -> None:
        if kernels:
            cpu_kernels.stream_read(buffers.buffer)
        else:
            buffers.buffer.sum().item()

    def triad() -> None:
        if kernels:
            cpu_kernels.stream_triad(buffers.target, buffers.source, buffers.other, 3.0)
        else:
            torch.add(buffers.source, buffers.other, alpha=3.0, out=buffers.target)

    def gemv(kernel: bool) -> None:
        product = cpu_kernels.linear_decode if kernel else F.linear
        for weight in buffers.matrices:
            product(buffers.x, weight)

    plan = {
        "read": (read, read_bytes),
        "triad": (triad, 3 * half_bytes),
        "copy": (lambda: buffers.target.copy_(buffers.source), 2 * half_bytes),
        "gemv": (lambda: gemv(False), read_bytes),
        "gemv_kernel": (lambda: gemv(True), read_bytes),
    }
    if not kernels:
        plan.pop("gemv_kernel")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        figures = {
            name: nbytes / _timed(fn, repeats, sync) / 1e9
            for name, (fn, nbytes) in plan.items()
            if name in methods
        }
        single = None
        if cpu and "read" in methods:
            torch.set_num_threads(1)
            single = read_bytes / _timed(read, 1, sync) / 1e9
    finally:
        torch.set_num_threads(previous)
    best = max(figures, key=figures.get)
    return {
        "roof_gb_s": figures[best],
        "best_method": best,
        "methods_gb_s": figures,
        "single_thread_read_gb_s": single,
    }


class RooflineProbe:
    """The bench's probe worker (``EngineSpec.weights`` holds the buffer's MiB)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def load(self) -> dict[str, Any]:
        self.buffers = StreamBuffers(int(self.spec.weights), self.spec.device)
        return {"weight_bytes_per_step": self.buffers.nbytes, "warmup_s": None, "format": "fp32"}

    def run(self, tokens: list[list[int]]) -> dict[str, Any]:
        return measure_bandwidth(self.buffers, self.spec.threads)
