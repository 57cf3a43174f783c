"""elmforge's CPU decode kernels (``csrc/decode_linear.cpp``): built at first use, optional.

Decoding reads every weight once per token, so a decode step costs the weights' bytes over the
memory bandwidth. ``bench/gemv.py`` measures PyTorch's own products against these loops on the
OpenELM-270M matrices (out of cache); the table in ``docs/inference.md`` is why they exist:
PyTorch reads float32 at the roof for one row but not for 2-8 rows (batched decoding), reads
bfloat16 and int8 weights (``torch._weight_int8pack_mm``) well below it, and has no int4 product
for float activations.

The extension is compiled with ``torch.utils.cpp_extension`` the first time a CPU decode step
needs it (about a minute, once per machine: torch caches the build under
``~/.cache/torch_extensions`` by a name that includes a hash of the source, the CPU's flags and
torch's version). Without a compiler, on a CPU without AVX-512, or with ``ELMFORGE_KERNELS=0``,
nothing is built and every caller keeps the plain PyTorch path, which is also the tests' oracle.

The ops are ``torch.ops.elmforge.linear_decode / linear_int8 / linear_int4`` (registered with
fake implementations, so ``torch.compile`` traces through them without a graph break).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sysconfig
import threading
import time
from pathlib import Path

import torch

from elmforge.environment import cpuinfo_field

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "decode_linear.cpp"
SOURCES = (SOURCE, SOURCE.with_name("decode_fused.cpp"), SOURCE.with_name("stream_probe.cpp"))
"""The extension's files: the decode products and norms, the fused attention prologue, and the
roofline's streaming probes."""
MAX_ROWS = 8
"""The kernels take 1 to 8 rows: one new token for each of up to 8 sequences."""
ENV_SWITCH = "ELMFORGE_KERNELS"
DECODE_DTYPES = frozenset({torch.float32, torch.bfloat16})
"""Float weight dtypes ``OpenELMLinear`` sends to the kernel for decode steps."""

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ready": False, "reason": "not built yet"}


def extension_name() -> str:
    """A name that changes with the source, the CPU and torch, so no stale build is reused."""
    digest = hashlib.sha256()
    for source in (*SOURCES, SOURCE.with_name("rms_row.h")):
        digest.update(source.read_bytes())
    digest.update((cpuinfo_field("flags") or platform.processor()).encode())
    digest.update(torch.__version__.encode())
    return f"elmforge_decode_{digest.hexdigest()[:12]}"


