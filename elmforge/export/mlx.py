"""OpenELM -> MLX for Apple devices, on mlx-lm's own converter (``mlx_lm.convert``).

mlx-lm already reads OpenELM's HF layout (``mlx_lm/models/openelm.py``), so the weights are
converted (and optionally quantised: affine, 4 or 8 bits, ``group_size`` 32/64/128) by mlx-lm
itself. What elmforge adds is the rest of a complete directory: mlx-lm loads the tokenizer and
chat template from the same directory as the weights, and Apple's hub repos ship neither, so the
source is first completed in a temporary staging directory (links to the weights plus our
tokenizer files; the input is never written), and our tokenizer files replace the ones mlx-lm
re-saves (transformers 5 would drop ``add_bos_token`` and name a class transformers 4 lacks).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from elmforge.errors import CheckpointError, ElmforgeError, OptionError, first_line
from elmforge.layout import (
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG,
    SENTENCEPIECE_MODEL,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
)

QUANTIZE_BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
# Files of a complete directory that elmforge writes and mlx-lm would re-save differently.
COMPLETION_FILES = (
    TOKENIZER_JSON,
    TOKENIZER_CONFIG,
    SENTENCEPIECE_MODEL,
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG,
)


def hf_to_mlx(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quantize: int | None = None,
    group_size: int = 64,
    force: bool = False,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Convert an OpenELM model directory (or a run / checkpoint directory) for mlx-lm.

    ``quantize``: None keeps the weights' dtype; 4 or 8 quantises with mlx-lm's affine scheme in
    groups of ``group_size``. The output is complete (tokenizer, chat template for -Instruct
    models, generation config) and written to a temporary name, then renamed.
    """
    from elmforge.files import atomic_directory, claim_output
    from elmforge.layout import copy_model_files, resolve_model_dir
    from elmforge.modeldir.complete import (
        complete_model_dir,
        is_instruct,
        pick_tokenizer,
        read_config,
    )

    if quantize is not None and quantize not in QUANTIZE_BITS:
        raise OptionError("quantize", f"{{option}} {quantize}: expected 4 or 8 (bits)")
    if group_size not in GROUP_SIZES:
        sizes = ", ".join(map(str, GROUP_SIZES))
        raise OptionError("group_size", f"{{option}} {group_size}: expected one of {sizes}")
    model_dir = resolve_model_dir(model_dir)
    config = read_config(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise CheckpointError(f"{model_dir}: no model weights (*.safetensors)")
    tokenizer, _ = pick_tokenizer(model_dir, tokenizer, config, required=True)
    convert = _mlx_convert()
    target = claim_output(out_dir, "convert", force, inputs=(model_dir,))
    instruct = is_instruct(model_dir, config)
    with tempfile.TemporaryDirectory(prefix="elmforge-mlx-source-") as staging_name:
        staging = Path(staging_name)
        copy_model_files(model_dir, staging, weights="link")
        complete_model_dir(staging, tokenizer, require_tokenizer=True, instruct=instruct)
        with atomic_directory(target, verb="convert") as tmp:
            converted = tmp / "mlx"
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log):
                    convert(
                        hf_path=str(staging),
                        mlx_path=str(converted),
                        quantize=quantize is not None,
                        q_bits=quantize,
                        q_group_size=group_size if quantize is not None else None,
                    )
            except Exception as err:  # mlx-lm raises whatever its loaders and mlx raise
                raise CheckpointError(
                    f"{model_dir}: mlx-lm could not convert it ({type(err).__name__}: "
                    f"{first_line(err)})"
                ) from None
            for item in converted.iterdir():
                os.replace(item, tmp / item.name)
            converted.rmdir()
            for name in COMPLETION_FILES:
                if (staging / name).is_file():
                    shutil.copyfile(staging / name, tmp / name)
    return target


def _mlx_convert():
    try:
        from mlx_lm import convert
    except ImportError as err:
        raise ElmforgeError(
            f"hf-to-mlx needs mlx-lm ({first_line(err)}): pip install mlx-lm "
            f"(on Linux also 'mlx[cpu]')"
        ) from None
    return convert
