"""Weights that load but are wrong: non-finite or absurd values, another architecture, a
tokenizer larger than the embedding."""

from __future__ import annotations

import json

import pytest
import torch

from elmforge.errors import CheckpointError
from elmforge.model.integrity import (
    MAX_WEIGHT_MAGNITUDE,
    check_finite,
    check_tensor_names,
    check_tokenizer_fits,
    read_openelm_config,
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "1 NaN or infinite"),
        (float("-inf"), "1 NaN or infinite"),
        (3.0e38, r"a value of 3(\.\d+)?e\+38"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_or_absurd_weights_are_refused(value, message, dtype) -> None:
    good = torch.randn(4, 4, dtype=dtype)
    bad = good.clone()
    bad[1, 2] = value
    check_finite({"a": good, "ids": torch.arange(3)}, "m")
    with pytest.raises(CheckpointError, match=rf"^m: tensor b holds {message}"):
        check_finite({"a": good, "b": bad}, "m")


def test_the_magnitude_limit_is_far_beyond_trained_weights() -> None:
    check_finite({"a": torch.tensor([MAX_WEIGHT_MAGNITUDE, -1e4])}, "m")
    with pytest.raises(CheckpointError):
        check_finite({"a": torch.tensor([MAX_WEIGHT_MAGNITUDE * 10])}, "m")


def test_another_architecture_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type is 'llama', not 'openelm'"):
        read_openelm_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(CheckpointError, match="model_type is missing"):
        read_openelm_config(tmp_path / "config.json")


def test_missing_tensors_are_named() -> None:
    check_tensor_names(["a", "b"], ["b", "a", "c"], "m")
    with pytest.raises(CheckpointError, match="^m: no tensor a and 1 more$"):
        check_tensor_names(["a", "b", "c"], ["c"], "m")


def test_a_tokenizer_larger_than_the_embedding_is_refused() -> None:
    model = torch.nn.Module()
    model.get_input_embeddings = lambda: torch.nn.Embedding(10, 2)

    class Tokenizer:
        name_or_path = "tok"

        def __init__(self, size: int) -> None:
            self.size = size

        def __len__(self) -> int:
            return self.size

    check_tokenizer_fits(Tokenizer(10), model, "m")
    with pytest.raises(CheckpointError, match="^tok: 11 tokens, more than the 10 embedding rows"):
        check_tokenizer_fits(Tokenizer(11), model, "m")
