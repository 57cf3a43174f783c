"""Tokenizers: the LLaMA-2 SentencePiece model as an exact fast tokenizer, and BPE training.

OpenELM uses LLaMA-2's SentencePiece BPE model. transformers 5.x's own conversion of a
``tokenizer.model`` ranks BPE merges by piece id instead of by SentencePiece score, so runs of
spaces tokenise differently from ``sentencepiece`` (docs/openelm.md, "Tokenizer"). We therefore
build the Rust ``tokenizers`` BPE from the model proto ourselves: every piece keeps its id,
merges are ranked by the score of the piece they produce (SentencePiece merges the pair whose
result scores highest), unknown characters fall back to bytes, and the normaliser/decoder
reproduce SentencePiece's dummy prefix and ``▁`` whitespace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from elmforge.errors import ElmforgeError, OptionError
from elmforge.layout import SENTENCEPIECE_MODEL, TOKENIZER_JSON

SPIECE_UNDERLINE = "▁"
LLAMA2_TOKENIZER_FILE = "llama2-tokenizer.model"
LLAMA2_VOCAB_SIZE = 32000
LLAMA2_TOKENIZER_ENV = "ELMFORGE_LLAMA2_TOKENIZER"
# Set to 1 to switch off the source checkout's ../shared/data fallback (tests of the lookup use it).
NO_DEV_FALLBACK_ENV = "ELMFORGE_NO_DEV_FALLBACK"


def user_cache_dir() -> Path:
    """elmforge's per-user cache: ``$XDG_CACHE_HOME/elmforge`` (``~/.cache/elmforge``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elmforge"


def llama2_cache_path() -> Path:
    """Where ``elmforge tokenizer install`` puts the LLaMA-2 ``tokenizer.model``."""
    return user_cache_dir() / LLAMA2_TOKENIZER_FILE


def default_tokenizer_path() -> Path | None:
    """Where the LLaMA-2 ``tokenizer.model`` is, if anywhere, looked up in this order:

    1. ``$ELMFORGE_LLAMA2_TOKENIZER`` (a file);
    2. the user cache, ``$XDG_CACHE_HOME/elmforge/llama2-tokenizer.model``;
    3. development fallback: ``$ELMFORGE_SHARED/data/`` or the ``shared/data/`` directory beside a
       source checkout; ``$ELMFORGE_NO_DEV_FALLBACK=1`` switches it off (an installed wheel has
       none), so that a checkout behaves like a user's machine.

    ``--tokenizer PATH`` on any verb takes precedence over all of these. A variable set to
    something that is not a file is an error naming it: falling through to another tokenizer
    would hide the mistake.
    """
    candidates = []
    if os.environ.get(LLAMA2_TOKENIZER_ENV):
        given = Path(os.environ[LLAMA2_TOKENIZER_ENV]).expanduser()
        if not given.is_file():
            problem = "is a directory" if given.is_dir() else "no such file"
            raise ElmforgeError(
                f"${LLAMA2_TOKENIZER_ENV}={os.environ[LLAMA2_TOKENIZER_ENV]}: {problem} "
                "(expected LLaMA-2's tokenizer.model; unset the variable to use the defaults)"
            )
        candidates.append(given)
    candidates.append(llama2_cache_path())
    candidates += development_paths(LLAMA2_TOKENIZER_FILE)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None


def development_paths(relative: str) -> list[Path]:
    """Development fallbacks for ``relative`` under the project's shared data, in order:
    ``$ELMFORGE_SHARED/data/`` and the ``shared/data/`` directory beside a source checkout; none
    when ``$ELMFORGE_NO_DEV_FALLBACK`` is set (an installed wheel has none either)."""
    if os.environ.get(NO_DEV_FALLBACK_ENV, "") not in ("", "0"):
        return []
    paths = []
    if os.environ.get("ELMFORGE_SHARED"):
        paths.append(Path(os.environ["ELMFORGE_SHARED"]) / "data" / relative)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():  # a source checkout, not an installed wheel
        paths.append(checkout.parent / "shared" / "data" / relative)
    return paths


