"""MLX export on mlx-lm's own converter: ``mlx_lm.load`` of our output gives elmforge's logits
(fp32: relative error under 1e-4, as in tests/model/test_peer_mlx.py), finds the tokenizer and
the chat template beside the weights, and the 4-bit output loads and generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from elmforge.data.chat import APPLE_CHAT_TEMPLATE, render_chat
from elmforge.export.mlx import hf_to_mlx
from elmforge.model.convert import load_pretrained
from tests.export.helpers import PROBE_TEXTS, make_model_dir

mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is a test dependency")
mlx_lm = pytest.importorskip("mlx_lm")

REL_TOL = 1e-4


def test_fp32_logits_tokenizer_and_template_match(sp_model, tmp_path):
    from elmforge.data.tokenizer import load_tokenizer

    model_dir = make_model_dir(tmp_path / "OpenELM-test-Instruct", sp_model,
                               shape="scaled-4-layers-gqa2")  # fmt: skip
    out = hf_to_mlx(model_dir, tmp_path / "mlx")
    mlx_model, mlx_tokenizer = mlx_lm.load(str(out))
    ours = load_pretrained(model_dir)
    tokens = torch.randint(0, ours.config.vocab_size, (2, 23))
    with torch.no_grad():
        expected = ours(tokens).logits.numpy()
    theirs = np.array(mlx_model(mx.array(tokens.numpy())).astype(mx.float32))
    assert np.abs(expected - theirs).max() / np.abs(expected).max() < REL_TOL

    tokenizer = load_tokenizer(model_dir)
    for text in PROBE_TEXTS:
        assert mlx_tokenizer.encode(text) == tokenizer(text).input_ids, text
    messages = [{"role": "user", "content": "Hello?"}]
    assert mlx_tokenizer.chat_template == APPLE_CHAT_TEMPLATE
    rendered = mlx_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)  # fmt: skip
    assert rendered == render_chat(messages, add_generation_prompt=True)
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["add_bos_token"] is True and settings["chat_template"] == APPLE_CHAT_TEMPLATE
    assert (out / "tokenizer.model").is_file() and (out / "generation_config.json").is_file()


def test_4_bit_output_loads_and_generates(sp_model, tmp_path):
    model_dir = make_model_dir(tmp_path / "m", sp_model, shape="scaled-4-layers-gqa2")
    out = hf_to_mlx(model_dir, tmp_path / "mlx4", quantize=4, group_size=32)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size < 0.35 * (model_dir / "model.safetensors").stat().st_size
    model, tokenizer = mlx_lm.load(str(out))
    text = mlx_lm.generate(model, tokenizer, prompt="The module", max_tokens=8, verbose=False)
    assert isinstance(text, str) and text


def test_whatever_mlx_lm_raises_is_one_line_naming_the_model(sp_model, tmp_path, capsys):
    """A config.json mlx-lm cannot build a model from (it raises TypeError, which used to escape
    as a traceback): one line naming the directory; nothing written, the input unchanged."""
    from elmforge.cli.main import main
    from tests.cli_support import tree_snapshot

    model_dir = make_model_dir(tmp_path / "m", sp_model)
    config = json.loads((model_dir / "config.json").read_text())
    del config["head_dim"]  # elmforge's own checks do not read it; mlx-lm's ModelArgs needs it
    (model_dir / "config.json").write_text(json.dumps(config))
    before = tree_snapshot(tmp_path)
    capsys.readouterr()
    assert main(["convert", "hf-to-mlx", str(model_dir), str(tmp_path / "mlx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(model_dir) in err and "mlx-lm could not convert it (TypeError" in err
    assert tree_snapshot(tmp_path) == before
