"""Tokenizers <-> GGUF vocabularies.

Two kinds of tokenizer reach GGUF:

- **SentencePiece** (LLaMA-2's, OpenELM's own): GGUF tokenizer model ``llama``, pre-tokenizer
  ``default``, every piece with its score and piece type, read from ``tokenizer.model`` with the
  ``sentencepiece`` library, as llama.cpp's converter does (``conversion/base.py``,
  ``_create_vocab_sentencepiece``: types UNKNOWN / CONTROL / UNUSED / BYTE from the processor,
  NORMAL otherwise; ids beyond the SentencePiece model up to the model's vocab_size are
  ``[PAD<id>]`` pieces, UNUSED, score -10000; extra added tokens are USER_DEFINED, or CONTROL when
  special, score -1000).
- **byte-level BPE** (what ``elmforge pretrain`` trains when LLaMA-2's model is absent):
  tokenizer model ``gpt2``, pre-tokenizer ``gpt-2`` (the GPT-2 split regex our BPE uses), tokens
  and merges from ``tokenizer.json``.

bos/eos/unk/pad ids, add_bos/add_eos and the chat template come from gguf's own
:class:`gguf.SpecialVocab` reading the directory, exactly as llama.cpp's converter does.

Back from GGUF, a ``llama`` vocabulary becomes a ``tokenizer.model`` again (pieces, scores and
types into a SentencePiece ``ModelProto``; the normaliser and splitting settings GGUF does not
store are LLaMA's), and a ``gpt2`` one a byte-level BPE ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmforge.errors import CheckpointError, ElmforgeError, OptionError
from elmforge.layout import SENTENCEPIECE_MODEL, TOKENIZER_JSON

PAD_SCORE = -10000.0  # ids the SentencePiece model does not cover
ADDED_SCORE = -1000.0  # added tokens


@dataclass
class GGUFVocab:
    """What goes under ``tokenizer.ggml.*``."""

    model: str
    pre: str
    tokens: list[bytes] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    merges: list[str] | None = None


def vocab_from_dir(tokenizer_dir: Path, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a complete model directory (``tokenizer.model`` or a byte-level
    BPE ``tokenizer.json``), ``vocab_size`` entries long."""
    if (tokenizer_dir / SENTENCEPIECE_MODEL).is_file():
        return _sentencepiece_vocab(tokenizer_dir, vocab_size)
    spec = _read_tokenizer_json(tokenizer_dir / TOKENIZER_JSON)
    if not is_byte_level_bpe(spec):
        raise OptionError(
            "tokenizer",
            f"{tokenizer_dir}: GGUF needs a SentencePiece tokenizer.model (for its scores) or a "
            f"byte-level BPE tokenizer.json; give {{option}} PATH/tokenizer.model",
        )
    return _byte_level_vocab(tokenizer_dir, spec, vocab_size)


def _read_tokenizer_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ElmforgeError(f"{path.parent}: no tokenizer.json or tokenizer.model") from None
    except (OSError, ValueError) as err:
        raise ElmforgeError(f"{path}: not readable JSON ({err})") from None


def _added_tokens(tokenizer_dir: Path) -> list[dict[str, Any]]:
    path = tokenizer_dir / TOKENIZER_JSON
    if not path.is_file():
        return []
    return list(_read_tokenizer_json(path).get("added_tokens") or [])


def _sentencepiece_vocab(tokenizer_dir: Path, vocab_size: int) -> GGUFVocab:
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    path = tokenizer_dir / SENTENCEPIECE_MODEL
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as err:
        raise ElmforgeError(f"{path}: not a SentencePiece model ({err})") from None
    pieces = processor.vocab_size()
    if pieces > vocab_size:
        raise ElmforgeError(
            f"{path}: {pieces} pieces, more than the model's vocab_size {vocab_size}"
        )
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [PAD_SCORE] * vocab_size
    types = [TokenType.UNUSED] * vocab_size
    for i in range(pieces):
        tokens[i] = processor.IdToPiece(i).encode("utf-8")
        scores[i] = processor.GetScore(i)
        if processor.IsUnknown(i):
            types[i] = TokenType.UNKNOWN
        elif processor.IsControl(i):
            types[i] = TokenType.CONTROL
        elif processor.IsUnused(i):
            types[i] = TokenType.UNUSED
        elif processor.IsByte(i):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL
    for added in _added_tokens(tokenizer_dir):
        index = added.get("id")
        if isinstance(index, int) and pieces <= index < vocab_size:
            content = str(added.get("content", ""))
            special = bool(added.get("special"))
            tokens[index] = (content if special else content.replace("▁", " ")).encode("utf-8")
            types[index] = TokenType.CONTROL if special else TokenType.USER_DEFINED
            scores[index] = ADDED_SCORE
    return GGUFVocab("llama", "default", tokens, types, scores)