def install_llama2_tokenizer(path: str | os.PathLike, force: bool = False) -> Path:
    """Copy LLaMA-2's ``tokenizer.model`` into the user cache, where every verb finds it without
    a tokenizer option (see :func:`default_tokenizer_path`); return where it went.

    The file is checked first (a SentencePiece BPE model of 32000 pieces with bos 1 and eos 2);
    a different file already installed is replaced only with ``force``.
    """
    from elmforge.files import atomic_write_bytes

    source = Path(path).expanduser()
    if not source.is_file():
        raise ElmforgeError(f"{source}: no such file")
    proto = _read_sentencepiece_proto(source)
    trainer = proto.trainer_spec
    shape = (len(proto.pieces), trainer.model_type, trainer.bos_id, trainer.eos_id)
    if shape != (LLAMA2_VOCAB_SIZE, 2, 1, 2):
        raise ElmforgeError(
            f"{source}: not LLaMA-2's tokenizer.model ({len(proto.pieces)} pieces, bos "
            f"{trainer.bos_id}, eos {trainer.eos_id}; expected {LLAMA2_VOCAB_SIZE} BPE pieces, "
            "bos 1, eos 2)"
        )
    target = llama2_cache_path()
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() != data and not force:
        raise ElmforgeError(
            f"{target}: a different tokenizer.model is installed; {{option}} replaces it",
            option="force",
        )
    return atomic_write_bytes(target, data)


def _piece_types():
    """SentencePiece's piece-type enum (``NORMAL``, ``USER_DEFINED``, ``UNUSED``, ``BYTE``...)."""
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.SentencePiece


def _read_sentencepiece_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # DecodeError and friends: the file is not a SentencePiece model
        raise ElmforgeError(f"{path}: not a SentencePiece model file ({exc})") from None
    if not proto.pieces:
        raise ElmforgeError(f"{path}: not a SentencePiece model file (no pieces)")
    return proto


