"""Round trips: save -> load, CoreNet .pt -> HF; bad checkpoints give one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from elmforge.cli.main import main
from elmforge.errors import ElmforgeError
from elmforge.model.convert import (
    corenet_vocab_rows,
    hf_to_corenet_state_dict,
    load_pretrained,
)
from tests.model.helpers import make_model

APPLE_KEYS_LAYER0 = {
    "transformer.layers.0.attn_norm.weight",
    "transformer.layers.0.ffn_norm.weight",
    "transformer.layers.0.attn.qkv_proj.weight",
    "transformer.layers.0.attn.q_norm.weight",
    "transformer.layers.0.attn.k_norm.weight",
    "transformer.layers.0.attn.out_proj.weight",
    "transformer.layers.0.ffn.proj_1.weight",
    "transformer.layers.0.ffn.proj_2.weight",
}


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_save_load_gives_identical_logits_and_apple_key_names(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert APPLE_KEYS_LAYER0 <= keys
    assert {"transformer.token_embeddings.weight", "transformer.norm.weight"} <= keys
    assert not any(k.startswith("lm_head") for k in keys)  # tied: stored once, as Apple does
    loaded = load_pretrained(tmp_path)
    tokens = torch.randint(0, model.config.vocab_size, (2, 13))
    assert torch.equal(logits(loaded, tokens), logits(model, tokens))


def test_untied_head_round_trips(tmp_path):
    model = make_model(share_input_output_layers=False)
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.transformer.token_embeddings.weight
    tokens = torch.randint(0, model.config.vocab_size, (1, 9))
    assert torch.equal(logits(loaded, tokens), logits(model, tokens))


def write_corenet_checkpoint(model, path, wrap: bool = True):
    state = hf_to_corenet_state_dict(model)
    torch.save({"model_state_dict": state, "epoch": 3} if wrap else state, path)
    return state


def test_corenet_checkpoint_converts_to_hf_with_identical_logits(tmp_path):
    model = make_model()
    state = write_corenet_checkpoint(model, tmp_path / "ckpt.pt")
    rows = corenet_vocab_rows(model.config.vocab_size)
    assert state["token_embeddings.weight"].shape[0] == rows > model.config.vocab_size
    assert corenet_vocab_rows(32000) == 32128
    model.config.save_pretrained(tmp_path / "shape")
    out = tmp_path / "hf"
    assert main(["convert", "corenet-to-hf", str(tmp_path / "ckpt.pt"), str(out),
                 "--name", str(tmp_path / "shape")]) == 0  # fmt: skip
    converted = load_pretrained(out)
    assert converted.transformer.token_embeddings.weight.shape[0] == model.config.vocab_size
    tokens = torch.randint(0, model.config.vocab_size, (2, 11))
    assert torch.equal(logits(converted, tokens), logits(model, tokens))
    # ... and back: hf-to-corenet reproduces the CoreNet tensors.
    assert main(["convert", "hf-to-corenet", str(out), str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_corenet_270m_preset_shape_is_accepted(tmp_path):
    # Only the shapes are checked here: build the padded 270M embedding the way CoreNet has it.
    from elmforge import OpenELMConfig
    from elmforge.model.convert import corenet_to_hf_state_dict

    config = OpenELMConfig.from_name("OpenELM-270M")
    state = {"token_embeddings.weight": torch.zeros(32128, 1280)}
    hf = corenet_to_hf_state_dict(state, config)
    assert hf["transformer.token_embeddings.weight"].shape == (32000, 1280)


def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    model = make_model()
    model.config.save_pretrained(tmp_path / "shape")
    shape = str(tmp_path / "shape")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.pt"
    write_corenet_checkpoint(model, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    wrong = tmp_path / "wrong.pt"
    write_corenet_checkpoint(make_model("uniform-2-layers"), wrong)
    cases = [
        ["convert", "corenet-to-hf", str(tmp_path / "missing.pt"), str(tmp_path / "o1"), "--name", shape],
        ["convert", "corenet-to-hf", str(tmp_path / "junk.pt"), str(tmp_path / "o2"), "--name", shape],
        ["convert", "corenet-to-hf", str(truncated), str(tmp_path / "o3"), "--name", shape],
        ["convert", "corenet-to-hf", str(wrong), str(tmp_path / "o4"), "--name", shape],
        ["convert", "hf-to-corenet", str(tmp_path / "nodir"), str(tmp_path / "x.pt")],
    ]  # fmt: skip
    for argv in cases:
        assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(cases)
    assert all(line.startswith("elmforge convert: error:") for line in err)
    assert "missing.pt: no such file" in err[0]
    assert "junk.pt" in err[1] and "truncated.pt" in err[2] and "wrong.pt" in err[3]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # nothing half-written


def test_truncated_or_corrupt_safetensors_is_reported(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ElmforgeError, match="model.safetensors: (corrupt|truncated)"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"model_type": "openelm", "head_dim": 0})
    )
    with pytest.raises(ElmforgeError, match="config.json"):
        load_pretrained(tmp_path / "m")
