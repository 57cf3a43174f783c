"""The engines ``elmforge bench`` times, each alive in its own worker process.

One worker per (engine, dtype): its peak memory is its own, its thread settings cannot leak into
another engine, and a peer that crashes takes only its own column down. The parent
(:mod:`elmforge.bench.run`) sends the same prompt tokens to every worker in turn, so a change in
the machine's load hits all engines alike; each worker answers with its timings.

A run is one request: process a (batch, prompt) block of token ids, then decode greedily until
every sequence has ``generate`` new tokens (end-of-sequence ignored). Timed: the first token
(time to first token, which is the prompt's processing plus one token choice) and the last; the
generation rate counts the ``generate - 1`` tokens in between. Engines:

- ``elmforge``: ``model.generate()`` itself (what library users, lm-eval and the server call),
  ``eager`` (``decode_compile="off"``) or ``compiled`` (warmed up at load, then the compiled
  static-cache decode step); int8/int4 through the loader's ``--dtype``;
- ``naive``: the same weights in :mod:`elmforge.bench.naive_openelm` (Apple's hub algorithm);
- ``llama.cpp``: a GGUF file through llama-cpp-python's low-level API (``llama_decode`` on a
  batch with one sequence per row, ``n_threads`` set);
- ``mlx-lm``: the model directory through mlx-lm's own OpenELM and loader, cast or quantised by
  MLX (``nn.quantize``), decoded with its prompt cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmforge.errors import first_line


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to load and run one engine (picklable)."""

    engine: str
    dtype: str
    """The bench's dtype: fp32, bf16, fp16, int8, int4."""
    weights: str
    """The model directory (elmforge, naive, mlx-lm) or GGUF file (llama.cpp)."""
    device: str = "cpu"
    threads: int = 2
    batches: tuple[int, ...] = (1,)
    prompt: int = 128
    generate: int = 64
    path: str = ""
    """elmforge: ``eager`` or ``compiled``."""
    peer_format: str = ""
    """What the peer runs: ``f16``, ``q8_0``, ``8-bit, group 64``..."""
    variant: str = "openelm"
    """``openelm``, or ``uniform`` for the uniform-allocation twin."""

    @property
    def label(self) -> str:
        name = self.engine if self.variant == "openelm" else f"{self.variant} ({self.engine})"
        detail = self.path or self.peer_format
        return f"{name} {detail}".strip()


def peak_memory_bytes(device: str = "cpu") -> int:
    """The process's resident-memory high-water mark (or the GPU's peak allocation on CUDA)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _FirstAndLastToken:
    """A ``generate`` streamer that only notes when tokens arrive (the first ``put`` is the
    prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


class ElmforgeEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def load(self) -> dict[str, Any]:
        import torch

        from elmforge.model.decoding import cache_bucket, warm_up_decode
        from elmforge.model.quant import weight_bytes_read_per_step
        from elmforge.modeldir.loading import load_model

        spec = self.spec
        self.torch = torch
        self.model = load_model(spec.weights, device=spec.device, dtype=spec.dtype)
        self.model.generation_config.eos_token_id = None  # decode the full length every time
        warmup = None
        if spec.path == "compiled":
            self.model.decode_compile = "on"
            start = time.perf_counter()
            warm_up_decode(self.model, spec.batches, (cache_bucket(spec.prompt + spec.generate),))
            warmup = time.perf_counter() - start
        else:
            self.model.decode_compile = "off"
        return {
            "weight_bytes_per_step": weight_bytes_read_per_step(self.model),
            "warmup_s": warmup,
            "format": str(self.model.dtype).removeprefix("torch.")
            if spec.dtype not in ("int8", "int4")
            else f"{spec.dtype} weights, float32 activations",
        }

    def run(self, tokens: list[list[int]]) -> dict[str, float]:
        torch = self.torch
        ids = torch.tensor(tokens, device=self.spec.device)
        timer = _FirstAndLastToken()
        start = time.perf_counter()
        self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=self.spec.generate,
            do_sample=False,
            pad_token_id=0,
            streamer=timer,
        )
        return {"ttft_s": timer.times[0] - start, "decode_s": timer.times[-1] - timer.times[0]}

    def profile(self, tokens: list[list[int]]) -> dict[str, Any]:
        """The split of a prefill and a decode step (``elmforge.bench.profile``)."""
        from elmforge.bench.profile import peak_gflops, profile_generate, unprofiled_split

        torch = self.torch
        float_dtype = self.model.dtype  # float32 activations for int8/int4 weights
        itemsize = torch.empty(0, dtype=float_dtype).element_size()
        with torch.inference_mode():
            split = profile_generate(self.model, tokens, self.spec.generate, itemsize)
            split["unprofiled"] = unprofiled_split(self.model, tokens, self.spec.generate)
        split["peak_gflop_s"] = peak_gflops(float_dtype, self.spec.threads)
        split["peak_dtype"] = str(float_dtype).removeprefix("torch.")
        return split


class NaiveEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def load(self) -> dict[str, Any]:
        import torch

        from elmforge.bench.naive_openelm import NaiveOpenELM
        from elmforge.model.quant import weight_bytes_read_per_step
        from elmforge.modeldir.loading import load_model
        from elmforge.runtime import DTYPES

        if self.spec.dtype not in DTYPES:
            raise ValueError(f"the naive port runs float dtypes only, not {self.spec.dtype}")
        self.torch = torch
        source = load_model(self.spec.weights, device="cpu", dtype=torch.float32)
        with torch.device("meta"):  # no random initialisation: the weights are loaded next
            self.model = NaiveOpenELM(source.config).eval()
        self.model.load_state_dict(source.state_dict(), strict=False, assign=True)
        dtype = getattr(torch, DTYPES[self.spec.dtype])
        self.model.to(device=self.spec.device, dtype=dtype)
        nbytes = weight_bytes_read_per_step(source.to(dtype))  # the same tensors, same reads
        del source
        return {"weight_bytes_per_step": nbytes, "warmup_s": None, "format": self.spec.dtype}

    def run(self, tokens: list[list[int]]) -> dict[str, float]:
        torch = self.torch
        with torch.inference_mode():
            ids = torch.tensor(tokens, device=self.spec.device)
            cache = self.model.new_cache()
            start = time.perf_counter()
            token = self.model(ids, cache)[:, -1:].argmax(-1)
            token.cpu()
            first = time.perf_counter()
            for _ in range(self.spec.generate - 1):
                token = self.model(token, cache)[:, -1:].argmax(-1)
            token.cpu()
            return {"ttft_s": first - start, "decode_s": time.perf_counter() - first}


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python's C API: one context per batch size, every sequence of
    a batch in one ``llama_decode`` call per step, logits only for each sequence's last token."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.contexts: dict[int, Any] = {}

    def load(self) -> dict[str, Any]:
        import llama_cpp
        import numpy as np

        self.llama, self.np = llama_cpp, np
        self._log = llama_cpp.llama_log_callback(silent_log)  # kept alive: C holds the pointer
        llama_cpp.llama_log_set(self._log, None)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        plain_buffers = needs_plain_buffers(self.spec.peer_format)
        params.use_extra_bufts = not plain_buffers
        self.model = llama_cpp.llama_model_load_from_file(self.spec.weights.encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {self.spec.weights}")
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        return {
            "weight_bytes_per_step": gguf_weight_bytes(self.spec.weights),
            "warmup_s": None,
            "format": self.spec.peer_format + (", no repacking" if plain_buffers else ""),
        }

    def _context(self, batch: int) -> tuple[Any, Any]:
        if batch not in self.contexts:
            llama_cpp = self.llama
            params = llama_cpp.llama_context_default_params()
            per_sequence = self.spec.prompt + self.spec.generate
            params.n_ctx = batch * (per_sequence + 256)
            params.n_batch = params.n_ubatch = max(batch * self.spec.prompt, 512)
            params.n_seq_max = batch
            params.n_threads = params.n_threads_batch = self.spec.threads
            params.no_perf = True
            context = llama_cpp.llama_init_from_model(self.model, params)
            if not context:
                raise RuntimeError("llama.cpp cannot create a context")
            block = llama_cpp.llama_batch_init(batch * self.spec.prompt, 0, batch)
            self.contexts[batch] = (context, block)
        return self.contexts[batch]

    def _decode(self, context: Any, block: Any, rows: list[list[int]], start: int) -> list[int]:
        llama_cpp, np = self.llama, self.np
        n = 0
        last = []
        for seq, row in enumerate(rows):
            for offset, token in enumerate(row):
                block.token[n] = token
                block.pos[n] = start + offset
                block.n_seq_id[n] = 1
                block.seq_id[n][0] = seq
                block.logits[n] = offset == len(row) - 1
                n += 1
            last.append(n - 1)
        block.n_tokens = n
        if llama_cpp.llama_decode(context, block) != 0:
            raise RuntimeError("llama_decode failed")
        chosen = []
        for index in last:
            logits = llama_cpp.llama_get_logits_ith(context, index)
            chosen.append(int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax()))
        return chosen

    def run(self, tokens: list[list[int]]) -> dict[str, float]:
        context, block = self._context(len(tokens))
        self.llama.llama_memory_clear(self.llama.llama_get_memory(context), True)
        start = time.perf_counter()
        chosen = self._decode(context, block, tokens, 0)
        first = time.perf_counter()
        position = len(tokens[0])
        for _ in range(self.spec.generate - 1):
            chosen = self._decode(context, block, [[t] for t in chosen], position)
            position += 1
        return {"ttft_s": first - start, "decode_s": time.perf_counter() - first}