def sentencepiece_to_fast(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes exactly like ``sentencepiece`` with the BPE model at ``path``."""
    path = Path(path)
    proto = _read_sentencepiece_proto(path)
    if proto.trainer_spec.model_type != 2:  # 2 = BPE; unigram models need another algorithm
        raise ElmforgeError(f"{path}: only SentencePiece BPE models are supported")
    normalizer_spec = proto.normalizer_spec
    if normalizer_spec.name not in ("identity", "") or normalizer_spec.remove_extra_whitespaces:
        raise ElmforgeError(
            f"{path}: SentencePiece normaliser {normalizer_spec.name!r} with "
            f"remove_extra_whitespaces={normalizer_spec.remove_extra_whitespaces} is not supported"
        )
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    types = _piece_types()
    mergeable = {
        piece.piece: piece.score
        for piece in proto.pieces
        if piece.type in (types.NORMAL, types.USER_DEFINED, types.UNUSED) and len(piece.piece) > 1
    }
    merges: list[tuple[str, str, float]] = []
    for piece, score in mergeable.items():
        splits = [
            (piece[:cut], piece[cut:])
            for cut in range(1, len(piece))
            if piece[:cut] in vocab and piece[cut:] in vocab
        ]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((left, right, score) for left, right in splits)
    # Highest score first; the sort is stable so equal scores keep the id order above.
    merges.sort(key=lambda merge: -merge[2])

    trainer = proto.trainer_spec
    unk_piece = proto.pieces[trainer.unk_id].piece
    model = BPE(
        vocab=vocab,
        merges=[(left, right) for left, right, _ in merges],
        unk_token=unk_piece,
        fuse_unk=True,
        byte_fallback=trainer.byte_fallback,
    )
    backend = Tokenizer(model)
    steps = [normalizers.Replace(" ", SPIECE_UNDERLINE)]
    if normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend(SPIECE_UNDERLINE))
    backend.normalizer = normalizers.Sequence(steps)
    decode_steps = [
        decoders.Replace(SPIECE_UNDERLINE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if normalizer_spec.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(decode_steps)

    special = {}
    for key, index in (("unk_token", trainer.unk_id), ("bos_token", trainer.bos_id)):
        if index >= 0:
            special[key] = proto.pieces[index].piece
    if trainer.eos_id >= 0:
        special["eos_token"] = proto.pieces[trainer.eos_id].piece
    if trainer.pad_id >= 0:
        special["pad_token"] = proto.pieces[trainer.pad_id].piece
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        add_bos_token=trainer.bos_id >= 0,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e30),
        # Where the SentencePiece model came from: a complete model directory keeps a copy
        # (elmforge.export.prepare), for tools that read tokenizer.model (llama.cpp's converter).
        name_or_path=str(path),
        **special,
    )


def load_tokenizer(spec: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a ``tokenizer.model`` file, a tokenizer directory or a hub name.

    A directory with ``tokenizer.json`` (Hugging Face format, e.g. one we saved) is loaded as is;
    one with only a ``tokenizer.model`` is converted exactly (see the module docstring). A name
    that is not a local path is fetched from the Hugging Face hub, which fails clearly offline.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if path.name == TOKENIZER_JSON:
            return _load_tokenizer_dir(path.parent)
        return sentencepiece_to_fast(path)
    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return _load_tokenizer_dir(path)
        if (path / SENTENCEPIECE_MODEL).is_file():
            return sentencepiece_to_fast(path / SENTENCEPIECE_MODEL)
        raise ElmforgeError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    text = str(spec)
    if (
        text.startswith((".", "/", "~"))
        or text.endswith((".model", ".json"))
        or text.count("/") > 1
    ):
        raise ElmforgeError(f"{spec}: no such tokenizer file or directory")
    return _load_tokenizer_from_hub(text)


def _load_tokenizer_dir(directory: Path) -> PreTrainedTokenizerFast:
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as exc:
        raise ElmforgeError(
            f"{directory / 'tokenizer.json'}: cannot load tokenizer ({exc})"
        ) from None
    # transformers does not save ``add_bos_token`` (the post-processor carries it); restore the
    # flag so code that reads it (lm-eval, our data pipeline) sees what the encoding does.
    if adds_special_tokens(tokenizer)[0]:
        tokenizer._add_bos_token = True
    return tokenizer


def adds_special_tokens(tokenizer: PreTrainedTokenizerFast) -> tuple[bool, bool]:
    """(bos added in front, eos added at the end) when ``tokenizer`` encodes a text: measured on
    an actual encoding, since the post-processor decides whatever the flags say."""
    ids = tokenizer("a", add_special_tokens=True).input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (
        bool(ids) and bos is not None and ids[0] == bos,
        bool(ids) and eos is not None and ids[-1] == eos,
    )


def _load_tokenizer_from_hub(name: str) -> PreTrainedTokenizerFast:
    from huggingface_hub import hf_hub_download

    for filename in (SENTENCEPIECE_MODEL, TOKENIZER_JSON):
        try:
            local = hf_hub_download(name, filename)
        except Exception as exc:
            last_error = exc
            continue
        return load_tokenizer(local)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    hint = " (HF_HUB_OFFLINE is set)" if offline else ""
    raise ElmforgeError(
        f"tokenizer {name}: not a local path and not downloadable from the Hugging Face hub"
        f"{hint}: {type(last_error).__name__}; pass a local tokenizer.model or directory"
    )


SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, no unknown tokens) on ``texts``.

    Special tokens get the LLaMA ids (unk 0, bos 1, eos 2) plus pad 3, and the bos token is
    added to every encoding like LLaMA-2's, so models and data code treat both alike.
    Saved in the Hugging Face format to ``out_dir`` when given.
    """
    from tokenizers import trainers

    from elmforge.data.config import MAX_BPE_VOCAB, MIN_BPE_VOCAB

    if vocab_size < MIN_BPE_VOCAB:
        raise OptionError(
            "vocab_size",
            f"{{option}} {vocab_size}: must be at least {MIN_BPE_VOCAB} (256 bytes + specials)",
        )
    if vocab_size > MAX_BPE_VOCAB:
        raise OptionError("vocab_size", f"{{option}} {vocab_size}: must be at most {MAX_BPE_VOCAB}")
    backend = Tokenizer(BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e30),
        **SPECIAL_TOKENS,
    )
    if out_dir is not None:
        save_tokenizer(tokenizer, out_dir)
    return tokenizer


def train_tokenizer_output(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, force: bool = False
) -> PreTrainedTokenizerFast:
    """``elmforge tokenizer train``: a BPE tokenizer written as the verb's own output directory.

    ``out_dir`` is claimed before training (:func:`elmforge.files.claim_output`: an existing
    directory is replaced only if an earlier ``tokenizer train`` wrote it, and only with
    ``force``; never a run directory) and written atomically."""
    from elmforge.files import atomic_directory, claim_output

    out_dir = claim_output(out_dir, "tokenizer train", force)
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    with atomic_directory(out_dir, verb="tokenizer train") as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike) -> Path:
    """``save_pretrained`` into ``out_dir`` beside what is there (a tokenizer often joins a model
    directory): staged in a temporary directory inside it, then every file renamed into place,
    ``tokenizer.json`` last, so a reader that finds ``tokenizer.json`` finds the whole set
    (:func:`elmforge.files.replace_files`)."""
    from elmforge.files import replace_files

    with replace_files(out_dir, last=(TOKENIZER_JSON,)) as staging:
        tokenizer.save_pretrained(staging)
    return Path(out_dir)
