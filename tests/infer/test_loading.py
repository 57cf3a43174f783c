"""The one model loader every verb uses: dtype/device rules, other architectures, hub names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from elmforge import OpenELMForCausalLM
from elmforge.data.tokenizer import train_bpe_tokenizer
from elmforge.errors import CheckpointError, ElmforgeError
from elmforge.modeldir.loading import load
from elmforge.runtime import resolve_dtype
from tests.shapes import micro_config

CORPUS = [f"value_{i} = compute({i}, {i * 3})\n" for i in range(200)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(CORPUS, vocab_size=300, out_dir=directory)
    return directory


def test_dtype_spellings_and_auto() -> None:
    assert resolve_dtype("fp32", "cpu") is resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    # From Python the message names the parameter; the command line names the flag.
    with pytest.raises(ElmforgeError, match="^dtype fp8: expected one of auto, fp32") as caught:
        resolve_dtype("fp8", "cpu")
    assert caught.value.for_command_line().startswith("--dtype fp8: expected one of auto, fp32")


def test_openelm_dir_with_a_separate_tokenizer_keeps_its_weights(tmp_path, tokenizer_dir) -> None:
    config = micro_config(vocab_size=300)
    model = OpenELMForCausalLM(config)
    model.save_pretrained(tmp_path)
    result = load(tmp_path, tokenizer=tokenizer_dir, device="cpu", dtype="bf16")
    loaded, tokenizer = result.model, result.tokenizer
    assert isinstance(loaded, OpenELMForCausalLM) and not loaded.training
    assert len(tokenizer) == 300
    embedding = loaded.transformer.token_embeddings.weight
    assert embedding.dtype == torch.bfloat16
    assert torch.equal(embedding, model.transformer.token_embeddings.weight.to(torch.bfloat16))


def test_another_architecture_loads_through_the_auto_classes(tmp_path, tokenizer_dir) -> None:
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    train_bpe_tokenizer(CORPUS, vocab_size=300, out_dir=tmp_path)
    loaded = load(tmp_path, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    assert isinstance(model, LlamaForCausalLM) and len(tokenizer) == 300


def test_bad_paths_and_offline_hub_names_are_one_line_errors(tmp_path, tokenizer_dir) -> None:
    with pytest.raises(CheckpointError, match="no such model directory"):
        load(tmp_path / "missing", tokenizer=tokenizer_dir)
    with pytest.raises(CheckpointError, match="no config.json"):
        load(tmp_path, tokenizer=tokenizer_dir)
    # Tests run with HF_HUB_OFFLINE=1: a hub name that is not cached cannot load.
    # It fails at once, saying so (no hub retries).
    cached = "elmforge-no-such-org/no-such-model: no such model directory, and not in the local"
    with pytest.raises(CheckpointError, match=cached):
        load("elmforge-no-such-org/no-such-model", tokenizer=tokenizer_dir, device="cpu")


def test_llama2_vocabulary_without_tokenizer_files_gets_llama2(tmp_path, llama2_tokenizer_path):
    from elmforge.data.tokenizer import default_tokenizer_path
    from elmforge.modeldir.loading import find_tokenizer

    config = micro_config(vocab_size=32000)
    OpenELMForCausalLM(config).save_pretrained(tmp_path / "apple-like")
    assert find_tokenizer(tmp_path / "apple-like") == default_tokenizer_path()
    OpenELMForCausalLM(micro_config()).save_pretrained(tmp_path / "other")
    with pytest.raises(ElmforgeError, match="has no tokenizer"):
        find_tokenizer(tmp_path / "other")


def test_a_training_checkpoint_loads_like_its_model_directory(tmp_path, tokenizer_dir) -> None:
    checkpoint = tmp_path / "checkpoints" / "step-00000004"
    model = OpenELMForCausalLM(micro_config(vocab_size=300))
    model.save_pretrained(checkpoint / "model")
    loaded = load(checkpoint, tokenizer=tokenizer_dir, device="cpu")
    assert loaded.directory == checkpoint / "model"
    assert loaded.tokenizer_source == str(tokenizer_dir)
    assert loaded.context_length == model.config.max_context_length
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_a_model_argument_names_the_same_directory_for_every_verb(tmp_path, tokenizer_dir):
    """One resolver (elmforge.layout): a run directory names its final/ here as in export
    (generate and evaluate used to refuse it), and a file or an unfinished run is refused with
    export's message."""
    from elmforge.export.gguf import hf_to_gguf
    from elmforge.export.prepare import prepare_model_dir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    for path, message in [(run, "no finished model"), (weights, "is a file, not a model dir")]:
        with pytest.raises(CheckpointError, match=message):
            load(path, tokenizer=tokenizer_dir, device="cpu")
        with pytest.raises(CheckpointError, match=message):
            prepare_model_dir(path)
        with pytest.raises(CheckpointError, match=message):
            hf_to_gguf(path, tmp_path / "x.gguf")
    model = OpenELMForCausalLM(micro_config(vocab_size=300))
    model.save_pretrained(run / "final")
    loaded = load(run, tokenizer=tokenizer_dir, device="cpu")
    assert loaded.directory == run / "final"
    assert torch.equal(
        loaded.model.transformer.token_embeddings.weight,
        model.transformer.token_embeddings.weight,
    )
