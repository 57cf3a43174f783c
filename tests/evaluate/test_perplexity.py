"""Perplexity equals exp(mean token loss) computed independently with plain forward passes."""

from __future__ import annotations

import math

import pytest
import torch

from elmforge.errors import ElmforgeError
from elmforge.evaluate.perplexity import perplexity

TEXTS = [
    "the cat sat on the warm stone by the river",
    "A bird and a fish met at the blue water under a small cloud.",
    "snow",
    "big red apple, green tree; slow wind, fast rain",
    "café naïve façade, 東京 — bits per byte count UTF-8 bytes, not characters",
]


def document_ids(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]


def test_whole_documents_equal_the_models_own_loss(tiny_model, tokenizer):
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([document_ids(tokenizer, text)])
            loss = tiny_model(input_ids=ids, labels=ids).loss  # mean over the shifted targets
            total_nll += float(loss) * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    result = perplexity(tiny_model, tokenizer, TEXTS)
    assert result["tokens"] == total_tokens
    assert result["documents"] == len(TEXTS)
    assert result["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert n_bytes > sum(len(t) for t in TEXTS)
    assert result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(total_nll / math.log(2) / n_bytes, rel=1e-5)


def test_sliding_window_predicts_each_token_once_with_bounded_context(tiny_model, tokenizer):
    # stride 1: token i is predicted from exactly the previous `context` tokens (or all of them).
    context = 5
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in TEXTS[:2]:
            ids = document_ids(tokenizer, text)
            for i in range(1, len(ids)):
                window = torch.tensor([ids[max(0, i - context) : i]])
                logprobs = torch.log_softmax(tiny_model(input_ids=window).logits[0, -1], dim=-1)
                total_nll -= float(logprobs[ids[i]])
                total_tokens += 1
    result = perplexity(tiny_model, tokenizer, TEXTS[:2], context_length=context, stride=1)
    assert result["tokens"] == total_tokens
    assert result["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)


def test_batching_and_stride_do_not_change_token_count(tiny_model, tokenizer):
    one = perplexity(tiny_model, tokenizer, TEXTS, context_length=8, stride=4, batch_size=1)
    three = perplexity(tiny_model, tokenizer, TEXTS, context_length=8, stride=4, batch_size=3)
    whole = perplexity(tiny_model, tokenizer, TEXTS)
    assert one["tokens"] == three["tokens"] == whole["tokens"]
    assert three["loss"] == pytest.approx(one["loss"], rel=1e-5)


@pytest.mark.parametrize(("context", "stride"), [(8, 9), (0, None), (8, 0)])
def test_bad_window_is_an_error(tiny_model, tokenizer, context, stride):
    with pytest.raises(ElmforgeError):
        perplexity(tiny_model, tokenizer, TEXTS, context_length=context, stride=stride)