AMX_CRASHING_FORMATS = ("q8_0", "q4_0")


def needs_plain_buffers(peer_format: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether llama.cpp must keep ``peer_format``'s weights in plain CPU buffers: on CPUs with
    AMX_INT8 its AMX repacking of q8_0/q4_0 weights segfaults in ``ggml_backend_amx_mul_mat`` on
    the first decode (ggml-org/llama.cpp#20824, llama-cpp-python 0.3.36; docs/export.md). The row
    then says "no repacking": llama.cpp's other repacked kernels are off for it too."""
    if peer_format not in AMX_CRASHING_FORMATS:
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(
        line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines()
    )


def silent_log(level: int, text: bytes, user_data: Any) -> None:
    pass


def gguf_weight_bytes(path: str) -> int:
    """Bytes of tensors a decode step reads from a GGUF file: all of them, except the token
    embedding when the file has a separate output matrix (then only one row is read)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


class MlxEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def load(self) -> dict[str, Any]:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load_model

        self.mx, self.make_cache = mx, make_prompt_cache
        mx.set_default_device(mx.cpu)
        self.model, _ = load_model(Path(self.spec.weights))
        dtype = self.spec.dtype
        if dtype in ("bf16", "fp16"):
            self.model.set_dtype(mx.bfloat16 if dtype == "bf16" else mx.float16)
        elif dtype in ("int8", "int4"):
            # Blocks of 32 like llama.cpp's q8_0 / q4_0.
            nn.quantize(self.model, group_size=32, bits=8 if dtype == "int8" else 4)
        mx.eval(self.model.parameters())
        nbytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        return {"weight_bytes_per_step": nbytes, "warmup_s": None, "format": self.spec.peer_format}

    def run(self, tokens: list[list[int]]) -> dict[str, float]:
        mx = self.mx
        cache = self.make_cache(self.model)
        start = time.perf_counter()
        logits = self.model(mx.array(tokens), cache=cache)
        token = mx.argmax(logits[:, -1, :], axis=-1)
        mx.eval(token)
        first = time.perf_counter()
        for _ in range(self.spec.generate - 1):
            logits = self.model(token[:, None], cache=cache)
            token = mx.argmax(logits[:, -1, :], axis=-1)
            mx.eval(token)
        return {"ttft_s": first - start, "decode_s": time.perf_counter() - first}


ENGINE_CLASSES = {
    "elmforge": ElmforgeEngine,
    "naive": NaiveEngine,
    "llama.cpp": LlamaCppEngine,
    "mlx-lm": MlxEngine,
}


def _engine_class(name: str) -> type:
    if name == "roofline":
        from elmforge.bench.roofline import RooflineProbe

        return RooflineProbe
    return ENGINE_CLASSES[name]


def worker_main(connection: Any, spec: EngineSpec) -> None:
    """Entry point of a worker process: load, answer ``run`` requests until ``stop``."""
    threads = str(spec.threads)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = threads
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # the parent reports progress
    try:
        if spec.engine in ("elmforge", "naive", "roofline"):
            import torch

            torch.set_num_threads(spec.threads)
        engine = _engine_class(spec.engine)(spec)
        info = engine.load()
        connection.send(("ok", info))
    except Exception as err:  # any failure to load is this column's skip reason
        connection.send(("error", f"{type(err).__name__}: {first_line(err)}"))
        return
    while True:
        message = connection.recv()
        if message[0] == "stop":
            return
        try:
            if message[0] == "profile":
                connection.send(("ok", engine.profile(message[1])))
                continue
            result = engine.run(message[1])
            result["peak_memory_bytes"] = peak_memory_bytes(spec.device)
            connection.send(("ok", result))
        except Exception as err:
            connection.send(("error", f"{type(err).__name__}: {first_line(err)}"))
