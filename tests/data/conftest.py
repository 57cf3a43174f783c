"""Fixtures of the data-pipeline tests: a small real BPE tokenizer and shard writers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORDS = [
    *[
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "omicron",
    ],
    *[
        "pi",
        "rho",
        "sigma",
        "tau",
        "upsilon",
        "phi",
        "chi",
        "psi",
        "omega",
        "river",
        "stone",
        "cloud",
        "forest",
        "ember",
        "quartz",
    ],
    "violet",
]


def document(index: int, words: int = 40) -> str:
    """A unique, deterministic document that starts with its own id."""
    body = " ".join(WORDS[(index * 7 + i * 3) % len(WORDS)] for i in range(words))
    return f"document {index} says {body}."


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from elmforge.data.tokenizer import train_bpe_tokenizer

    texts = [document(i) for i in range(50)] + ["é è ü ñ 中文 🙂 \t\n  0123456789"]
    return train_bpe_tokenizer(texts, vocab_size=400, min_frequency=1)


def write_jsonl(path: Path, texts: list[str], key: str = "text", gz: bool = False) -> Path:
    lines = "".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def write_parquet(path: Path, texts: list[str], key: str = "text", row_group_size: int = 4) -> Path:
    pq.write_table(pa.table({key: texts}), path, row_group_size=row_group_size)
    return path


def data_config(sources, **overrides):
    from elmforge.data.config import DataConfig

    settings = {"sources": sources, "min_characters": 0, "min_tokens": 0, "seq_len": 32}
    return DataConfig.from_dict({**settings, **overrides})
