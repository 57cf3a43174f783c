"""Builders of the export tests: tiny real tokenizers trained in the test, tiny model directories.

The SentencePiece model is trained with LLaMA-2's settings (BPE, byte fallback, identity
normaliser, digits split, whitespace-only pieces, unk/bos/eos = 0/1/2) on the docstrings of a few
standard-library modules, so it has every piece type llama.cpp distinguishes (unknown, control,
byte, normal) without needing ../shared.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import torch

from elmforge import OpenELMForCausalLM
from tests.model.helpers import make_config

SP_VOCAB = 384
# Strings that exercise the tokenizers: runs of spaces, tabs, newlines, digits, non-ASCII.
PROBE_TEXTS = [
    "Hello world",
    "with  bobby   and    four",
    "tabs\tand\nnewlines\n\n  indented",
    "numbers 12345 and 3.14159",
    "naïve café, Zürich — 東京 😀",
    " leading space and trailing ",
]


def corpus() -> list[str]:
    """Deterministic training text: docstrings of standard-library modules."""
    import argparse
    import collections
    import csv
    import email
    import json
    import logging
    import os
    import pathlib
    import random
    import re
    import subprocess
    import typing
    import unittest

    modules = (argparse, collections, csv, email, json, logging, os, pathlib, random, re,
               subprocess, typing, unittest)  # fmt: skip
    lines: list[str] = []
    for module in modules:
        lines += [line for line in (inspect.getdoc(module) or "").splitlines() if line.strip()]
    return lines


def train_sentencepiece(path: Path, vocab_size: int = SP_VOCAB) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def make_model(shape: str, vocab_size: int, seed: int = 0, embedding_scale: float = 1.0,
               **overrides) -> OpenELMForCausalLM:  # fmt: skip
    """A random-weight model; norms perturbed so a mixed-up norm cannot pass unnoticed, the
    (tied) embedding scaled to widen the gaps between logits."""
    torch.manual_seed(seed)
    config = make_config(shape, vocab_size=vocab_size, **overrides)
    model = OpenELMForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
        model.transformer.token_embeddings.weight.mul_(embedding_scale)
    model.generation_config.eos_token_id = None  # decode every step
    return model


def make_model_dir(path: Path, tokenizer, shape: str = "scaled-3-layers", vocab_size: int = SP_VOCAB,
                   chat_template: str | None = None, **model_options) -> Path:  # fmt: skip
    """A complete model directory (weights, config, tokenizer files) of a random model."""
    from elmforge.modeldir.complete import complete_model_dir

    model = make_model(shape, vocab_size, **model_options)
    model.save_pretrained(path)
    complete_model_dir(path, tokenizer, chat_template=chat_template)
    return path


def logits(model: OpenELMForCausalLM, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]
