"""How ``OpenELMForCausalLM.generate()`` decodes when the caller does not say: the decode plan.

transformers' ``generate`` loop is kept (streamers, stopping criteria, logits processors,
sampling all work as documented); elmforge only fills in what the caller left open:

- the KV cache: a static cache (preallocated, updated in place) whose length is rounded up to a
  bucket (a power of two from 128), so calls with different prompt lengths reuse one compiled
  graph instead of compiling again;
- whether the decode step is compiled (``torch.compile`` of the forward, one token per sequence,
  static shapes): on CUDA with ``mode="reduce-overhead"`` (CUDA graphs: one launch per token);
  on the CPU with the default mode (inductor's C++ code fuses the small ops between the matrix
  products, which elmforge's kernels do in either mode).

Compiling costs a warm-up (tens of seconds on a 2-core CPU the first time; inductor caches the
result on disk for later processes) that pays off only over many tokens, so the setting is per
model: ``model.decode_compile`` (or ``$ELMFORGE_COMPILE``) is ``"auto"``, ``"on"`` or ``"off"``.
``auto`` compiles on CUDA always, and on the CPU only where :func:`warm_up_decode` has run for
the model (``chat``, ``serve`` and ``bench``'s compiled engine do that at start-up), so a one-off
``generate`` never waits for a compiler. Measured figures: docs/inference.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

COMPILE_CHOICES = ("auto", "on", "off")
ENV_COMPILE = "ELMFORGE_COMPILE"
MIN_CACHE_BUCKET = 128

# Arguments that mean the caller chose the cache or the decoding algorithm: leave them alone.
CALLER_CHOICES = (
    "cache_implementation",
    "past_key_values",
    "cache",
    "compile_config",
    "assistant_model",
    "prompt_lookup_num_tokens",
    "num_beams",
)


@dataclass(frozen=True)
class DecodePlan:
    """What ``generate`` will do for one call."""

    cache_implementation: str | None
    """``"static"``, or None for transformers' default (a dynamic cache)."""
    compile: bool
    compile_mode: str | None
    """``"reduce-overhead"`` (CUDA graphs) or ``"default"``; None when not compiling."""
    max_cache_len: int | None
    reason: str

    def generate_kwargs(self) -> dict[str, Any]:
        if self.cache_implementation is None:
            return {}
        kwargs: dict[str, Any] = {
            "cache_implementation": self.cache_implementation,
            "max_cache_len": self.max_cache_len,
        }
        if self.compile:
            from transformers import CompileConfig

            config = CompileConfig(fullgraph=True, dynamic=False, mode=self.compile_mode)
            config._compile_all_devices = True  # transformers compiles on CUDA only by itself
            kwargs["compile_config"] = config
        else:
            kwargs["disable_compile"] = True
        return kwargs


def cache_bucket(length: int, limit: int | None = None) -> int:
    """The static cache length for ``length`` tokens: the next power of two, at least 128, at
    most ``limit`` (the model's context) when that still holds ``length``."""
    bucket = MIN_CACHE_BUCKET
    while bucket < length:
        bucket *= 2
    if limit is not None and length <= limit < bucket:
        bucket = limit
    return bucket


def compile_setting(model: Any) -> str:
    setting = os.environ.get(ENV_COMPILE) or getattr(model, "decode_compile", "auto")
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"decode_compile / ${ENV_COMPILE} must be one of {COMPILE_CHOICES}")
    return setting


def plan_decode(
    device_type: str,
    setting: str,
    total_length: int,
    context_length: int | None = None,
    warmed_up: bool = False,
    compile_available: bool = True,
) -> DecodePlan:
    """The plan for a ``generate`` call on ``device_type`` whose prompt plus new tokens is
    ``total_length``. Pure, so the GPU rules are tested on any machine."""
    bucket = cache_bucket(total_length, context_length)
    if setting == "off" or not compile_available:
        why = "compilation off" if setting == "off" else "torch.compile unavailable"
        return DecodePlan(None, False, None, None, f"eager, dynamic cache ({why})")
    if device_type == "cuda":
        return DecodePlan("static", True, "reduce-overhead", bucket, "CUDA graphs")
    if setting == "on" or warmed_up:
        why = "asked for" if setting == "on" else "warmed up"
        return DecodePlan("static", True, "default", bucket, f"compiled decode step ({why})")
    return DecodePlan(None, False, None, None, "eager (no warm-up on this model)")


def _prompt_length(inputs: Any, kwargs: dict[str, Any]) -> int | None:
    tokens = inputs if inputs is not None else kwargs.get("input_ids")
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
        return tokens.shape[1]
    return None


