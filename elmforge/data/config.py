"""The ``data:`` section of a run config: sources, tokenizer, filters, sequence layout.

Built and validated by the config kit (:mod:`elmforge.config`); standalone (``data inspect``,
``tokenizer train``) through :func:`load_data_config`. What ``tokenizer`` means lives in
:mod:`elmforge.data.tokenizer_choice`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from elmforge.config import build, read_yaml, to_dict
from elmforge.data.sources import normalize_source
from elmforge.errors import ConfigError

MODES = ("packing", "padding")
# The label of positions no loss counts (padding, prompts): PyTorch's and transformers' convention.
IGNORE_INDEX = -100
# A byte-level BPE vocabulary holds the 256 bytes and the special tokens before any merge.
MIN_BPE_VOCAB = 260
# Far beyond any language model's vocabulary (the largest are ~256k); the Rust BPE trainer aborts
# the process (out of memory, no Python exception) on sizes near 1e9, so bounds are checked first.
MAX_BPE_VOCAB = 1 << 20


@dataclass
class DataConfig:
    """The ``data:`` section of a run config."""

    sources: Any = field(default_factory=lambda: [{"name": "builtin:python-stdlib"}])
    """Sources: ``{file_name, text_key, file_id_range, weight}`` or ``{name: builtin:...|hf:...}``."""
    tokenizer: str | None = None
    """A ``tokenizer.model`` file, a tokenizer directory or a hub name; null: the LLaMA-2 tokenizer
    (--tokenizer, $ELMFORGE_LLAMA2_TOKENIZER or the user cache); ``auto``: LLaMA-2 when it can be
    found, else ``bpe``; ``bpe``: a byte-level BPE of ``bpe_vocab_size`` tokens trained on the
    training sources (kept in the run's ``tokenizer/``)."""
    bpe_vocab_size: int = 8192
    """Vocabulary of the BPE tokenizer trained (on a bounded prefix of the training sources) when
    ``tokenizer`` is ``bpe``, or ``auto`` without the LLaMA-2 tokenizer."""
    min_characters: int = 200
    """Drop a text whose lower-cased, punctuation-free, whitespace-collapsed form is shorter."""
    min_tokens: int = 256
    """Drop a text with fewer tokens (bos/eos not counted)."""
    seq_len: int = 2048
    """Tokens per training sequence (each piece holds seq_len + 1 tokens: inputs and labels)."""
    mode: str = "packing"
    """``packing`` (documents concatenated, no padding) or ``padding`` (one document per row)."""
    seed: int = 0
    """Seed of the shard order, the shuffle blocks and the source mixing (in a run config it
    defaults to the run's ``seed``)."""
    shuffle_buffer: int = 256
    """Rows read, filtered and tokenised together, then emitted in a seeded order (1: none)."""
    max_bad_rows: int = 0
    """Unreadable rows/shards a reader skips (and counts) per pass over a source before failing."""
    chunk_characters: int = 2000
    """Long documents are tokenised in word chunks of about this many characters (faster)."""
    validation_sources: Any = None
    """Sources of the validation split (null: the sources' own validation split, builtin/hf)."""

    def __post_init__(self) -> None:
        self.validate("data")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "data") -> DataConfig:
        """Build from the YAML ``data:`` mapping; unknown keys and bad values raise ConfigError."""
        source, _, key = where.rpartition(": ")
        return build(cls, data, source=source or "config", prefix=f"{key or 'data'}.")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self, where: str = "data") -> None:
        where = where or "data"

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{where}.{name}: {value!r} must be an integer >= {minimum}")

        for name, minimum in (
            ("min_characters", 0),
            ("min_tokens", 0),
            ("seq_len", 1),
            ("seed", 0),
            ("shuffle_buffer", 1),
            ("max_bad_rows", 0),
            ("chunk_characters", 16),
            ("bpe_vocab_size", MIN_BPE_VOCAB),
        ):
            integer(name, minimum)
        if self.bpe_vocab_size > MAX_BPE_VOCAB:
            raise ConfigError(
                f"{where}.bpe_vocab_size: {self.bpe_vocab_size} exceeds the maximum {MAX_BPE_VOCAB}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode: {self.mode!r} must be one of {', '.join(MODES)}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, (str, os.PathLike)):
            raise ConfigError(f"{where}.tokenizer: expected a path, a hub name, auto or bpe")
        if self.tokenizer is not None:
            self.tokenizer = str(self.tokenizer)
            if not self.tokenizer.strip():
                raise ConfigError(f"{where}.tokenizer: empty (use null, auto, bpe or a path)")
        for key in ("sources", "validation_sources"):
            value = getattr(self, key)
            if value is None and key == "validation_sources":
                continue
            if isinstance(value, (str, dict)):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where}.{key}: expected a non-empty list of sources")
            setattr(
                self,
                key,
                [normalize_source(s, f"{where}.{key}[{i}]") for i, s in enumerate(value)],
            )

    def sources_for(self, split: str) -> list[dict[str, Any]]:
        if split == "validation" and self.validation_sources:
            return self.validation_sources
        if split == "validation":
            # Files have no split of their own: validating on them would score training data.
            for i, spec in enumerate(self.sources):
                if "file_name" in normalize_source(spec):
                    raise ConfigError(
                        f"data.sources[{i}]: files have no validation split; set "
                        "data.validation_sources to held-out shards"
                    )
        return self.sources


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """The ``data:`` section of a YAML file (or the whole file if it has no ``data:`` key)."""
    document = read_yaml(path)
    section = document.get("data", document) if "data" in document else document
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{path}: data: expected a mapping")
    return build(DataConfig, section, source=str(path), prefix="data.")