def is_byte_level_bpe(spec: dict[str, Any]) -> bool:
    """A BPE ``tokenizer.json`` whose pre-tokenizer is byte-level with GPT-2's split regex."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    normalizer = (spec.get("normalizer") or {}).get("type")
    return (
        model.get("type") == "BPE"
        and len(steps) == 1
        and len(byte_level) == 1
        and byte_level[0].get("use_regex", True)
        and normalizer in (None, "NFC")
    )


def _byte_level_vocab(tokenizer_dir: Path, spec: dict[str, Any], vocab_size: int) -> GGUFVocab:
    import gguf
    from gguf import TokenType

    vocab: dict[str, int] = spec["model"].get("vocab") or {}
    added = {t["id"]: t for t in spec.get("added_tokens") or [] if isinstance(t.get("id"), int)}
    highest = max([*vocab.values(), *added], default=-1)
    if highest >= vocab_size:
        raise ElmforgeError(
            f"{tokenizer_dir / 'tokenizer.json'}: token id {highest} is beyond the model's "
            f"vocab_size {vocab_size}"
        )
    by_id = {index: token for token, index in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(str(added[i]["content"]).encode("utf-8"))
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i].encode("utf-8"))
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]".encode())
            types.append(TokenType.UNUSED)
    merges = gguf.SpecialVocab(tokenizer_dir, load_merges=True).merges
    return GGUFVocab("gpt2", "gpt-2", tokens, types, merges=list(merges))


def add_vocab(writer: Any, vocab: GGUFVocab, tokenizer_dir: Path) -> None:
    """Write ``vocab`` and the directory's special tokens and chat template into ``writer``."""
    import gguf

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    # gguf warns about the pair template (<s> A <s> B, LLaMA's own); what it writes is right.
    gguf_log = logging.getLogger("gguf")
    level = gguf_log.level
    gguf_log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(
            tokenizer_dir, load_merges=vocab.merges is not None, n_vocab=len(vocab.tokens)
        )
    finally:
        gguf_log.setLevel(level)
    special.add_to_gguf(writer, quiet=True)


# -- GGUF -> tokenizer files ---------------------------------------------------------------------
def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value of a :class:`gguf.GGUFReader` as plain Python (lists for arrays)."""
    entry = reader.get_field(key)
    if entry is None:
        return default
    return entry.contents()


def checked_int(value: Any, key: str, source: str, least: int = 0) -> int:
    """``value`` of metadata ``key`` as an int of at least ``least``, or a one-line error (a
    file may hold a string, a float or an array where a count or an id belongs)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CheckpointError(f"{source}: {key} is {value!r}, expected an integer >= {least}")
    return value


def int_field(reader: Any, key: str, source: str, default: int, least: int = 0) -> int:
    """An integer metadata value (``default`` when absent), checked by :func:`checked_int`."""
    return checked_int(field_value(reader, key, default), key, source, least)


def tokenizer_from_gguf(reader: Any, source: str) -> bytes | Any:
    """The GGUF's tokenizer: a SentencePiece model (the bytes of a ``tokenizer.model``) for a
    ``llama`` vocabulary, a byte-level BPE tokenizer object for ``gpt2``; else an error."""
    model = field_value(reader, "tokenizer.ggml.model")
    if model == "llama":
        return sentencepiece_model_bytes(reader, source)
    if model == "gpt2":
        return _byte_level_tokenizer(reader, source)
    raise OptionError(
        "tokenizer",
        f"{source}: tokenizer model {model!r} is not one elmforge rebuilds (llama, gpt2); "
        f"give {{option}} PATH",
    )


def _token_lists(reader: Any, source: str) -> tuple[list[str], list[int]]:
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    if not tokens or not types or len(tokens) != len(types):
        raise CheckpointError(f"{source}: no usable tokenizer.ggml.tokens / token_type")
    return tokens, types


def sentencepiece_model_bytes(reader: Any, source: str) -> bytes:
    """A SentencePiece BPE ``ModelProto`` holding the GGUF's pieces, scores and types.

    Settings GGUF does not store are LLaMA-2's: identity normaliser without whitespace removal,
    whitespace escaped as ``▁``, whitespace-only pieces allowed (llama.cpp never splits words
    before merging, and neither does our fast tokenizer)."""
    from gguf import TokenType
    from sentencepiece import sentencepiece_model_pb2

    piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    # The same kinds under the same names in both formats (llama.cpp took SentencePiece's).
    kinds = ("NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE")
    piece_types = {int(TokenType[name]): getattr(piece, name) for name in kinds}
    tokens, types = _token_lists(reader, source)
    scores = field_value(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    proto = sentencepiece_model_pb2.ModelProto()
    for text, score, kind in zip(tokens, scores, types):
        entry = proto.pieces.add()
        entry.piece, entry.score = text, float(score)
        entry.type = piece_types.get(kind, piece.NORMAL)
    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = TokenType.BYTE in types
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id = int_field(reader, "tokenizer.ggml.unknown_token_id", source, 0)
    trainer.bos_id = int_field(reader, "tokenizer.ggml.bos_token_id", source, -1, least=-1)
    trainer.eos_id = int_field(reader, "tokenizer.ggml.eos_token_id", source, -1, least=-1)
    trainer.pad_id = int_field(reader, "tokenizer.ggml.padding_token_id", source, -1, least=-1)
    for name, index in (("unk", trainer.unk_id), ("bos", trainer.bos_id), ("eos", trainer.eos_id)):
        if index >= len(tokens):
            raise CheckpointError(f"{source}: {name} token id {index} is outside the vocabulary")
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(field_value(reader, "tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _byte_level_tokenizer(reader: Any, source: str) -> Any:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tokens, _ = _token_lists(reader, source)
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges", [])]
    backend = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    special = {}
    for name in ("unk", "bos", "eos", "pad"):
        key = "unknown" if name == "unk" else "padding" if name == "pad" else name
        index = field_value(reader, f"tokenizer.ggml.{key}_token_id")
        if isinstance(index, int) and 0 <= index < len(tokens):
            special[f"{name}_token"] = tokens[index]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        add_bos_token=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(field_value(reader, "tokenizer.ggml.add_eos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e30),
        **special,
    )
