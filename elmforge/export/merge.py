"""``elmforge merge-adapter``: a base model and a PEFT adapter written as one model directory.

Applying the adapter (and untying OpenELM's head when the embedding is adapted) is model work,
:mod:`elmforge.modeldir.adapters`; this is the verb around it: the output claimed by the common
rule, the merge checked for finite weights, the directory completed and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

from elmforge.files import atomic_directory, claim_output
from elmforge.modeldir.adapters import apply_adapter
from elmforge.modeldir.loading import load
from elmforge.modeldir.save import write_model_dir


def merge_adapter_dir(
    base: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | None = None,
    force: bool = False,
) -> Path:
    """BASE + ADAPTER -> a merged model directory at ``out_dir``."""
    inputs = tuple(p for p in (base, adapter_dir) if Path(p).exists())
    out = claim_output(out_dir, "merge-adapter", force, inputs=inputs)
    loaded = load(base, tokenizer=tokenizer, device="cpu", dtype="fp32")
    merged = apply_adapter(loaded.model, adapter_dir)
    with atomic_directory(out, verb="merge-adapter") as tmp:
        write_model_dir(merged, loaded.tokenizer, tmp)
    return out
