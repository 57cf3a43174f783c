"""The model's behaviour: generation paths agree, padding is invisible, training features work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM

from elmforge import OpenELMForCausalLM, OpenELMModel
from tests.model.helpers import greedy_without_cache, make_model


def test_auto_classes_resolve_to_openelm(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is OpenELMForCausalLM
    assert type(AutoModel.from_pretrained(tmp_path)) is OpenELMModel


def test_static_cache_decoding_equals_dynamic_cache_and_no_cache():
    model = make_model()
    prompt = torch.randint(0, model.config.vocab_size, (1, 7))
    dynamic = model.generate(prompt, max_new_tokens=12, do_sample=False)
    static = model.generate(
        prompt, max_new_tokens=12, do_sample=False, cache_implementation="static"
    )
    assert torch.equal(dynamic, static)
    assert torch.equal(dynamic, greedy_without_cache(model, prompt, 12))


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_left_padded_batch_decodes_like_unpadded_prompts(cache_implementation):
    model = make_model()
    long = torch.randint(3, model.config.vocab_size, (1, 11))
    short = torch.randint(3, model.config.vocab_size, (1, 5))
    pad = 0
    batch = torch.cat([long, torch.cat([torch.full((1, 6), pad), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :6] = 0
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=pad)
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation
    together = model.generate(batch, attention_mask=mask, **kwargs)
    alone_long = model.generate(long, **kwargs)
    alone_short = model.generate(short, **kwargs)
    assert torch.equal(together[0, 11:], alone_long[0, 11:])
    assert torch.equal(together[1, 11:], alone_short[0, 5:])


def test_padded_forward_logits_equal_unpadded():
    model = make_model()
    tokens = torch.randint(3, model.config.vocab_size, (1, 8))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), tokens], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = model(tokens).logits
        masked = model(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-5)


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model = make_model()
    prompt = torch.randint(0, model.config.vocab_size, (2, 4))
    kwargs = dict(max_new_tokens=16, do_sample=True, temperature=1.5, top_k=50, top_p=0.95)
    torch.manual_seed(1)
    first = model.generate(prompt, **kwargs)
    torch.manual_seed(1)
    again = model.generate(prompt, **kwargs)
    torch.manual_seed(2)
    other = model.generate(prompt, **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_labels_give_the_shifted_cross_entropy():
    model = make_model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    labels = tokens.clone()
    labels[0, :3] = -100
    out = model(tokens, labels=labels)
    expected = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, model.config.vocab_size),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )
    torch.testing.assert_close(out.loss, expected)


def test_logits_to_keep_returns_the_last_positions_only():
    model = make_model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        full = model(tokens).logits
        last = model(tokens, logits_to_keep=1).logits
    assert last.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:])


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        tokens = torch.randint(0, model.config.vocab_size, (2, 12))
        model(tokens, labels=tokens).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_tied_embedding_receives_gradients_from_both_uses():
    model = make_model().train()
    assert model.lm_head.weight is model.transformer.token_embeddings.weight
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    model(tokens, labels=tokens).loss.backward()
    assert model.transformer.token_embeddings.weight.grad is not None


def test_bf16_forward_is_close_to_fp32():
    model = make_model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        fp32 = model(tokens).logits
        bf16 = model.to(torch.bfloat16)(tokens).logits.float()
    # bf16 keeps ~3 significant digits; the logits are O(1).
    assert (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = make_model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 16))
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(tokens, use_cache=False).logits
        out = compiled(tokens, use_cache=False).logits
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


def test_positions_beyond_the_rope_table_grow_it():
    model = make_model(rope_max_length=16, max_context_length=16)
    tokens = torch.randint(0, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        logits = model(tokens).logits
    assert torch.isfinite(logits).all()
    assert model.transformer.rotary.cos.shape[0] >= 40


def test_cpu_decode_linear_is_bit_identical_to_f_linear(monkeypatch):
    """Without elmforge's kernels, fp32 decode runs as a threaded batched matmul (bit-identical)."""
    from elmforge.model import cpu_kernels
    from elmforge.model.modeling import OpenELMLinear

    monkeypatch.setitem(cpu_kernels._state, "ready", False)
    monkeypatch.setitem(cpu_kernels._state, "tried", True)

    layer = OpenELMLinear(64, 96, bias=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            for rows in (1, 3, 8):
                x = torch.randn(1, rows, 64)
                assert torch.equal(layer(x), F.linear(x, layer.weight))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_compiled_static_cache_decoding_matches_eager():
    model = make_model()
    prompt = torch.randint(0, model.config.vocab_size, (1, 6))
    eager = model.generate(prompt, max_new_tokens=8, do_sample=False)
    model.forward = torch.compile(model.forward, dynamic=False, fullgraph=True)
    compiled = model.generate(
        prompt, max_new_tokens=8, do_sample=False, cache_implementation="static"
    )
    assert torch.equal(compiled, eager)
