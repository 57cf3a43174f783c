"""Complete model directories: what every tool needs beside the weights, written by elmforge.

Apple's hub repositories (``apple/OpenELM-*``) hold ``config.json`` and the weights only: no
tokenizer, no chat template. A *complete* model directory also has

- ``tokenizer.json`` + ``tokenizer_config.json``: our exact fast tokenizer (for LLaMA-2, the
  SentencePiece model converted so that it encodes exactly like ``sentencepiece``; see
  :mod:`elmforge.data.tokenizer`), loadable by ``AutoTokenizer`` and mlx-lm;
- ``tokenizer.model``: the SentencePiece model itself, when the tokenizer is one (llama.cpp's
  converter and ``hf-to-gguf`` read its scores and piece types);
- ``generation_config.json`` (bos/eos ids, from ``config.json``);
- the chat template, as ``chat_template.jinja`` (transformers 5) and as ``chat_template`` in
  ``tokenizer_config.json`` (older transformers, gguf's converter), when one is given or the
  directory is an ``-Instruct`` model (Apple's template, :data:`APPLE_CHAT_TEMPLATE`).

:func:`complete_model_dir` adds what is missing in place (each file written to a temporary name
and renamed); pretraining's ``final/`` and checkpoints, fine-tuning, ``average``, ``prepare``
and every ``convert`` output call it (:mod:`elmforge.modeldir.save` for the weights). Which
tokenizer a directory uses is :func:`elmforge.data.tokenizer_choice.model_tokenizer`, the
loader's rule too; reading ``config.json`` is :func:`read_config` here, for every verb.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elmforge.data.chat import APPLE_CHAT_TEMPLATE
from elmforge.errors import ElmforgeError
from elmforge.files import atomic_write_json, atomic_write_text, replace_files
from elmforge.layout import (
    CHAT_TEMPLATE_FILE,
    CONFIG,
    GENERATION_CONFIG,
    SENTENCEPIECE_MODEL,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    enclosing_run_dir,
)
from elmforge.model.integrity import check_openelm_config, read_config_json

# transformers 5 writes "TokenizersBackend", which transformers 4 (still common beside mlx-lm)
# does not know; both read this name.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of an OpenELM model directory as a dict, or a one-line error (the rule
    of :func:`elmforge.model.integrity.read_config_json`, OpenELM only)."""
    path = Path(model_dir) / CONFIG
    config = read_config_json(model_dir if Path(model_dir).is_dir() else path)
    check_openelm_config(config, str(path))
    return config