def _build() -> tuple[bool, str]:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False, f"switched off ({ENV_SWITCH}=0)"
    if platform.machine() not in ("x86_64", "AMD64"):
        return False, f"no kernels for {platform.machine()}"
    _put_ninja_on_path()
    try:
        from torch.utils.cpp_extension import load

        name = extension_name()
        if not _load_built(name):
            log.info("building elmforge's CPU decode kernels (once per machine, about a minute)")
            load(
                name=name,
                sources=[str(source) for source in SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
    except Exception as err:  # no compiler, no ninja, a failed build: keep PyTorch's kernels
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return False, f"build failed ({first})"
    _register_fakes()
    width = torch.ops.elmforge.simd_width()
    if width < 16:
        return False, "compiled without AVX-512 (PyTorch's kernels are faster there)"
    return True, "AVX-512"


# torch's build lock (a file its FileBaton creates and deletes) stays behind when its holder is
# killed (a SIGKILLed training run that was checking the build), and every later process then
# waits on it forever. A build takes about a minute; a lock far older than that has no holder.
STALE_LOCK_S = 15 * 60


def _load_built(name: str) -> bool:
    """Load the library an earlier process built, without torch's build lock (none is needed to
    read a finished build); remove a stale lock so a build that is still needed can proceed."""
    from torch.utils.cpp_extension import get_default_build_root

    build = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
    lock = build / "lock"
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            log.info("removed a stale build lock %s (its holder is gone)", lock)
    library = build / f"{name}.so"
    if not library.is_file():
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):  # a half-written library: build it again under the lock
        return False
    return True


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` dependency installs it next to this Python,
    which is not on PATH when ``.venv/bin/elmforge`` runs without an activated environment."""
    if shutil.which("ninja"):
        return
    scripts = sysconfig.get_path("scripts")
    if scripts and (Path(scripts) / "ninja").exists():
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def _register_fakes() -> None:
    """Shapes for ``torch.compile``'s tracing (the ops are opaque calls in the compiled graph)."""

    @torch.library.register_fake("elmforge::linear_decode")
    def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("elmforge::linear_int8")
    def _(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], qweight.shape[0]))

    @torch.library.register_fake("elmforge::rms_norm")
    def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("elmforge::linear_int4")
    def _(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int):
        return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def load_kernels() -> bool:
    """Build (first time) and load the kernels; True when they are usable. Never raises."""
    if _state["tried"]:
        return bool(_state["ready"])
    with _lock:
        if not _state["tried"]:
            ready, reason = _build()
            _state.update(tried=True, ready=ready, reason=reason)
            if not ready:
                log.info("elmforge CPU decode kernels not used: %s", reason)
    return bool(_state["ready"])


def kernels_ready() -> bool:
    """True if the kernels are loaded. Never builds (cheap; safe inside compiled code)."""
    return bool(_state["ready"])


def status() -> str:
    """Why the kernels are or are not used, for reports."""
    return "in use (AVX-512)" if _state["ready"] else str(_state["reason"])


def usable_for(x: torch.Tensor, in_features: int) -> bool:
    """Whether a product with input ``x`` can go to the kernels: a CPU decode step (1 to 8 rows,
    no gradient), in_features a multiple of 32. Builds the kernels the first time it says yes."""
    if x.device.type != "cpu" or in_features % 32 or torch.is_grad_enabled():
        return False
    rows = x.numel() // max(1, x.shape[-1])
    if not 1 <= rows <= MAX_ROWS:
        return False
    if torch.compiler.is_compiling():  # no build inside tracing: load before compiling
        return kernels_ready()
    return load_kernels()


NORM_MAX_ELEMENTS = 1 << 16
"""RMSNorm inputs up to this size (a decode step's) go to the fused kernel; larger ones (prompts)
keep PyTorch's, which is threaded."""


def norm_usable_for(x: torch.Tensor) -> bool:
    """Whether an RMSNorm of ``x`` should use the fused kernel: a CPU decode-sized tensor, no
    gradient, not inside ``torch.compile`` (inductor fuses it there). Builds the kernels the first
    time it says yes."""
    if (
        x.device.type != "cpu"
        or x.numel() > NORM_MAX_ELEMENTS
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
    ):
        return False
    return load_kernels()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.rms_norm(x, weight.shape, weight, eps)`` computed in float32, in one op."""
    return torch.ops.elmforge.rms_norm(x, weight, eps)


def qkv_rope_usable_for(x: torch.Tensor) -> bool:
    """Whether the attention prologue of a decode step can be the fused kernel: CPU, at most
    ``MAX_ROWS`` rows, no gradient, not inside ``torch.compile`` (inductor fuses it there)."""
    if (
        x.device.type != "cpu"
        or x.shape[0] * x.shape[1] > MAX_ROWS
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
    ):
        return False
    return load_kernels()


def qkv_rope(
    qkv: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    num_q_heads: int,
    num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the qkv product (B, S, H + 2K, D) to queries (B, H, S, D), keys and values
    (B, K, S, D): per-head RMSNorm of queries and keys, RoPE, the transposes, in one op with
    the eager path's arithmetic (bit-identical)."""
    return torch.ops.elmforge.qkv_rope(
        qkv, q_weight, k_weight, cos, sin, eps, num_q_heads, num_kv_heads
    )


def stream_read(buffer: torch.Tensor) -> float:
    """The sum of a contiguous float32 CPU buffer, read by every ATen thread in one slice each
    (the roofline probe's read loop)."""
    return torch.ops.elmforge.stream_read(buffer)


def stream_triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: float) -> None:
    """``a = b + s * c`` in place with cache-bypassing stores (STREAM's triad)."""
    torch.ops.elmforge.stream_triad(a, b, c, s)


def linear_decode(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) for a decode step with float32 or bfloat16 weights;
    ``x`` is (..., in_features) with 1 to 8 rows in all."""
    return torch.ops.elmforge.linear_decode(x, weight)


def linear_int8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, qweight * scale[:, None])`` without materialising the float weight."""
    return torch.ops.elmforge.linear_int8(x, qweight, scale)


def linear_int4(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The int4 product (layout in ``elmforge.model.quant``) without a float weight."""
    return torch.ops.elmforge.linear_int4(x, qweight, scale, group_size)
