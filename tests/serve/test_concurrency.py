"""Batching pays: 8 clients at once all succeed and get at least 2x the aggregate throughput of
the same 8 requests one at a time (measured back to back against the same server)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from tests.serve.server_support import running_server

CLIENTS = 8
TOKENS = 48
ROUNDS = 2  # best of two for each mode: the machine is shared, a stall must not decide


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory, model_dir):
    """OpenELM-tiny's shape (4 layers, width 128) with the test tokenizer: big enough that a
    decode step is the model's work rather than Python's, as with real models."""
    from elmforge import OpenELMConfig, OpenELMForCausalLM
    from elmforge.data.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("serve-wider-model")
    tokenizer = load_tokenizer(model_dir)
    torch.manual_seed(0)
    config = OpenELMConfig.from_name("OpenELM-tiny", vocab_size=len(tokenizer))
    OpenELMForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_eight_concurrent_clients_get_at_least_twice_the_throughput(wider_model_dir, tmp_path):
    with running_server(wider_model_dir, "--max-batch", "8", log_dir=tmp_path) as server:
        client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300)

        def request(i: int) -> int:
            result = client.completions.create(
                model=str(wider_model_dir), prompt=f"the cat number {i}", max_tokens=TOKENS,
                temperature=0, extra_body={"ignore_eos": True},
            )  # fmt: skip
            assert result.choices[0].finish_reason == "length"
            return result.usage.completion_tokens

        request(0)  # warm-up
        sequential, concurrent = [], []
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(ROUNDS):
                started = time.perf_counter()
                tokens = sum(request(i) for i in range(CLIENTS))
                sequential.append(tokens / (time.perf_counter() - started))
                started = time.perf_counter()
                tokens = sum(pool.map(request, range(CLIENTS)))
                concurrent.append(tokens / (time.perf_counter() - started))
        assert tokens == CLIENTS * TOKENS
        ratio = max(concurrent) / max(sequential)
        figures = (
            f"{CLIENTS} clients at once: {max(concurrent):.0f} tokens/s; one at a time: "
            f"{max(sequential):.0f} tokens/s; ratio {ratio:.2f} (rounds: concurrent "
            f"{[round(x) for x in concurrent]}, sequential {[round(x) for x in sequential]})"
        )
        print(figures)
        assert ratio >= 2, figures