def is_instruct(model_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> bool:
    """Whether the directory holds an ``-Instruct`` model: by its name, the name of the run it
    belongs to (a run's ``final/``, a checkpoint's ``model/``, ``RUN/averaged``), or
    ``config``'s ``_name_or_path`` (which transformers 4 wrote)."""
    path = Path(model_dir).resolve()
    names = [path.name, str((config or {}).get("_name_or_path", ""))]
    run = enclosing_run_dir(path)
    if run is not None:
        names.append(run.name)
    return any("instruct" in name.lower() for name in names)


def has_tokenizer_files(model_dir: Path) -> bool:
    """Whether the directory has the complete tokenizer files (nothing to write)."""
    return (model_dir / TOKENIZER_JSON).is_file() and (model_dir / TOKENIZER_CONFIG).is_file()


# -- completing ------------------------------------------------------------------------------------
def complete_model_dir(
    model_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    chat_template: str | None = None,
    require_tokenizer: bool = False,
    instruct: bool | None = None,
) -> Path:
    """Make ``model_dir`` complete in place (see the module docstring) and return it.

    ``tokenizer``: a tokenizer object, or a spec (``tokenizer.model``, a tokenizer directory)
    written into the directory (replacing its own); None keeps the directory's tokenizer,
    converts a lone ``tokenizer.model``, or, for LLaMA-2's 32000-token vocabulary, uses the
    LLaMA-2 model (:func:`elmforge.data.tokenizer_choice.model_tokenizer`). Without any of these
    the tokenizer is left out, or, with ``require_tokenizer``, it is a one-line error saying how
    to provide it. ``chat_template`` is written when given; otherwise the directory's own template
    is kept (also when its tokenizer files are replaced), and an ``-Instruct`` directory
    (``instruct`` overrides :func:`is_instruct`, for temporary directories) without one gets
    Apple's.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if instruct is None:
        instruct = is_instruct(model_dir, config)
    tokenizer, source = pick_tokenizer(model_dir, tokenizer, config, require_tokenizer)
    existing_template = current_chat_template(model_dir)  # before tokenizer_config.json changes
    if tokenizer is not None:
        _write_tokenizer(model_dir, tokenizer, source, config)
    if has_tokenizer_files(model_dir):
        candidates = (
            chat_template,
            current_chat_template(model_dir),
            existing_template,
            APPLE_CHAT_TEMPLATE if instruct else None,
        )
        template = next((t for t in candidates if t is not None), None)
        if template is not None:
            write_chat_template(model_dir, template)
    if not (model_dir / GENERATION_CONFIG).is_file():
        _write_generation_config(model_dir, config)
    return model_dir


def pick_tokenizer(
    model_dir: Path, tokenizer: Any, config: dict[str, Any], required: bool
) -> tuple[Any, Path | None]:
    """(tokenizer object to write or None to keep what is there, its SentencePiece model)."""
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.data.tokenizer_choice import model_tokenizer

    if tokenizer is None and has_tokenizer_files(model_dir):
        return None, None
    tokenizer = model_tokenizer(model_dir, config, tokenizer, required=required)
    if tokenizer is None:
        return None, None
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    return tokenizer, sentencepiece_source(tokenizer)


def sentencepiece_source(tokenizer: Any) -> Path | None:
    """The SentencePiece model a tokenizer was built from (``load_tokenizer`` records it as
    ``name_or_path``), if it is one: a ``.model`` file, or a directory holding ``tokenizer.model``."""
    name = getattr(tokenizer, "name_or_path", "") or ""
    if not name:
        return None
    path = Path(name)
    if path.is_dir():
        path = path / SENTENCEPIECE_MODEL
    if path.is_file() and path.suffix == ".model":
        return path
    return None


def _write_tokenizer(
    model_dir: Path, tokenizer: Any, source: Path | None, config: dict[str, Any]
) -> None:
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise ElmforgeError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens, more than the model's "
            f"vocab_size {vocab_size}"
        )
    own_model = model_dir / SENTENCEPIECE_MODEL
    # A tokenizer.model that is not this tokenizer's source would mislead llama.cpp: removed,
    # after the new files are in place.
    stale = (SENTENCEPIECE_MODEL,) if source is None else ()
    with replace_files(model_dir, last=(TOKENIZER_JSON,), remove=stale) as staging:
        tokenizer.save_pretrained(staging)
        settings = json.loads((staging / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        settings.update(tokenizer_flags(tokenizer))
        (staging / TOKENIZER_CONFIG).write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if source is not None and source.resolve() != own_model.resolve():
            shutil.copyfile(source, staging / SENTENCEPIECE_MODEL)


def tokenizer_flags(tokenizer: Any) -> dict[str, Any]:
    """``tokenizer_config.json`` entries transformers 5 leaves out but other readers need: the
    class name every version knows and whether bos/eos are added (from an actual encoding)."""
    from elmforge.data.tokenizer import adds_special_tokens

    adds_bos, adds_eos = adds_special_tokens(tokenizer)
    return {
        "tokenizer_class": TOKENIZER_CLASS,
        "add_bos_token": adds_bos,
        "add_eos_token": adds_eos,
    }


def current_chat_template(model_dir: Path) -> str | None:
    """The directory's chat template (``chat_template.jinja`` first, as transformers 5 reads)."""
    jinja = model_dir / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        settings = json.loads((model_dir / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = settings.get("chat_template") if isinstance(settings, dict) else None
    return template if isinstance(template, str) else None


def write_chat_template(model_dir: Path, template: str) -> None:
    """Write ``template`` both where transformers 5 reads it and in ``tokenizer_config.json``."""
    config_path = model_dir / TOKENIZER_CONFIG
    try:
        settings = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ElmforgeError(f"{config_path}: cannot read the tokenizer config ({err})") from None
    jinja = model_dir / CHAT_TEMPLATE_FILE
    if not jinja.is_file() or jinja.read_text(encoding="utf-8") != template:
        atomic_write_text(jinja, template)
    if settings.get("chat_template") != template:
        settings["chat_template"] = template
        atomic_write_json(config_path, settings)


def _write_generation_config(model_dir: Path, config: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    generation = GenerationConfig(
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
    )
    atomic_write_text(model_dir / GENERATION_CONFIG, generation.to_json_string(use_diff=True))
