"""The fast inference paths against the plain eager float32 path.

- elmforge's CPU decode kernels equal the plain PyTorch products they replace (to float32
  rounding) for 1-8 rows, and a row's result does not depend on the batch it is in;
- bf16, int8 and int4 give the float32 greedy tokens for a stated number of leading tokens, in
  batches of 1, 3 and 8 with left padding, on two trained shapes, and perplexity within a stated
  relative delta (measured: bf16 +0.1%, int8 0.0%, int4 +0.5%);
- the compiled static-cache decode step gives exactly the eager float32 tokens, and a second
  call in the same cache bucket compiles nothing new (slow);
- the decode plan: CUDA graphs on CUDA, the compiled step on the CPU only when warmed up or
  asked, the caller's own choices left alone.
"""

from __future__ import annotations

import copy
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GenerationMixin

from elmforge.model import cpu_kernels, decoding, quant
from elmforge.model.modeling import OpenELMLinear
from tests.infer.markov import perplexity, train_markov_model
from tests.model.helpers import SHAPES, make_model

# dtype -> (leading greedy tokens equal to float32 in every row, rows of a batch allowed to fall
# short, relative perplexity delta). int4 may flip a near tie (measured: one row of 8, where the
# float32 top-2 margin was 0.31 nats); bf16 and int8 never did.
STATED = {"bf16": (16, 0, 0.01), "int8": (16, 0, 0.01), "int4": (8, 1, 0.03)}
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def kernels() -> None:
    if not cpu_kernels.load_kernels():
        pytest.skip(f"elmforge's CPU kernels are not available here: {cpu_kernels.status()}")


@pytest.fixture(scope="module", params=["scaled-3-layers", "scaled-4-layers-gqa2"])
def markov(request):
    return train_markov_model(request.param)


def reduced(model, kind: str):
    model = copy.deepcopy(model)
    return model.bfloat16() if kind == "bf16" else quant.quantize_model(model, kind)


def left_padded(rows: torch.Tensor, lengths: list[int], pad: int = 0):
    """Rows cut to ``lengths`` (their last tokens), left-padded to one width, with the mask."""
    width = max(lengths)
    batch = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, length in enumerate(lengths):
        batch[i, width - length :] = rows[i, -length:]
        mask[i, width - length :] = 1
    return batch, mask


