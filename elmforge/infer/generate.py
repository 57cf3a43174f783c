"""Generation options and text generation for ``generate`` and ``chat`` (``serve`` shares the
options, the stop-string handling and the context rule).

Decoding goes through transformers' ``generate()`` (so the model's fast decode paths apply),
including its speculative decoding at batch 1: prompt lookup (``prompt_lookup_num_tokens``) and
a draft model (``assistant_model``). Both only propose tokens that the model then verifies, so
greedy output is exactly plain greedy decoding (tested).

The context rule, everywhere: prompt tokens are never dropped. A prompt that does not fit the
model's context (``max_context_length``) is an error; generation stops, with a notice, when
prompt plus output reach the context (a clear stop, not a sliding window: OpenELM was trained on
2048-token windows and its output past them is not something we claim to support).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from elmforge.errors import ElmforgeError, OptionError
from elmforge.infer.detokenize import TextAssembler
from elmforge.modeldir.loading import context_length_of
from elmforge.progress import Report

__all__ = [
    "ContextOverflowError",
    "GenerationResult",
    "OptionError",
    "SamplingOptions",
    "fit_to_context",
    "generate_text",
]


class ContextOverflowError(ElmforgeError):
    """The prompt (with the tokens asked for) does not fit the model's context."""


MAX_TEMPERATURE = 2.0  # OpenAI's upper bound; higher is noise for any model


def check_speculative(prompt_lookup: int | None, draft_model: Any) -> None:
    """Prompt lookup and a draft model are two ways of proposing tokens, and one generation uses
    one: both given is refused rather than one silently dropped."""
    if prompt_lookup and draft_model is not None:
        raise OptionError(
            "prompt_lookup",
            "{option} and a draft model are two kinds of speculative decoding; give one",
        )


@dataclass
class SamplingOptions:
    """How to pick tokens. ``temperature == 0`` or ``greedy`` means greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = 50  # None, 0 or -1: off
    top_p: float | None = 0.95  # None or 1: off
    min_p: float | None = None  # None or 0: off
    repetition_penalty: float | None = None  # None or 1: off (CTRL's, as transformers has it)
    presence_penalty: float = 0.0  # OpenAI's additive penalties on tokens already generated
    frequency_penalty: float = 0.0
    greedy: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # end-of-sequence is blocked until this many tokens (vLLM's min_tokens)
    ignore_eos: bool = False  # keep going past end-of-sequence (vLLM's, for benchmarks)
    prompt_lookup: int | None = None  # speculative: propose N tokens copied from the prompt
    draft_model: Any = field(default=None, repr=False)  # speculative: a smaller model proposes

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def speculative(self) -> bool:
        return bool(self.prompt_lookup) or self.draft_model is not None

    def check(self) -> SamplingOptions:
        """Raise :class:`OptionError` (naming the field; the CLI names the flag, ``serve`` the
        request's field) for a value out of range."""

        def fail(name: str, rule: str) -> None:
            raise OptionError(name, f"{{option}} {getattr(self, name)!r}: {rule}")

        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "seed", "prompt_lookup"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                fail(name, "must be an integer")
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                fail(name, "must be a finite number")
        if self.max_new_tokens < 1:
            fail("max_new_tokens", "must be at least 1")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            fail("temperature", f"must be between 0 and {MAX_TEMPERATURE:g}")
        if self.top_k is not None and self.top_k < -1:
            fail("top_k", "must be >= 1 (0 or -1: off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            fail("top_p", "must be in (0, 1]")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            fail("min_p", "must be in [0, 1]")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            fail("repetition_penalty", "must be > 0 (1: off)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                fail(name, "must be between -2 and 2")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            fail("seed", "must fit in 64 bits")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            fail("min_new_tokens", f"must be between 0 and the maximum ({self.max_new_tokens})")
        if self.prompt_lookup is not None and self.prompt_lookup < 1:
            fail("prompt_lookup", "must be >= 1")
        if any(not isinstance(s, str) for s in self.stop):
            fail("stop", "must be strings")
        if "" in self.stop:  # an empty stop would end every output at its first token
            raise OptionError("stop", '{option} "": a stop string must not be empty')
        check_speculative(self.prompt_lookup, self.draft_model)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of transformers' ``generate()`` (penalties it lacks excepted)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.is_greedy:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None, min_p=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=self.temperature,
                top_k=self.top_k if self.top_k and self.top_k > 0 else None,
                top_p=self.top_p if self.top_p and self.top_p < 1 else None,
                min_p=self.min_p or None,
            )
        if self.repetition_penalty and self.repetition_penalty != 1:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup
        if self.draft_model is not None:
            kwargs["assistant_model"] = self.draft_model
        return kwargs

    def logits_processors(self) -> LogitsProcessorList:
        """transformers' processors for these options, in ``generate()``'s order, for decoders
        that pick tokens themselves (the server's batch). Empty for plain greedy decoding."""
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if self.repetition_penalty and self.repetition_penalty != 1:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.presence_penalty or self.frequency_penalty:
            processors.append(OpenAIPenalties(self.presence_penalty, self.frequency_penalty))
        if not self.is_greedy:
            if self.temperature != 1:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k and self.top_k > 0:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p and self.top_p < 1:
                processors.append(TopPLogitsWarper(self.top_p))
            if self.min_p:
                processors.append(MinPLogitsWarper(self.min_p))
        return processors


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the generated tokens (the ids after
    ``prompt_length``): ``logit - presence * [count > 0] - frequency * count``."""

    def __init__(self, presence: float, frequency: float, prompt_length: int = 0) -> None:
        self.presence, self.frequency, self.prompt_length = presence, frequency, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.presence * (counts > 0) - self.frequency * counts


def fit_to_context(prompt_tokens: int, max_new_tokens: int, context: int) -> int:
    """How many tokens may be generated after a prompt of ``prompt_tokens``: ``max_new_tokens``
    or what is left of the context; a prompt that leaves no room is an error."""
    if prompt_tokens >= context:
        raise ContextOverflowError(
            f"the prompt is {prompt_tokens} tokens and the model's context is {context}: "
            "shorten the prompt (prompt tokens are never dropped)"
        )
    return min(max_new_tokens, context - prompt_tokens)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a sequence: the model's generation config, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos])}


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (end-of-sequence or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


class _AssemblerStreamer(BaseStreamer):
    """Receives generate()'s tokens, turns them into text with stop strings held back."""

    def __init__(self, assembler: TextAssembler, eos: set[int], on_text: Callable | None):
        self.assembler, self.eos, self.on_text = assembler, eos, on_text
        self.prompt_seen = False
        self.tokens = 0
        self.ended_by_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() sends the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.ended_by_eos or self.assembler.stop_found is not None:
                return
            self.tokens += 1
            if token in self.eos:
                self.ended_by_eos = True
                return
            piece = self.assembler.push(token)
            if piece and self.on_text:
                self.on_text(piece)

    def end(self) -> None:
        if self.assembler.stop_found is None:
            piece = self.assembler.finish()
            if piece and self.on_text:
                self.on_text(piece)


class _StopWhen(StoppingCriteria):
    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.done(), dtype=torch.bool)