def decode_defaults(
    model: Any, inputs: Any, generation_config: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``kwargs`` for ``GenerationMixin.generate`` with the decode plan filled in, unless the
    caller chose the cache, compilation or an algorithm the plan does not cover."""
    config = generation_config or model.generation_config
    if any(kwargs.get(key) not in (None, 1) for key in CALLER_CHOICES) or (
        kwargs.get("use_cache", config.use_cache) is False
        or config.cache_implementation is not None
        or config.compile_config is not None
        or (config.num_beams or 1) > 1
        or config.prompt_lookup_num_tokens
    ):
        return kwargs
    prompt = _prompt_length(inputs, kwargs)
    if prompt is None:
        return kwargs
    max_new = kwargs.get("max_new_tokens", config.max_new_tokens)
    total = prompt + max_new if max_new is not None else kwargs.get("max_length", config.max_length)
    total = max(total, kwargs.get("max_cache_len") or 0)  # a caller's bucket (warm-up) counts
    plan = plan_decode(
        model.device.type,
        compile_setting(model),
        total,
        getattr(model.config, "max_context_length", None),
        warmed_up=getattr(model, "_decode_warmed_up", False),
    )
    if plan.compile and model.device.type == "cpu":
        from elmforge.model import cpu_kernels

        cpu_kernels.load_kernels()  # before tracing: the compiled graph calls the kernels
    return {**kwargs, **plan.generate_kwargs()}


@torch.inference_mode()
def warm_up_decode(
    model: Any,
    batch_sizes: tuple[int, ...] = (1,),
    lengths: tuple[int, ...] = (256,),
    compare: bool = True,
) -> None:
    """Compile the decode step now for these batch sizes and cache buckets, and mark the model
    so ``generate`` uses it from then on (``decode_compile="auto"``). Long-lived processes
    (chat, serve, bench) call this at start-up so no request waits for the compiler.

    On the CPU with ``decode_compile="auto"`` and ``compare`` (the default), the compiled step
    is then timed against the eager one on this machine and kept only if it is faster: whether
    inductor's code beats eager elmforge kernels depends on the CPU (on an AMD Zen 5 the compiled
    bf16 step lost 17%, issue 19; on the Xeon it gains a few %). ``model.decode_choice`` says
    what was measured and chosen."""
    if compile_setting(model) == "off":
        return
    model._decode_warmed_up = True
    vocab = model.config.vocab_size
    for batch in batch_sizes:
        for length in lengths:
            prompt = torch.randint(3, vocab, (batch, 4), device=model.device)
            new = max(2, min(8, cache_bucket(length) - 4))
            model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new,
                min_new_tokens=new,
                max_cache_len=cache_bucket(length),
                do_sample=False,
                pad_token_id=0,
            )
    if compare and compile_setting(model) == "auto" and model.device.type == "cpu":
        _keep_the_faster_step(model, min(batch_sizes), cache_bucket(max(lengths)))


COMPARE_NEW_TOKENS = 12


def time_decode_step(
    model: Any, prompt: torch.Tensor, new_tokens: int, repeats: int = 2, **kwargs: Any
) -> float | None:
    """Seconds per decode step of a greedy ``model.generate(prompt)`` of ``new_tokens`` tokens
    (the best of ``repeats`` calls; ``kwargs`` go to ``generate``), None if it gave no timings
    (a stand-in ``generate``)."""
    stamps: list[float] = []

    class Stamps:
        def put(self, value: Any) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    best = None
    for _ in range(repeats):
        stamps.clear()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                       streamer=Stamps(), **kwargs)  # fmt: skip
        if len(stamps) < 4:
            return None
        step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # stamps[0] is the prompt
        best = step if best is None else min(best, step)
    return best


def _mean_decode_step(model: Any, batch: int, bucket: int) -> float | None:
    prompt = torch.full((batch, 4), 3, device=model.device)
    return time_decode_step(model, prompt, COMPARE_NEW_TOKENS, max_cache_len=bucket)


def _keep_the_faster_step(model: Any, batch: int, bucket: int) -> None:
    compiled = _mean_decode_step(model, batch, bucket)
    model._decode_warmed_up = False
    eager = _mean_decode_step(model, batch, bucket)
    if compiled is None or eager is None:
        model._decode_warmed_up = True
        model.decode_choice = "compiled (not timed)"
        return
    model._decode_warmed_up = compiled < eager
    chosen = "compiled" if model._decode_warmed_up else "eager"
    model.decode_choice = (
        f"{chosen}: compiled {compiled * 1e3:.1f} ms vs eager {eager * 1e3:.1f} ms per step "
        f"(batch {batch}, measured at warm-up)"
    )
