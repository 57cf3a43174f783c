"""Text generation from a model directory: load model + tokenizer, stream the continuation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer

from elmforge.errors import OptionError
from elmforge.infer.loading import load_model_and_tokenizer
from elmforge.model.modeling import OpenELMForCausalLM

__all__ = ["SamplingOptions", "generate_text", "load_model_and_tokenizer"]


@dataclass
class SamplingOptions:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 0.95
    repetition_penalty: float | None = None
    greedy: bool = False
    seed: int | None = None

    def generate_kwargs(self) -> dict:
        if self.max_new_tokens <= 0:
            raise OptionError(
                "max_new_tokens", f"{{option}} must be positive, got {self.max_new_tokens}"
            )
        kwargs: dict = {"max_new_tokens": self.max_new_tokens}
        if self.greedy or self.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            if self.temperature < 0:
                raise OptionError("temperature", f"{{option}} must be >= 0, got {self.temperature}")
            kwargs.update(
                do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p
            )
        if self.repetition_penalty:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


class _CallbackStreamer(TextStreamer):
    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.on_text(text)


@torch.inference_mode()
def generate_text(
    model: OpenELMForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    options: SamplingOptions | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The continuation of ``prompt`` (without it). ``on_text`` receives it piece by piece."""
    options = options or SamplingOptions()
    if options.seed is not None:
        torch.manual_seed(options.seed)
    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"].to(model.device)
    context = model.config.max_context_length
    if input_ids.shape[1] + options.max_new_tokens > context:
        # Keep the end of a long prompt: the model cannot attend beyond its context.
        input_ids = input_ids[:, -max(1, context - options.max_new_tokens) :]
    streamer = _CallbackStreamer(tokenizer, on_text) if on_text else None
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        **options.generate_kwargs(),
    )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