@torch.inference_mode()
def generate_text(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    options: SamplingOptions | None = None,
    on_text: Callable[[str], None] | None = None,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """The continuation of ``prompt`` (text, or token ids used as they are).

    ``on_text`` receives the text piece by piece as it becomes final; ``report`` is told when
    the context shortens the output; ``should_stop`` is polled every step (a client that left).
    """
    options = (options or SamplingOptions()).check()
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
    else:
        prompt_ids = list(prompt)
    context = context_length_of(model)
    max_new = fit_to_context(len(prompt_ids), options.max_new_tokens, context)
    if max_new < options.max_new_tokens and report:
        report(
            f"generating at most {max_new} tokens, not {options.max_new_tokens}: the prompt is "
            f"{len(prompt_ids)} tokens and the context {context}"
        )
    if options.seed is not None:
        torch.manual_seed(options.seed)
    eos = set() if options.ignore_eos else eos_token_ids(model, tokenizer)
    assembler = TextAssembler(tokenizer, prompt_ids, options.stop)
    streamer = _AssemblerStreamer(assembler, eos, on_text)
    stop_checks = [lambda: assembler.stop_found is not None]
    if should_stop is not None:
        stop_checks.append(should_stop)
    kwargs = options.generate_kwargs()
    kwargs["max_new_tokens"] = max_new
    if options.presence_penalty or options.frequency_penalty:
        penalties = OpenAIPenalties(
            options.presence_penalty, options.frequency_penalty, len(prompt_ids)
        )
        kwargs["logits_processor"] = LogitsProcessorList([penalties])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        streamer=streamer,
        stopping_criteria=[_StopWhen(lambda: any(check() for check in stop_checks))],
        eos_token_id=sorted(eos) or None,
        pad_token_id=pad,
        **kwargs,
    )
    stopped = streamer.ended_by_eos or assembler.stop_found is not None
    return GenerationResult(
        text=assembler.text,
        finish_reason="stop" if stopped else "length",
        prompt_tokens=len(prompt_ids),
        completion_tokens=streamer.tokens,
    )


def load_generator(
    model: str,
    *,
    tokenizer: Any = None,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    draft_model: str | None = None,
) -> tuple[Any, Any]:
    """(LoadedModel, draft model or None): the model to generate with and, for speculative
    decoding, a smaller one with the same vocabulary on the same device and dtype."""
    from elmforge.modeldir.loading import load, load_model

    loaded = load(model, tokenizer=tokenizer, adapter=adapter, device=device, dtype=dtype)
    if draft_model is None:
        return loaded, None
    draft = load_model(draft_model, device=loaded.device, dtype=loaded.dtype)
    ours, theirs = loaded.model.config.vocab_size, draft.config.vocab_size
    if ours != theirs:
        raise OptionError(
            "draft_model",
            f"{{option}} {draft_model}: its vocabulary has {theirs} tokens, the model's {ours}; "
            "a draft model must use the same tokenizer",
        )
    return loaded, draft
