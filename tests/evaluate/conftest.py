"""Fixtures for tests/evaluate: task files, a trained tokenizer, tiny OpenELM models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_model_dir
from tests.evaluate.eval_helpers import corpus_strings, train_tokenizer, write_task_dir
from tests.shapes import micro_config


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_datasets"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    return write_task_dir(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="session")
def tokenizer(task_dir):
    return train_tokenizer(corpus_strings(task_dir))


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from elmforge import OpenELMForCausalLM

    torch.manual_seed(0)
    config = micro_config(vocab_size=512, max_context_length=256)
    return OpenELMForCausalLM(config).eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """``tiny_model`` on disk (the same seed and shape)."""
    return write_model_dir(
        tmp_path_factory.mktemp("model"), tokenizer, vocab_size=512, max_context_length=256
    )
