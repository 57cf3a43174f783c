"""Peer equivalence: checkpoints saved by elmforge run in mlx-lm's OpenELM with the same numbers.

mlx-lm (``mlx_lm/models/openelm.py``) is an independent implementation by Apple's MLX team; it
reads the HF layout. Tolerance: fp32 logits agree to a relative error under 1e-4 (measured
around 1e-6), and greedy decoding agrees token for token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model.helpers import SHAPES, greedy_without_cache, make_model

mx = pytest.importorskip(
    "mlx.core", reason="mlx[cpu] is a test dependency (pip install 'mlx[cpu]')"
)
mlx_utils = pytest.importorskip("mlx_lm.utils")
mlx_cache = pytest.importorskip("mlx_lm.models.cache")

REL_TOL = 1e-4


def load_in_mlx(model, tmp_path: Path):
    model.save_pretrained(tmp_path)
    mlx_model, _ = mlx_utils.load_model(tmp_path)
    return mlx_model


def relative_error(ours: torch.Tensor, theirs: np.ndarray) -> float:
    ours = ours.numpy()
    return float(np.abs(ours - theirs).max() / np.abs(ours).max())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_match_mlx_lm(shape, tmp_path):
    model = make_model(shape)
    mlx_model = load_in_mlx(model, tmp_path)
    for batch, length in [(1, 1), (2, 17), (1, 40)]:
        tokens = torch.randint(0, model.config.vocab_size, (batch, length))
        with torch.no_grad():
            ours = model(tokens).logits
        theirs = np.array(mlx_model(mx.array(tokens.numpy())).astype(mx.float32))
        assert relative_error(ours, theirs) < REL_TOL, (shape, batch, length)


@pytest.mark.parametrize("shape", ["scaled-3-layers", "uniform-2-layers"])
def test_greedy_kv_cache_decoding_matches_mlx_lm_and_no_cache(shape, tmp_path):
    model = make_model(shape)
    mlx_model = load_in_mlx(model, tmp_path)
    prompt = torch.randint(0, model.config.vocab_size, (1, 9))
    steps = 20

    ours = model.generate(prompt, max_new_tokens=steps, do_sample=False)
    assert torch.equal(ours, greedy_without_cache(model, prompt, steps))

    cache = mlx_cache.make_prompt_cache(mlx_model)
    logits = mlx_model(mx.array(prompt.numpy()), cache=cache)
    theirs = prompt[0].tolist()
    for _ in range(steps):
        token = int(mx.argmax(logits[0, -1]).item())
        theirs.append(token)
        logits = mlx_model(mx.array([[token]]), cache=cache)
    assert ours[0].tolist() == theirs
