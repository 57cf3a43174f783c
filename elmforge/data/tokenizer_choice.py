"""What ``data.tokenizer`` means, in one place (training, ``data inspect``, the demo, loading).

- a path (``tokenizer.model``, a tokenizer directory) or a hub name: that tokenizer;
- null: the LLaMA-2 SentencePiece model OpenELM was trained with, found by
  :func:`elmforge.data.tokenizer.default_tokenizer_path` (an error naming the ways to provide it
  when it cannot be found);
- ``auto``: LLaMA-2 when it can be found, else ``bpe``;
- ``bpe``: a byte-level BPE tokenizer of ``data.bpe_vocab_size`` tokens trained on a bounded prefix
  of the training sources (:func:`bounded_texts`), kept where the caller says (a run keeps it in
  its ``tokenizer/``; ``data inspect`` in the user cache, keyed by sources and size).

And which tokenizer a model directory uses (:func:`model_tokenizer`, for the loader and export):
the one given, else the directory's own, else LLaMA-2's for a model of its 32000-token vocabulary
(Apple's hub repositories ship no tokenizer), else an error saying how to provide one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from elmforge.data.config import DataConfig, load_data_config
from elmforge.errors import ConfigError, OptionError
from elmforge.layout import TOKENIZER_FILES, TOKENIZER_JSON

# Enough text for a BPE vocabulary of a few thousand tokens, and minutes saved over whole sources.
BPE_TRAINING_CHARACTERS = 8_000_000


def llama2_missing_message(subject: str) -> str:
    """How to provide the LLaMA-2 tokenizer, for errors that need it (``subject``: the option or
    config field that takes it)."""
    return f"{subject}: the LLaMA-2 tokenizer was not found; {_llama2_ways(subject)}"


def _llama2_ways(option: str) -> str:
    from elmforge.data.tokenizer import LLAMA2_TOKENIZER_ENV, llama2_cache_path

    return (
        f"give its tokenizer.model as {option}, set ${LLAMA2_TOKENIZER_ENV}, or install it once "
        f"with `elmforge tokenizer install PATH` (into {llama2_cache_path()})"
    )


def has_own_tokenizer(model_dir: Path) -> bool:
    """Whether a model directory brings its tokenizer (``tokenizer.json`` or ``tokenizer.model``)."""
    return any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES)


def model_tokenizer(
    model_dir: str | os.PathLike,
    config: Mapping[str, Any] | None,
    given: Any = None,
    *,
    required: bool = True,
) -> Any:
    """The tokenizer a model directory is used with: ``given`` (an object or a spec) when there is
    one, else the directory itself when it has a tokenizer, else, for a model with LLaMA-2's
    32000-token vocabulary (``config``: its ``config.json``), LLaMA-2's ``tokenizer.model`` where
    :func:`elmforge.data.tokenizer.default_tokenizer_path` finds it: what Apple evaluated with.

    Anything else is an :class:`OptionError` on ``tokenizer`` (:func:`missing_tokenizer_message`),
    or None when not ``required``: scores and text depend on the exact tokenizer, so it is never
    guessed.
    """
    if given is not None:
        return given
    model_dir = Path(model_dir)
    if has_own_tokenizer(model_dir):
        return model_dir
    from elmforge.data.tokenizer import LLAMA2_VOCAB_SIZE, default_tokenizer_path

    vocab_size = (config or {}).get("vocab_size")
    if vocab_size == LLAMA2_VOCAB_SIZE:
        llama2 = default_tokenizer_path()
        if llama2 is not None:
            return llama2
    if not required:
        return None
    raise OptionError("tokenizer", missing_tokenizer_message(model_dir, vocab_size))


def missing_tokenizer_message(model_dir: Path, vocab_size: Any) -> str:
    """The one error for a model directory without a tokenizer (``{option}``: the tokenizer
    option), saying how to provide one: the option, or for a 32000-token model LLaMA-2's."""
    from elmforge.data.tokenizer import LLAMA2_VOCAB_SIZE

    head = (
        f"{model_dir}: the model directory has no tokenizer ({' or '.join(TOKENIZER_FILES)}) and "
    )
    if vocab_size != LLAMA2_VOCAB_SIZE:
        return (
            head + f"its vocab_size {vocab_size} is not LLaMA-2's {LLAMA2_VOCAB_SIZE}; "
            "give {option} PATH"
        )
    return (
        head
        + "the LLaMA-2 tokenizer (its vocabulary) was not found; "
        + _llama2_ways("{option} PATH")
    )


def bounded_texts(
    sources: Sequence[Any], max_characters: int = BPE_TRAINING_CHARACTERS, split: str = "train"
) -> Iterator[str]:
    """Documents of every source in turn, each source contributing about an equal share of
    ``max_characters`` (a source stops after the document that reaches its share)."""
    from elmforge.data.sources import iter_texts

    budget = max_characters // max(1, len(sources))
    for source in sources:
        used = 0
        for text in iter_texts(source, split):
            yield text
            used += len(text)
            if used >= budget:
                break


def iter_training_texts(
    data: str | os.PathLike, split: str = "train", max_documents: int | None = None
) -> Iterator[str]:
    """Documents of a YAML data config's sources (in turn) or of one source spec string, for
    ``elmforge tokenizer train --data``."""
    from elmforge.data.sources import iter_texts

    if str(data).endswith((".yaml", ".yml")):
        config = load_data_config(data)
        sources, max_bad_rows = config.sources_for(split), config.max_bad_rows
    else:
        sources, max_bad_rows = [str(data)], 0
    texts = itertools.chain.from_iterable(iter_texts(s, split, max_bad_rows) for s in sources)
    return itertools.islice(texts, max_documents)


def bpe_cache_dir(config: DataConfig) -> Path:
    """Where ``data inspect`` keeps a BPE tokenizer trained for ``config``'s sources and size."""
    from elmforge.data.tokenizer import user_cache_dir

    key = json.dumps(
        [config.sources, config.bpe_vocab_size, BPE_TRAINING_CHARACTERS], sort_keys=True
    )
    return user_cache_dir() / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16]


def resolve_tokenizer(
    config: DataConfig,
    bpe_dir: Path | None = None,
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    report: Callable[[str], None] = print,
) -> tuple[Any, str]:
    """The tokenizer ``config.tokenizer`` means, and the spec (a path or name) it came from.

    ``bpe_dir`` is where a trained BPE tokenizer is kept (default: :func:`bpe_cache_dir`); under
    several processes only ``is_main`` trains it and ``barrier()`` lets the others wait for it.
    """
    from elmforge.data.tokenizer import default_tokenizer_path, load_tokenizer

    spec = config.tokenizer
    if spec not in (None, "auto", "bpe"):
        return load_tokenizer(spec), str(spec)
    llama = default_tokenizer_path() if spec != "bpe" else None
    if llama is not None:
        return load_tokenizer(llama), str(llama)
    if spec is None:
        raise ConfigError(
            llama2_missing_message("data.tokenizer")
            + " (or set data.tokenizer to auto or bpe to train one)"
        )
    trained = Path(bpe_dir) if bpe_dir is not None else bpe_cache_dir(config)
    if is_main and not (trained / TOKENIZER_JSON).is_file():
        from elmforge.data.tokenizer import train_bpe_tokenizer

        report(
            f"training a {config.bpe_vocab_size}-token BPE tokenizer on the training sources "
            f"into {trained}"
        )
        train_bpe_tokenizer(
            bounded_texts(config.sources_for("train")), config.bpe_vocab_size, trained
        )
    barrier()
    return load_tokenizer(trained), str(trained)
