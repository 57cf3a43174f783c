"""int8/int4 models load tensor by tensor (no float32 model first, issue 19) and hold exactly what
quantising the loaded float model gives."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from elmforge import OpenELMForCausalLM
from elmforge.errors import CheckpointError
from elmforge.model.convert import load_pretrained
from elmforge.model.quant import QuantizedLinear, quantize_model
from elmforge.model.quant_load import ROW_BLOCK, load_quantized_pretrained
from elmforge.modeldir.loading import load, load_model
from tests.shapes import micro_config


@pytest.fixture(scope="module", params=[True, False], ids=["tied-head", "own-head"])
def model_dir(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("micro")
    # A vocabulary over one block of rows: the head is quantised in more than one block.
    config = micro_config(share_input_output_layers=request.param, vocab_size=ROW_BLOCK + 100)
    torch.manual_seed(0)
    OpenELMForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_the_same_codes_and_tokens_as_quantising_the_float_model(model_dir, dtype):
    reference = quantize_model(load_pretrained(model_dir), dtype)
    direct = load_model(model_dir, device="cpu", dtype=dtype)
    assert isinstance(direct.lm_head, QuantizedLinear) and direct.quantization == dtype
    expected, got = reference.state_dict(), direct.state_dict()
    assert set(expected) == set(got)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert torch.equal(direct.transformer.rotary.cos, reference.transformer.rotary.cos)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(direct.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_a_missing_tensor_is_refused_not_initialised(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in model_dir.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(model_dir / "model.safetensors")
    tensors.pop("transformer.layers.0.ffn.proj_1.weight")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no tensor transformer.layers.0.ffn.proj_1.weight"):
        load_quantized_pretrained(broken, "int8")


def test_load_with_a_tokenizer_takes_the_same_path(model_dir):
    from tests.export.helpers import train_sentencepiece

    if not (model_dir / "tokenizer.model").exists():
        train_sentencepiece(model_dir / "tokenizer.model")
    loaded = load(model_dir, device="cpu", dtype="int8")
    assert loaded.quantization == "int8" and isinstance(loaded.model.lm_head, QuantizedLinear)
    assert loaded.dtype == torch.float32
