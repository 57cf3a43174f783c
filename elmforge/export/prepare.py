"""``elmforge prepare`` and ``convert corenet-to-hf``: complete model directories as a verb.

Completing a directory (tokenizer files, generation config, chat template) is
:func:`elmforge.modeldir.complete.complete_model_dir`, shared with every verb that writes a model;
this module is the ``prepare`` verb around it (in place, or a complete copy at ``--out``), the
CoreNet conversion completed before its rename, and :func:`completeness` for messages and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from elmforge.errors import CheckpointError, ElmforgeError
from elmforge.files import atomic_directory, claim_output
from elmforge.layout import (
    GENERATION_CONFIG,
    SENTENCEPIECE_MODEL,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    copy_model_files,
    enclosing_run_dir,
    resolve_model_dir,
)
from elmforge.modeldir.complete import (
    complete_model_dir,
    current_chat_template,
    is_instruct,
    read_config,
)


# -- elmforge prepare, convert corenet-to-hf -------------------------------------------------------
def prepare_model_dir(
    model_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """``elmforge prepare``: complete a model directory (e.g. a bare clone of Apple's hub repo)
    in place, or a complete copy of it at ``out``; returns the completed directory."""
    source = resolve_model_dir(model_dir)
    config = read_config(source)
    if not any(source.glob("*.safetensors")):
        raise CheckpointError(f"{source}: no model weights (*.safetensors)")
    if out is None:
        run = enclosing_run_dir(source)
        if run is not None:
            raise ElmforgeError(
                f"{source}: is inside the run directory {run}, which prepare does not modify; "
                f"give --out DIR for a complete copy"
            )
        # The tokenizer is found (or refused) before anything is written.
        return complete_model_dir(source, tokenizer, require_tokenizer=True)
    target = claim_output(out, "prepare", force, inputs=(source,))
    instruct = is_instruct(source, config)
    with atomic_directory(target, verb="prepare") as tmp:
        copy_model_files(source, tmp)
        complete_model_dir(tmp, tokenizer, require_tokenizer=True, instruct=instruct)
    return target


def corenet_to_model_dir(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    shape: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """``elmforge convert corenet-to-hf``: a CoreNet ``.pt`` checkpoint as a model directory,
    completed (:func:`complete_model_dir`) before it is renamed into place. ``shape``: a preset
    name or a model directory / ``config.json`` describing the model; ``tokenizer`` is required to
    load when given (else the LLaMA-2 rule applies, and no tokenizer is no error). An existing
    ``out_dir`` is replaced only if an earlier conversion wrote it, with ``force``."""
    from elmforge.model.convert import corenet_to_hf
    from elmforge.model.profile import resolve_config

    instruct = is_instruct(out_dir)

    def complete(directory: Path) -> None:
        complete_model_dir(
            directory, tokenizer, require_tokenizer=tokenizer is not None, instruct=instruct
        )

    return corenet_to_hf(checkpoint, out_dir, resolve_config(shape), finish=complete, force=force)


def completeness(model_dir: str | os.PathLike) -> dict[str, bool]:
    """Which of the files a complete directory has are present (for messages and tests)."""
    model_dir = Path(model_dir)
    names = (TOKENIZER_JSON, TOKENIZER_CONFIG, SENTENCEPIECE_MODEL, GENERATION_CONFIG)
    present = {name: (model_dir / name).is_file() for name in names}
    present["chat_template"] = current_chat_template(model_dir) is not None
    return present