def greedy(model, batch, mask, compile_setting: str = "off") -> torch.Tensor:
    model.decode_compile = compile_setting
    out = model.generate(
        batch, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    return out[:, batch.shape[1] :]


def leading_agreement(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """Per row, how many tokens from the start are equal."""
    return [int(row.cumprod(0).sum()) for row in (a == b).int()]


# -- kernels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
def test_kernels_equal_the_plain_products_for_1_to_8_rows(kernels, kind):
    out_features, in_features = 4 * 37 + 3, 256  # blocks of 4 rows and a tail
    weight = torch.randn(out_features, in_features) * 0.05
    if kind == "int8":
        codes = quant.quantize_int8(weight)
        kernel = lambda x: cpu_kernels.linear_int8(x, *codes)  # noqa: E731
        plain = lambda x: F.linear(x, quant.dequantize_int8(*codes))  # noqa: E731
    elif kind == "int4":
        codes = quant.quantize_int4(weight)
        kernel = lambda x: cpu_kernels.linear_int4(x, *codes, quant.INT4_GROUP_SIZE)  # noqa: E731
        plain = lambda x: F.linear(x, quant.dequantize_int4(*codes, quant.INT4_GROUP_SIZE))  # noqa: E731
    else:
        stored = weight.bfloat16() if kind == "bf16" else weight
        kernel = lambda x: cpu_kernels.linear_decode(x, stored)  # noqa: E731
        plain = lambda x: F.linear(x.float(), stored.float())  # noqa: E731
    for rows in range(1, 9):
        x = torch.randn(rows, in_features)
        if kind == "bf16":
            x = x.bfloat16()
        got = kernel(x)
        assert got.dtype == x.dtype and got.shape == (rows, out_features)
        want = plain(x)
        scale = want.abs().max().item()
        # bf16: the output is rounded to bf16; int8: the activations go through int16 (<1.5e-5 of
        # the row's largest); float32 and int4: float32 sums in another order.
        tolerance = {"bf16": 8e-3, "int8": 1e-4}.get(kind, 2e-6)
        assert (got.float() - want.float()).abs().max().item() <= tolerance * scale, rows
        # A row's result is the same alone or in a batch: batched decoding is exact.
        assert torch.equal(got[-1:], kernel(x[-1:]))


def test_decode_steps_use_the_kernel_and_prompts_and_training_do_not(kernels, monkeypatch):
    calls = []
    original = cpu_kernels.linear_decode
    monkeypatch.setattr(
        cpu_kernels, "linear_decode", lambda x, w: calls.append(x.dtype) or original(x, w)
    )
    layer = OpenELMLinear(128, 96, bias=False)
    with torch.no_grad():
        layer(torch.randn(2, 1, 128))
        layer.bfloat16()(torch.randn(8, 1, 128, dtype=torch.bfloat16))
        assert calls == [torch.float32, torch.bfloat16]
        layer(torch.randn(1, 9, 128, dtype=torch.bfloat16))  # a prompt: F.linear
    layer.float()(torch.randn(1, 1, 128))  # training (gradients): F.linear
    assert len(calls) == 2


def plain_kernels_off(monkeypatch) -> None:
    monkeypatch.setitem(cpu_kernels._state, "ready", False)
    monkeypatch.setitem(cpu_kernels._state, "tried", True)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_float32_kernel_decoding_gives_the_plain_float32_tokens(kernels, monkeypatch, shape):
    model = make_model(shape)
    prompts = torch.randint(3, model.config.vocab_size, (3, 10))
    for size, lengths in ((1, [10]), (3, [10, 4, 7])):
        batch, mask = left_padded(prompts[:size], lengths)
        fast = greedy(model, batch, mask)
        with monkeypatch.context() as patch:
            plain_kernels_off(patch)
            assert torch.equal(fast, greedy(model, batch, mask)), (shape, size)


def test_without_kernels_every_path_falls_back_to_plain_torch(monkeypatch):
    plain_kernels_off(monkeypatch)
    model = quant.quantize_model(make_model(), "int8")
    prompt = torch.randint(3, model.config.vocab_size, (1, 5))
    out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


# -- reduced precision on trained models -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STATED))
def test_reduced_precision_keeps_the_float32_greedy_tokens(kernels, markov, kind):
    model, chain = markov
    fast = reduced(model, kind)
    leading, allowed, _ = STATED[kind]
    rows = chain.sample(8, 16, seed=2)
    lengths = [4, 16, 7, 11, 5, 16, 9, 13]
    for size in (1, 3, 8):
        batch, mask = left_padded(rows[:size], lengths[:size])
        want = greedy(model, batch, mask)
        got = greedy(fast, batch, mask)
        agreement = leading_agreement(got, want)
        assert sum(n < leading for n in agreement) <= allowed, (kind, size, agreement)


@pytest.mark.parametrize("kind", list(STATED))
def test_reduced_precision_perplexity_is_within_the_stated_delta(kernels, markov, kind):
    model, chain = markov
    held_out = chain.sample(8, 48, seed=3)
    reference = perplexity(model, held_out)
    delta = abs(perplexity(reduced(model, kind), held_out) - reference) / reference
    assert delta <= STATED[kind][2], (kind, reference, delta)


def test_batched_kernel_decoding_equals_each_sequence_alone(kernels, markov):
    model, chain = markov
    fast = reduced(model, "int8")
    rows = chain.sample(4, 12, seed=4)
    batch, mask = left_padded(rows, [12, 5, 9, 3])
    together = greedy(fast, batch, mask)
    for i, length in enumerate([12, 5, 9, 3]):
        alone = greedy(fast, rows[i : i + 1, -length:], torch.ones(1, length, dtype=torch.long))
        assert torch.equal(together[i], alone[0])


# -- compiled decode ---------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_float32_tokens_and_reuses_its_graph():
    from torch._dynamo.utils import counters

    model = make_model("scaled-4-layers-gqa2")
    prompts = torch.randint(3, model.config.vocab_size, (2, 9))
    batch, mask = left_padded(prompts, [9, 4])
    eager = greedy(model, batch, mask, "off")
    compiled = greedy(model, batch, mask, "on")
    assert hasattr(model, "_compiled_call")  # transformers' compiled decode step ran
    assert torch.equal(compiled, eager)
    frames = counters["frames"]["ok"]
    batch, mask = left_padded(prompts, [6, 3])  # another length, the same cache bucket
    assert torch.equal(greedy(model, batch, mask, "on"), greedy(model, batch, mask, "off"))
    assert counters["frames"]["ok"] == frames  # no new compilation


@pytest.mark.slow
def test_compiled_int8_decode_traces_through_the_kernels(kernels):
    model, chain = train_markov_model("scaled-3-layers")
    fast = reduced(model, "int8")
    batch = chain.sample(1, 8, seed=5)
    mask = torch.ones_like(batch)
    eager = greedy(fast, batch, mask, "off")
    assert leading_agreement(greedy(fast, batch, mask, "on"), eager) == [NEW_TOKENS]


# -- the decode plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_a_decode_step_never_reads_a_tensor_back_to_the_host(monkeypatch, cache_implementation):
    """On a GPU every such read is a sync that stalls the queue (and breaks CUDA graphs)."""
    from transformers import DynamicCache, StaticCache

    model = make_model()
    batch, mask = left_padded(torch.randint(3, 300, (2, 6)), [6, 3])
    if cache_implementation == "static":
        cache = StaticCache(config=model.config, max_cache_len=16)
    else:
        cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(batch, attention_mask=mask, cache=cache, use_cache=True)

        def host_read(*args, **kwargs):
            raise AssertionError("a decode step read a tensor back to the host")

        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, host_read)
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        out = model(batch[:, -1:], attention_mask=step_mask, cache=cache, use_cache=True)
    monkeypatch.undo()
    assert out.logits.shape == (2, 1, model.config.vocab_size)


def test_decode_plan_rules():
    cuda = decoding.plan_decode("cuda", "auto", 300)
    assert (cuda.cache_implementation, cuda.compile, cuda.compile_mode) == (
        "static", True, "reduce-overhead"
    )  # fmt: skip
    assert cuda.max_cache_len == 512
    assert not decoding.plan_decode("cpu", "auto", 300).compile
    warmed = decoding.plan_decode("cpu", "auto", 300, warmed_up=True)
    assert (warmed.compile, warmed.compile_mode, warmed.max_cache_len) == (True, "default", 512)
    assert decoding.plan_decode("cpu", "on", 100).compile
    assert decoding.plan_decode("cuda", "off", 100).cache_implementation is None
    assert not decoding.plan_decode("cuda", "auto", 100, compile_available=False).compile
    assert [decoding.cache_bucket(n) for n in (1, 128, 129, 700)] == [128, 128, 256, 1024]
    assert decoding.cache_bucket(1500, limit=2048) == 2048
    assert decoding.cache_bucket(1500, limit=1600) == 1600  # never past the context


def test_generate_fills_in_the_plan_only_where_the_caller_left_it_open(monkeypatch):
    model = make_model()
    seen = {}
    monkeypatch.setattr(  # record what transformers' generate would be given
        GenerationMixin, "generate", lambda self, inputs, config, **kw: seen.update(kw)
    )
    prompt = torch.ones(1, 5, dtype=torch.long)
    model.decode_compile = "on"
    model.generate(prompt, max_new_tokens=200)
    assert seen["cache_implementation"] == "static" and seen["max_cache_len"] == 256
    assert seen["compile_config"]._compile_all_devices
    for caller_choice in (
        {"cache_implementation": "dynamic"},
        {"num_beams": 2},
        {"use_cache": False},
        {"prompt_lookup_num_tokens": 3},
    ):
        seen.clear()
        model.generate(prompt, max_new_tokens=8, **caller_choice)
        assert "compile_config" not in seen and seen.items() >= caller_choice.items()
    seen.clear()
    model.decode_compile = "off"
    model.generate(prompt, max_new_tokens=8)
    assert "cache_implementation" not in seen


def test_warm_up_marks_the_model_for_compiled_decoding(monkeypatch):
    model = make_model()
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **kw: calls.append(kw))
    decoding.warm_up_decode(model, batch_sizes=(1, 4), lengths=(300,), compare=False)
    assert model._decode_warmed_up and len(calls) == 2
    assert {kw["max_cache_len"] for kw in calls} == {512}


