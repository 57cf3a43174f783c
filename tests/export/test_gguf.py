"""GGUF export and import: the file holds what llama.cpp's own converter would write, and reading
it back gives the original weights and logits.

The expectations below are data taken from llama.cpp's source (ggml-org/llama.cpp):
- ``conversion/openelm.py`` @ 7bca1fd9ca2a (class OpenELMModel): the ``openelm.*`` keys of
  ``set_gguf_parameters`` (FFN widths per layer by ``_make_divisible(multiplier * model_dim,
  ffn_dim_divisor)``, head counts per layer, rope base, eps 1e-6, rope dimension = key length =
  value length = head_dim) and ``modify_tensors`` (``proj_1`` split: first ffn_dim rows = gate);
- ``conversion/base.py`` @ 00bd27a621f9: ``prepare_tensors`` (1-D and ``*_norm.weight`` tensors
  F32, the rest the file type, q8_0 falling back to F16 when a row is not a multiple of 32),
  ``prepare_metadata`` (``general.type`` model, ``general.name``, ``general.size_label``,
  ``general.file_type``, ``general.quantization_version`` 2), ``_set_vocab_sentencepiece`` /
  ``_create_vocab_sentencepiece`` (model ``llama``, pre ``default``, pieces/scores/types from the
  SentencePiece processor);
- ``src/models/openelm.cpp`` @ c3c27a71b7a5 (``load_arch_tensors``): the tensor names and ggml
  shapes the runtime loads (``output`` is ``token_embd`` itself: no output tensor).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elmforge.errors import ElmforgeError
from elmforge.export.gguf import hf_to_gguf
from elmforge.export.gguf_read import gguf_to_hf
from elmforge.model.convert import load_pretrained
from tests.export.helpers import SP_VOCAB, logits, make_model_dir

gguf = pytest.importorskip("gguf")

F32, F16, BF16, Q8_0 = "F32", "F16", "BF16", "Q8_0"
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}  # gguf.LlamaFileType
WEIGHT_TYPES = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0}


def make_divisible(value: float, divisor: int) -> int:
    """The converter's ``_make_divisible`` (Apple's configuration_openelm.py rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def expected_keys(config: dict, out_type: str) -> dict[str, object]:
    ffn = [make_divisible(m * config["model_dim"], config["ffn_dim_divisor"])
           for m in config["ffn_multipliers"]]  # fmt: skip
    return {
        "general.architecture": "openelm",
        "general.type": "model",
        "general.file_type": FILE_TYPES[out_type],
        "general.quantization_version": 2,
        "openelm.block_count": config["num_transformer_layers"],
        "openelm.context_length": config["max_context_length"],
        "openelm.embedding_length": config["model_dim"],
        "openelm.feed_forward_length": ffn,
        "openelm.attention.head_count": config["num_query_heads"],
        "openelm.attention.head_count_kv": config["num_kv_heads"],
        "openelm.rope.freq_base": float(config["rope_freq_constant"]),
        "openelm.attention.layer_norm_rms_epsilon": pytest.approx(1e-6),
        "openelm.rope.dimension_count": config["head_dim"],
        "openelm.attention.key_length": config["head_dim"],
        "openelm.attention.value_length": config["head_dim"],
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


# Present with a value the test does not pin (names from gguf's metadata heuristics).
OTHER_KEYS = {"general.name", "general.size_label", "tokenizer.ggml.tokens",
              "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}  # fmt: skip


def expected_tensors(config: dict, out_type: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (ggml shape, ne0 first; GGML type)."""
    d, hd, vocab = config["model_dim"], config["head_dim"], config["vocab_size"]
    weight = WEIGHT_TYPES[out_type]

    def matrix(shape: tuple[int, int]) -> tuple[tuple[int, int], str]:
        fallback = weight == Q8_0 and shape[0] % 32 != 0
        return shape, F16 if fallback else weight

    tensors = {"token_embd.weight": matrix((d, vocab)), "output_norm.weight": ((d,), F32)}
    ffn = expected_keys(config, out_type)["openelm.feed_forward_length"]
    for i in range(config["num_transformer_layers"]):
        q, kv, ff = config["num_query_heads"][i], config["num_kv_heads"][i], ffn[i]
        tensors |= {
            f"blk.{i}.attn_norm.weight": ((d,), F32),
            f"blk.{i}.attn_qkv.weight": matrix((d, (q + 2 * kv) * hd)),
            f"blk.{i}.attn_q_norm.weight": ((hd,), F32),
            f"blk.{i}.attn_k_norm.weight": ((hd,), F32),
            f"blk.{i}.attn_output.weight": matrix((q * hd, d)),
            f"blk.{i}.ffn_norm.weight": ((d,), F32),
            f"blk.{i}.ffn_gate.weight": matrix((d, ff)),
            f"blk.{i}.ffn_down.weight": matrix((ff, d)),
            f"blk.{i}.ffn_up.weight": matrix((d, ff)),
        }
    return tensors


def read_fields(path: Path) -> tuple[dict[str, object], object]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, reader


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16", "q8_0"])
def test_keys_tensors_and_vocabulary_are_llama_cpp_s(out_type, sp_model, tmp_path):
    # ffn_dim_divisor 16 gives FFN widths that are not multiples of 32 (q8_0 falls back to F16).
    model_dir = make_model_dir(tmp_path / "m", sp_model, ffn_dim_divisor=16)
    config = json.loads((model_dir / "config.json").read_text())
    out = hf_to_gguf(model_dir, tmp_path / "m.gguf", out_type)
    fields, reader = read_fields(out)

    expected = expected_keys(config, out_type)
    assert set(fields) == set(expected) | OTHER_KEYS | {"tokenizer.ggml.add_eos_token",
                                                        "tokenizer.ggml.add_sep_token"}  # fmt: skip
    for key, value in expected.items():
        assert fields[key] == value, key
    tensors = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in reader.tensors}
    assert tensors == expected_tensors(config, out_type)
    if out_type == "q8_0":
        assert F16 in {kind for _, kind in tensors.values()}  # the fallback was exercised

    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(sp_model))
    pieces = range(processor.vocab_size())
    assert fields["tokenizer.ggml.tokens"] == [processor.IdToPiece(i) for i in pieces]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([processor.GetScore(i) for i in pieces])
    types = [2 if processor.IsUnknown(i) else 3 if processor.IsControl(i) else
             6 if processor.IsByte(i) else 1 for i in pieces]  # fmt: skip
    assert fields["tokenizer.ggml.token_type"] == types
    assert {2, 3, 6, 1} <= set(types)


def test_vocabulary_is_padded_to_the_model_vocab_size(sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, vocab_size=SP_VOCAB + 5)
    fields, _ = read_fields(hf_to_gguf(model_dir, tmp_path / "m.gguf"))
    assert fields["tokenizer.ggml.tokens"][-5:] == [
        f"[PAD{i}]" for i in range(SP_VOCAB, SP_VOCAB + 5)
    ]
    assert fields["tokenizer.ggml.token_type"][-5:] == [5] * 5  # UNUSED


def test_f32_round_trip_is_exact_and_f16_within_fp16_rounding(sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape="scaled-4-layers-gqa2")
    original = load_pretrained(model_dir)
    tokens = list(range(1, 40))
    reference = logits(original, tokens)
    state = original.state_dict()
    for out_type in ("f32", "f16", "bf16"):
        back = gguf_to_hf(hf_to_gguf(model_dir, tmp_path / f"{out_type}.gguf", out_type),
                          tmp_path / f"back-{out_type}")  # fmt: skip
        restored = load_pretrained(back)
        for key, value in restored.state_dict().items():
            if out_type == "f32" or value.dim() == 1:  # norms stay F32 in every file type
                assert torch.equal(value, state[key]), key
            else:
                rounded = state[key].to(torch.float16 if out_type == "f16" else torch.bfloat16)
                assert torch.equal(value, rounded.float()), key
        if out_type == "f32":
            assert torch.equal(logits(restored, tokens), reference)
        else:
            # Weights are exactly the rounded ones (above); logits move by the rounding: fp16
            # keeps 11 significant bits (measured 0.1%), bf16 8 (measured 1.3%).
            error = (logits(restored, tokens) - reference).abs().max() / reference.abs().max()
            assert error < (2e-3 if out_type == "f16" else 3e-2), (out_type, float(error))
        assert (back / "tokenizer.json").is_file() and (back / "tokenizer.model").is_file()


# q8_0: blocks of 32 weights share one fp16 scale (int8 values, step = block max / 127). On these
# random models, over 4 shapes x 3 seeds, the logits' relative L2 error was 1.7%-3.2% and the
# largest error 1.9%-4.4% of the largest logit (bf16 files: about 1.3%).
Q8_0_MAX_RELATIVE_L2_ERROR = 0.05
Q8_0_MAX_RELATIVE_ERROR = 0.06


@pytest.mark.parametrize("shape", ["scaled-4-layers-gqa2", "scaled-1-layer"])
def test_q8_0_logits_within_tolerance_of_fp32(shape, sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape=shape)
    back = gguf_to_hf(hf_to_gguf(model_dir, tmp_path / "q.gguf", "q8_0"), tmp_path / "back")
    tokens = list(range(1, 60))
    reference = logits(load_pretrained(model_dir), tokens)
    quantized = logits(load_pretrained(back), tokens)
    l2 = float((quantized - reference).norm() / reference.norm())
    largest = float((quantized - reference).abs().max() / reference.abs().max())
    assert 0 < l2 < Q8_0_MAX_RELATIVE_L2_ERROR and largest < Q8_0_MAX_RELATIVE_ERROR
    # The dequantised weights are exactly what gguf's Q8_0 reference decoder gives.
    weight = load_pretrained(model_dir).state_dict()["transformer.layers.0.attn.out_proj.weight"]
    blocks = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
    restored = load_pretrained(back).state_dict()["transformer.layers.0.attn.out_proj.weight"]
    assert np.array_equal(restored.numpy(), decoded)


def test_preset_shapes_get_apple_s_config_back(sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape="uniform-2-layers")
    tiny = tmp_path / "tiny"
    from elmforge import OpenELMConfig, OpenELMForCausalLM
    from elmforge.modeldir.complete import complete_model_dir

    OpenELMForCausalLM(
        OpenELMConfig.from_name("OpenELM-tiny", vocab_size=SP_VOCAB)
    ).save_pretrained(tiny)
    complete_model_dir(tiny, sp_model)
    for source in (tiny, model_dir):
        back = gguf_to_hf(
            hf_to_gguf(source, tmp_path / f"{source.name}.gguf"), tmp_path / f"{source.name}-back"
        )
        before = json.loads((source / "config.json").read_text())
        after = json.loads((back / "config.json").read_text())
        for key in ("num_query_heads", "num_kv_heads", "model_dim", "head_dim", "vocab_size",
                    "num_transformer_layers", "max_context_length", "rope_freq_constant"):  # fmt: skip
            assert after[key] == before[key], key
        restored = OpenELMConfig.from_pretrained(back)
        assert restored.ffn_dims() == OpenELMConfig.from_pretrained(source).ffn_dims()
    # The preset is recognised: the multipliers are Apple's (min, max) pairs, not per-layer lists.
    after = json.loads((tmp_path / "tiny-back" / "config.json").read_text())
    assert after["qkv_multipliers"] == [0.5, 1.0] and after["ffn_dim_divisor"] == 64


def test_untied_head_is_refused(sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, share_input_output_layers=False)
    with pytest.raises(ElmforgeError, match="untied output head"):
        hf_to_gguf(model_dir, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_run_and_checkpoint_directories_name_their_model(sp_model, tmp_path):
    run = tmp_path / "my-run"
    make_model_dir(run / "final", sp_model)
    make_model_dir(run / "checkpoints" / "step-00000004" / "model", sp_model, seed=1)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "metrics.jsonl").write_text("")
    fields, _ = read_fields(hf_to_gguf(run, tmp_path / "run.gguf"))
    assert fields["general.name"] == "my-run"
    step = run / "checkpoints" / "step-00000004"
    back = gguf_to_hf(hf_to_gguf(step, tmp_path / "step.gguf"), tmp_path / "step-back")
    original = load_pretrained(step / "model").state_dict()
    assert all(torch.equal(v, original[k]) for k, v in load_pretrained(back).state_dict().items())


def test_interrupted_write_leaves_nothing(sp_model, tmp_path, monkeypatch):
    model_dir = make_model_dir(tmp_path / "m", sp_model)
    calls = []

    def fail_third(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")  # ENOSPC mid-file
        return original(self, tensor, *args, **kwargs)

    original = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fail_third)
    with pytest.raises(ElmforgeError, match="disk is full"):
        hf_to_gguf(model_dir, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_byte_level_bpe_round_trips(bpe_tokenizer_dir, tmp_path):
    from elmforge.data.tokenizer import load_tokenizer
    from tests.export.helpers import PROBE_TEXTS

    model_dir = make_model_dir(tmp_path / "m", bpe_tokenizer_dir)
    out = hf_to_gguf(model_dir, tmp_path / "m.gguf")
    fields, _ = read_fields(out)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.merges"]
    back = gguf_to_hf(out, tmp_path / "back")
    ours, rebuilt = load_tokenizer(model_dir), load_tokenizer(back)
    for text in PROBE_TEXTS:
        assert rebuilt(text).input_ids == ours(text).input_ids, text


def piqa_texts(shared_dir: Path) -> list[str]:
    path = shared_dir / "data" / "eval" / "piqa" / "validation.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    texts = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        texts += [row["goal"], row["sol1"], row["sol2"], f"{row['goal']}  {row['sol1']}"]
    return texts


@pytest.fixture(scope="module")
def llama2_gguf(llama2_tokenizer_path, tmp_path_factory) -> Path:
    """A micro model with LLaMA-2's vocabulary, as GGUF."""
    root = tmp_path_factory.mktemp("llama2")
    model_dir = make_model_dir(root / "m", llama2_tokenizer_path, shape="uniform-2-layers",
                               vocab_size=32000)  # fmt: skip
    return hf_to_gguf(model_dir, root / "m.gguf", "f16")


@pytest.mark.slow
def test_llama2_vocabulary_round_trips_exactly(llama2_gguf, llama2_tokenizer_path, shared_dir,
                                               tmp_path):  # fmt: skip
    import sentencepiece as spm

    fields, _ = read_fields(llama2_gguf)
    original = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    assert len(fields["tokenizer.ggml.tokens"]) == original.vocab_size() == 32000
    assert fields["tokenizer.ggml.scores"][259] == original.GetScore(259) == -1e9  # "▁▁"
    back = gguf_to_hf(llama2_gguf, tmp_path / "back")
    rebuilt = spm.SentencePieceProcessor(model_file=str(back / "tokenizer.model"))
    from elmforge.data.tokenizer import load_tokenizer
    from tests.export.helpers import PROBE_TEXTS

    fast = load_tokenizer(back)
    texts = [*PROBE_TEXTS, *piqa_texts(shared_dir)]
    expected = [original.encode(t) for t in texts]
    assert [rebuilt.encode(t) for t in texts] == expected
    assert fast(texts, add_special_tokens=False).input_ids == expected


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps")
def test_reading_a_gguf_releases_its_memory_map(sp_model, tmp_path):
    """GGUFReader has no close(): the reader's arrays are dropped on the way out, so the file is
    unmapped even while an error's traceback still holds the reader."""
    path = hf_to_gguf(make_model_dir(tmp_path / "m", sp_model), tmp_path / "m.gguf")

    def mapped() -> bool:
        return str(path) in Path("/proc/self/maps").read_text()

    gguf_to_hf(path, tmp_path / "back")
    assert not mapped()
    with pytest.raises(ElmforgeError, match="force replaces it") as caught:
        gguf_to_hf(path, tmp_path / "back")  # refused while the file is open
    assert caught.traceback and not mapped()


def test_a_full_disk_keeps_the_previous_output(sp_model, tmp_path, monkeypatch):
    """--force over an earlier GGUF on a full disk: one line, and the earlier file intact."""
    model_dir = make_model_dir(tmp_path / "m", sp_model)
    out = hf_to_gguf(model_dir, tmp_path / "out.gguf")
    before = out.read_bytes()

    def full(self, tensor, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(ElmforgeError, match="out.gguf: the disk is full"):
        hf_to_gguf(model_dir, out, force=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out.gguf"]
