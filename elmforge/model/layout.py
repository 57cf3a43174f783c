"""The HF-layout model directory, named in one place, and what a MODEL argument names.

A model directory holds ``config.json`` (Apple's schema), the weights (``model.safetensors``) and,
when complete (:mod:`elmforge.export.prepare`), the tokenizer files, ``generation_config.json``
and the chat template. Every verb that takes a model resolves its argument with
:func:`resolve_model_dir`: a model directory, a run directory (its ``final/``) or a training
checkpoint (``checkpoints/step-N``, its ``model/``). Importing this module imports no torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from elmforge.errors import CheckpointError
from elmforge.train.run_dir import CHECKPOINT_MODEL, RunDir, is_run_dir

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Either one is a tokenizer a directory brings (load_tokenizer reads both).
TOKENIZER_FILES = (TOKENIZER_JSON, SENTENCEPIECE_MODEL)
# Files that hold weights, in any format a model directory may carry.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
WEIGHT_MODES = ("copy", "link", "skip")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory ``path`` names: itself, a run directory's ``final/``, or a checkpoint
    step directory's ``model/``; anything else is a one-line :class:`CheckpointError`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file, not a model directory")
    if is_run_dir(path):
        final = RunDir(path).final
        if (final / CONFIG).is_file():
            return final
        from elmforge.train.checkpoint import list_checkpoints  # torch: on this error path only

        steps = list_checkpoints(path)
        hint = f", e.g. {steps[-1]}" if steps else ""
        raise CheckpointError(
            f"{path}: the run has no finished model (final/) yet; pass one of its checkpoint "
            f"directories{hint}"
        )
    if not (path / CONFIG).is_file() and (path / CHECKPOINT_MODEL / CONFIG).is_file():
        return path / CHECKPOINT_MODEL
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    return path


def copy_model_files(source: Path, target: Path, weights: str = "copy") -> None:
    """The files of a model directory into ``target``: regular files only (no subdirectories),
    no hidden ones (another verb's output marker, temporaries). Weight files are copied,
    symbolic-linked (``link``: a staging directory for a converter that only reads them) or left
    out (``skip``: the small files alone)."""
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
    for item in sorted(Path(source).iterdir()):
        if not item.is_file() or item.name.startswith("."):
            continue
        if item.suffix in WEIGHT_SUFFIXES and weights != "copy":
            if weights == "link":
                (target / item.name).symlink_to(item.resolve())
            continue
        shutil.copyfile(item, target / item.name)
