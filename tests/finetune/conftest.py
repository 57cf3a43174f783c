"""Fixtures of the fine-tuning tests: a tiny BPE tokenizer, a micro OpenELM saved as a model
directory, and writers for the data formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_model_dir

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "leaf", "sky", "sun", "coal", "snow", "carrot", "plum"]


def instruction_rows() -> list[dict[str, str]]:
    """A tiny instruction set a micro model can learn: the colour of eight things."""
    return [
        {
            "instruction": f"What colour is the {thing}?",
            "input": "",
            "output": f"The {thing} is {colour}.",
        }
        for thing, colour in zip(THINGS, COLOURS)
    ]


def preference_rows() -> list[dict[str, str]]:
    """Pairs over the same facts: the right colour chosen, the next colour rejected."""
    rows = []
    for i, (thing, colour) in enumerate(zip(THINGS, COLOURS)):
        wrong = COLOURS[(i + 3) % len(COLOURS)]
        rows.append(
            {
                "prompt": f"What colour is the {thing}?",
                "chosen": f" The {thing} is {colour}.",
                "rejected": f" The {thing} is {wrong}.",
            }
        )
    return rows


def tokenizer_corpus() -> list[str]:
    texts = [f"{r['instruction']} {r['output']}" for r in instruction_rows()]
    texts += [
        "Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request. ### Instruction: ### Response: ### Input:",
        "<|user|> <|assistant|> <|system|> hello there, how are you? fine, thanks.",
    ]
    return texts * 3


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from elmforge.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(tokenizer_corpus(), vocab_size=400, min_frequency=1)


def make_model_dir(directory: Path, tokenizer: Any, seed: int = 0, **shape: Any) -> Path:
    """The micro shape with ``tokenizer``, its vocabulary rounded up to a multiple of 64."""
    vocab = -(-len(tokenizer) // 64) * 64
    return write_model_dir(directory, tokenizer, seed=seed, vocab_size=vocab, **shape)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    """A randomly initialised micro-shape model with the BPE tokenizer, in HF layout."""
    return make_model_dir(tmp_path_factory.mktemp("base") / "micro", bpe_tokenizer)


def write_json(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
