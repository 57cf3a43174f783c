"""A small OpenELM trained in seconds on a Markov chain, so its next-token choices have margins.

Random-weight models have nearly flat logits: any rounding flips their greedy choices, which
says nothing about a reduced-precision path. This model learns a chain where each token has one
successor with probability 0.9, so greedy decoding follows clear winners (measured: median top-2
logit margin ~2.8, smallest ~0.2 along the test paths), as a trained language model's mostly do.
"""

from __future__ import annotations

import functools
import math

import torch

from elmforge import OpenELMForCausalLM
from tests.model.helpers import make_config

SUCCESSOR_PROBS = (0.9, 0.08, 0.02)


class MarkovChain:
    def __init__(self, vocab: int, seed: int = 1) -> None:
        self.vocab = vocab
        self.generator = torch.Generator().manual_seed(seed)
        self.successors = torch.randint(3, vocab, (vocab, 3), generator=self.generator)
        self.probs = torch.tensor(SUCCESSOR_PROBS)

    def sample(self, rows: int, length: int, seed: int | None = None) -> torch.Tensor:
        """Rows of the chain; with ``seed``, the same rows whatever was sampled before."""
        generator = self.generator if seed is None else torch.Generator().manual_seed(seed)
        tokens = torch.empty(rows, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(3, self.vocab, (rows,), generator=generator)
        for i in range(1, length):
            choice = torch.multinomial(self.probs, rows, replacement=True, generator=generator)
            tokens[:, i] = self.successors[tokens[:, i - 1], choice]
        return tokens


@functools.lru_cache(maxsize=4)  # shared by the tests that use a shape; they never modify it
def train_markov_model(
    shape: str = "scaled-3-layers", steps: int = 200
) -> tuple[OpenELMForCausalLM, MarkovChain]:
    """(model in eval mode, eos off; the chain it learned). ~10 s on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to a busy machine
    try:
        torch.manual_seed(0)
        model = OpenELMForCausalLM(make_config(shape)).train()
        chain = MarkovChain(model.config.vocab_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(steps):
            batch = chain.sample(16, 32)
            loss = model(batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config.eos_token_id = None
    return model, chain


@torch.no_grad()
def perplexity(model: OpenELMForCausalLM, tokens: torch.Tensor) -> float:
    return math.exp(model(tokens, labels=tokens).loss.float().item())