# -- quantisation details ----------------------------------------------------------------------


def test_int4_layout_and_rounding_follow_q4_0():
    weight = torch.randn(3, 64)
    packed, scale = quant.quantize_int4(weight)
    assert packed.shape == (3, 32) and scale.shape == (3, 2)
    codes = torch.cat([packed.reshape(3, 2, 16) & 15, packed.reshape(3, 2, 16) >> 4], dim=2)
    values = (codes.float() - 8) * scale[..., None]
    assert torch.equal(values.reshape(3, 64), quant.dequantize_int4(packed, scale, 32))
    groups = weight.reshape(3, 2, 32)
    largest = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(scale, largest / -8)  # the extreme weight is exactly code 0
    error = (quant.dequantize_int4(packed, scale, 32) - weight).abs().reshape(3, 2, 32)
    # Half a step, except on the side opposite the extreme: +8 steps clamp to code 15 (q4_0 too).
    assert (error <= scale.abs()[..., None] + 1e-6).all()


def test_quantised_model_reads_the_bytes_it_claims():
    model = make_model()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    assert quant.weight_bytes_read_per_step(model) == 4 * (linear + norms)  # tied head read once
    int8 = quant.quantize_model(copy.deepcopy(model), "int8")
    assert not any(type(m) is OpenELMLinear for m in int8.modules())
    rows = sum(m.out_features for m in int8.modules() if isinstance(m, quant.QuantizedLinear))
    embedding_row = 4 * model.config.model_dim  # the head is int8 now; one fp32 row is looked up
    assert quant.weight_bytes_read_per_step(int8) == linear + 4 * rows + 4 * norms + embedding_row


def test_loader_quantises_at_load(tmp_path):
    from elmforge.modeldir.loading import load_model

    make_model().save_pretrained(tmp_path)
    model = load_model(tmp_path, device="cpu", dtype="int4")
    assert model.quantization == "int4"
    heads = [m for m in model.modules() if isinstance(m, quant.QuantizedLinear)]
    assert heads and all(m.bits == 4 for m in heads)


def test_the_kernel_build_finds_the_ninja_installed_beside_python(tmp_path, monkeypatch) -> None:
    # `.venv/bin/elmforge` runs without an activated venv: the `ninja` dependency's binary is
    # beside the interpreter, not on PATH, and torch's build looks only on PATH.
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "ninja").exists():
        pytest.skip(f"the ninja dependency is not installed in {scripts}")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ninja") is None
    cpu_kernels._put_ninja_on_path()
    assert Path(shutil.which("ninja")).parent == scripts
