"""Fixtures of the export tests: the tiny tokenizers, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export.helpers import SP_VOCAB, corpus, train_sentencepiece


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece BPE ``tokenizer.model`` with LLaMA-2's settings, SP_VOCAB pieces."""
    return train_sentencepiece(tmp_path_factory.mktemp("sentencepiece") / "tiny.model")


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer as ``elmforge pretrain`` trains one without LLaMA-2's model."""
    from elmforge.data.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(corpus(), SP_VOCAB, out)
    return out
