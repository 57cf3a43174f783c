"""The fused attention prologue of a CPU decode step (``elmforge::qkv_rope``: per-head RMSNorm,
RoPE and the transposes in one op) is bit-identical to the plain PyTorch path it replaces."""

from __future__ import annotations

import pytest
import torch

from elmforge import OpenELMForCausalLM
from elmforge.model import cpu_kernels
from tests.shapes import micro_config

pytestmark = pytest.mark.skipif(
    not cpu_kernels.load_kernels(), reason=f"no CPU kernels: {cpu_kernels.status()}"
)


@pytest.mark.parametrize("norms", [True, False], ids=["qk-norms", "no-qk-norms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_qkv_rope_equals_the_plain_path(norms, dtype):
    torch.manual_seed(0)
    config = micro_config(normalize_qk_projections=norms)
    model = OpenELMForCausalLM(config).eval()
    attention = model.transformer.layers[0].attn.to(dtype)
    heads, kv_heads, dim = attention.num_q_heads, attention.num_kv_heads, attention.head_dim
    for batch, length in ((1, 1), (3, 1), (2, 4)):
        qkv = (torch.randn(batch, length, heads + 2 * kv_heads, dim) * 3).to(dtype)
        rope = model.transformer.rotary(torch.randint(0, 100, (batch, length)), 200)
        with torch.inference_mode():
            expected = attention.split_rotate(qkv, rope)
            got = cpu_kernels.qkv_rope(
                qkv, attention.q_norm.weight if norms else None,
                attention.k_norm.weight if norms else None, *rope,
                attention.q_norm.eps if norms else 0.0, heads, kv_heads,
            )  # fmt: skip
        for want, have in zip(expected, got):
            assert have.shape == want.shape and have.dtype == want.dtype
            assert torch.equal(have, want), (batch, length)


def test_decode_steps_use_it_and_training_does_not():
    torch.manual_seed(0)
    model = OpenELMForCausalLM(micro_config()).eval()
    qkv = torch.randn(1, 1, 8, 64)
    with torch.inference_mode():
        assert cpu_kernels.qkv_rope_usable_for(qkv)
        assert not cpu_kernels.qkv_rope_usable_for(torch.randn(1, 9, 8, 64))  # a prompt
    assert not cpu_kernels.qkv_rope_usable_for(qkv)  # gradients on
    ids = torch.tensor([[5, 6, 7]])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    fused = model.generate(ids, **kwargs)
    switched_off = cpu_kernels._state["ready"]
    try:
        cpu_kernels._state["ready"] = False  # the plain path
        plain = model.generate(ids, **kwargs)
    finally:
        cpu_kernels._state["ready"] = switched_off
    assert torch.equal(fused, plain)


def test_warm_up_keeps_the_compiled_step_only_if_it_is_faster(monkeypatch):
    from elmforge.model import decoding

    model = OpenELMForCausalLM(micro_config()).eval()
    monkeypatch.setattr(model, "generate", lambda *a, **kw: None)  # no compiling here
    for compiled, eager, kept in ((0.010, 0.012, True), (0.012, 0.010, False)):
        steps = iter([compiled, eager])
        monkeypatch.setattr(decoding, "_mean_decode_step", lambda *a, steps=steps: next(steps))
        decoding.warm_up_decode(model, (1,), (128,))
        assert model._decode_warmed_up is kept
        assert model.decode_choice.startswith("compiled" if kept else "eager")
        assert "10.0 ms" in model.decode_choice and "12.0 ms" in model.decode_choice
    model.decode_compile = "on"  # asked for: no comparison, always compiled
    decoding.warm_up_decode(model, (1,), (128,))
    assert model._decode_warmed_up


def test_prompt_products_agree_with_the_plain_ones():
    from elmforge.model import prefill, quant

    weight = torch.randn(300, 256) * 0.05
    codes, scale = quant.quantize_int8(weight)
    plain = quant.dequantize_int8(codes, scale)
    rows = torch.ops.elmforge.dequantize_int8_rows
    assert torch.equal(rows(codes, scale, 0, 300, torch.float32), plain)
    assert torch.equal(rows(codes, scale, 40, 90, torch.bfloat16), plain[40:90].bfloat16())
    x = torch.randn(2, 20, 256)
    want = torch.nn.functional.linear(x, plain)
    got = prefill.int8_prompt_linear(x, codes, scale)
    assert got.dtype == x.dtype and got.shape == want.shape
    tolerance = 2e-2 if prefill.quantized_compute_dtype() == torch.bfloat16 else 1e-5
    assert (got - want).abs().max() <= tolerance * want.abs().max()
    assert prefill.float32_backend() in ("onednn", "mkl")
    torch.testing.assert_close(prefill.prompt_linear(x, weight), x @ weight.T)
    # int4 (groups of 32 and of 64 columns): the kernel's weight is the torch expression's, bit
    # for bit, and the product agrees like int8's.
    for group in (32, 64):
        packed, scale4 = quant.quantize_int4(weight, group)
        plain4 = quant.dequantize_int4(packed, scale4, group)
        rows4 = torch.ops.elmforge.dequantize_int4_rows
        assert torch.equal(rows4(packed, scale4, group, torch.float32), plain4)
        assert torch.equal(rows4(packed, scale4, group, torch.bfloat16), plain4.bfloat16())
        want4 = torch.nn.functional.linear(x, plain4)
        got4 = prefill.int4_prompt_linear(x, packed, scale4, group)
        assert got4.dtype == x.dtype and got4.shape == want4.shape
        assert (got4 - want4).abs().max() <= tolerance * want4.abs().max()
