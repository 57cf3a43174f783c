"""Documents -> tokens: NFC, OpenELM's two filters, word-chunked batch tokenisation.

The filters are the paper's (docs/openelm.md, "Pretraining data"): a text is dropped when its
processed form (lower-cased, punctuation removed, whitespace collapsed) has fewer than
``min_characters`` characters, or when it has fewer than ``min_tokens`` tokens.
"""

from __future__ import annotations

import string
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from elmforge.data.config import DataConfig
from elmforge.errors import DataError

_PUNCTUATION = {
    cp: None
    for cp in range(sys.maxunicode + 1)
    if unicodedata.category(chr(cp)).startswith("P") or chr(cp) in string.punctuation
}


def processed_length(text: str) -> int:
    """Length of the processed form the paper filters on: lower-cased, punctuation removed,
    whitespace collapsed."""
    return len(" ".join(text.lower().translate(_PUNCTUATION).split()))


class DocumentProcessor:
    """NFC, the two OpenELM filters, word chunking and batched tokenisation."""

    def __init__(self, tokenizer: Any, config: DataConfig):
        self.config = config
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise DataError("tokenizer: needs a bos and an eos token")
        pad = tokenizer.pad_token_id
        # Pad positions only ever reach the model as inputs after the document's end (causal
        # attention never lets real tokens see them) and their labels are IGNORE_INDEX, so any
        # valid id works; eos keeps it inside the embedding when the tokenizer has no pad.
        self.pad_id = pad if pad is not None and pad < len(tokenizer) else self.eos_id
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        # Chunks split at a space: SentencePiece-style tokenizers re-create the space as the next
        # chunk's word-start marker, byte-level ones need it kept at the chunk's start. Pick
        # whichever reproduces whole-text tokenisation.
        whole = self._encode_one("ab cd")
        self._chunk_keeps_space = self._encode_one("ab") + self._encode_one("cd") != whole

    def _encode_one(self, text: str) -> list[int]:
        # One text without encode_batch: probing must not start the Rust thread pool before
        # DataLoader workers fork (tokenizers would then disable parallelism with a warning).
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _chunks(self, text: str) -> list[str]:
        """Word chunks of about ``chunk_characters`` characters, cut only at a single space
        between two words, which keeps the tokens of the whole text (see ``__init__``)."""
        size = self.config.chunk_characters
        if len(text) <= size:
            return [text]
        chunks, start = [], 0
        skip = 0 if self._chunk_keeps_space else 1
        while len(text) - start > size:
            cut = text.find(" ", start + size)
            while cut != -1 and (
                cut + 1 == len(text) or text[cut - 1].isspace() or text[cut + 1].isspace()
            ):
                cut = text.find(" ", cut + 1)
            if cut == -1:
                break
            chunks.append(text[start:cut])
            start = cut + skip
        chunks.append(text[start:])
        return chunks

    def process(self, texts: Sequence[str]) -> list[np.ndarray | str]:
        """For each text its ``[bos] + tokens + [eos]`` (int32) or the name of the filter that dropped it."""
        results: list[np.ndarray | str] = []
        pending: list[tuple[int, int, int]] = []  # (result index, first chunk, chunk count)
        chunks: list[str] = []
        for text in texts:
            if not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
            if processed_length(text) < self.config.min_characters:
                results.append("dropped_min_characters")
                continue
            parts = self._chunks(text)
            pending.append((len(results), len(chunks), len(parts)))
            chunks.extend(parts)
            results.append("")
        encoded = self._encode(chunks)
        for index, first, count in pending:
            ids = [t for chunk in encoded[first : first + count] for t in chunk]
            if len(ids) < self.config.min_tokens:
                results[index] = "dropped_min_tokens"
                continue
            tokens = np.empty(len(ids) + 2, dtype=np.int32)
            tokens[0], tokens[-1] = self.bos_id, self.eos_id
            tokens[1:-1] = ids
            results[index] = tokens
        return results
