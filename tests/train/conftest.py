"""Fixtures of the training tests: a small BPE tokenizer trained on the built-in corpus."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 384-token byte-level BPE tokenizer (fits the micro shape's 512 rows), trained once."""
    from elmforge.data.sources import iter_texts
    from elmforge.data.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    texts = itertools.islice(iter_texts({"name": "builtin:python-docs"}, "train"), 40)
    train_bpe_tokenizer(texts, 384, out)
    return out
