"""Checkpoints of a run: atomic writes, integrity manifests, auto-resume, retention, averaging.

A run directory holds ``checkpoints/step-NNNNNNNN/``, each with

- ``model/``: the model in HF layout (``config.json``, ``model.safetensors``, tokenizer files),
  loadable by ``AutoModelForCausalLM.from_pretrained`` after ``import elmforge``;
- ``optimizer.pt``: the full (unsharded, world-size independent) AdamW state keyed by parameter
  name, from ``torch.distributed.checkpoint.state_dict``;
- ``rng.pt``: every rank's torch / CUDA / numpy / python RNG states;
- ``trainer_state.json``: step, every rank's data-loader state, counters;
- ``manifest.json``: size and sha256 of every file above, written last.

A checkpoint is written into a temporary sibling directory and renamed into place, so a run killed
at any moment (SIGKILL included) leaves either the whole checkpoint or none. Resumption verifies
the manifest and falls back to the previous intact checkpoint with a message naming the problem.
Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``, safetensors).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elmforge.errors import CheckpointError, ConfigError, OptionError, first_line
from elmforge.files import atomic_directory, claim_output, clean_temporaries
from elmforge.layout import (
    ADAPTER_WEIGHTS,
    CHECKPOINT_MODEL,
    CHECKPOINTS,
    RESERVED_NAMES,
    WEIGHTS,
    RunDir,
    list_checkpoints,
    step_dir_name,
)
from elmforge.modeldir.save import model_from_state, save_model

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
RNG_STATE = "rng.pt"
# The weights a checkpoint's model/ holds: a whole model, or (fine-tuning with PEFT) an adapter.
MODEL_WEIGHTS = (WEIGHTS, ADAPTER_WEIGHTS)


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove what a killed run left half-written (checkpoints, final/, config.yaml, loss.png);
    complete checkpoints are never touched, nor the temporaries of other verbs writing into the
    run (``average --out RUN/averaged``) or of processes still running, and an old ``final/``
    that a kill left aside is put back (:func:`elmforge.files.clean_temporaries`)."""
    clean_temporaries(run_dir, names=RESERVED_NAMES.__contains__)
    clean_temporaries(RunDir(run_dir).checkpoints)


# -- manifests -------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> None:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": "elmforge-checkpoint-1", **(extra or {}), "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def recorded_sha256(directory: Path, name: str) -> str | None:
    """The sha256 the checkpoint's manifest records for ``name`` (a path inside the checkpoint),
    None when there is no readable manifest or it does not list the file."""
    try:
        files = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))["files"]
        return files[name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_checkpoint(directory: Path) -> None:
    """Raise CheckpointError naming the first missing, truncated or altered file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{manifest_path}: unreadable manifest") from None
    for required in (TRAINER_STATE, OPTIMIZER_STATE, RNG_STATE):
        if required not in files:
            raise CheckpointError(f"{directory}: manifest lists no {required}")
    if not any(f"{CHECKPOINT_MODEL}/{weights}" in files for weights in MODEL_WEIGHTS):
        raise CheckpointError(f"{directory}: manifest lists no {CHECKPOINT_MODEL}/{WEIGHTS}")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {entry['size']}")
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: sha256 differs from the manifest (corrupt)")


# -- finding checkpoints -------------------------------------------------------------------------------
def find_resume_checkpoint(
    run_dir: Path,
    report: Callable[[str], None] = print,
    check: Callable[[Path], None] = verify_checkpoint,
) -> Path | None:
    """The newest checkpoint that passes ``check`` (default: its manifest verifies); the others
    are reported and skipped."""
    candidates = list(reversed(list_checkpoints(run_dir)))
    for i, path in enumerate(candidates):
        try:
            check(path)
        except CheckpointError as err:
            following = candidates[i + 1].name if i + 1 < len(candidates) else None
            fallback = f"falling back to {following}" if following else "no earlier checkpoint"
            report(f"checkpoint {path.name} is unusable ({err}); {fallback}")
            continue
        return path
    return None


def load_resume_checkpoint(
    run_dir: Path,
    report: Callable[[str], None] = print,
    load: Callable[[Path], dict[str, Any]] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint that verifies and loads (``load``, default
    :func:`load_checkpoint`; an optimizer or RNG state refused as unsafe counts as unusable: the
    previous checkpoint is tried); None for a run without checkpoints. A run whose checkpoints
    are all unusable is an error: starting again from step 0 would write over its metrics and
    checkpoints."""
    loaded: dict[Path, dict[str, Any]] = {}
    read = load or load_checkpoint

    def verify_and_load(path: Path) -> None:
        verify_checkpoint(path)
        loaded[path] = read(path)

    path = find_resume_checkpoint(run_dir, report, verify_and_load)
    if path is not None:
        return path, loaded[path]
    count = len(list_checkpoints(run_dir))
    if count:
        raise CheckpointError(
            f"{RunDir(run_dir).checkpoints}: none of the run's {count} checkpoint(s) is usable "
            "(reasons above); move them away to start the run again from step 0"
        )
    return None


def latest_checkpoints(run_dir: Path, count: int) -> list[Path]:
    """The ``count`` (>= 1) newest intact checkpoints' model directories, oldest first."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise OptionError("count", f"{{option}} {count}: must be at least 1", flag="--last")
    good = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        good.append(path / CHECKPOINT_MODEL)
        if len(good) == count:
            break
    if len(good) < count:
        raise CheckpointError(
            f"{run_dir}: {len(good)} intact checkpoint(s) under {CHECKPOINTS}/, "
            f"{count} asked for ({{option}} {count})",
            option="count",
            flag="--last",
        )
    return list(reversed(good))


def apply_retention(run_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


# -- RNG states ------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors/tuples (safe for weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- save / load ------------------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], None],
    optimizer_state: dict[str, Any],
    rng_states: Sequence[dict[str, Any]],
    trainer_state: dict[str, Any],
    name: str | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNNNN`` (or ``checkpoints/NAME``) atomically, with its manifest
    (rank 0 only). ``write_model(directory)`` writes the trainable state into ``model/`` (a whole
    model in HF layout, or a PEFT adapter: the training task decides). Only ``step-*``
    directories are resumed from, averaged or pruned."""
    final = RunDir(run_dir).checkpoints / (name or step_dir_name(step))
    with atomic_directory(final) as tmp:
        write_model(tmp / CHECKPOINT_MODEL)
        torch.save(optimizer_state, tmp / OPTIMIZER_STATE)
        torch.save(list(rng_states), tmp / RNG_STATE)
        (tmp / TRAINER_STATE).write_text(
            json.dumps({"step": step, **trainer_state}, indent=1), encoding="utf-8"
        )
        write_manifest(tmp, {"step": step})
    return final


def checkpoint_world_size(directory: Path) -> int:
    """The process count that wrote a checkpoint (its ``trainer_state.json``; 1 when unreadable:
    the checkpoint's own checks report damage when it is loaded)."""
    try:
        state = json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8"))
        return int(state.get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """``{"model", "optimizer", "rng", "trainer"}`` of a verified checkpoint directory (``model``:
    the tensors of ``model/model.safetensors``, or of ``model/adapter_model.safetensors`` for a
    PEFT run); every file of a checkpoint is read here, the one place to guard; a file
    that cannot be read, or holds more than tensors and plain containers (refused by
    ``weights_only``: never unpickled), is a CheckpointError naming it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    model_dir = directory / CHECKPOINT_MODEL
    weights = next((n for n in MODEL_WEIGHTS if (model_dir / n).is_file()), WEIGHTS)
    return {
        "model": _read_state(model_dir / weights, load_file),
        **load_training_state(directory),
    }


def load_training_state(directory: Path) -> dict[str, Any]:
    """``{"optimizer", "rng", "trainer"}`` of a checkpoint directory (its weights are read by
    whoever knows their layout: a full model or an adapter), with :func:`load_checkpoint`'s
    errors."""
    directory = Path(directory)
    return {
        "optimizer": _read_state(directory / OPTIMIZER_STATE, _load_tensors),
        "rng": _read_state(directory / RNG_STATE, _load_tensors),
        "trainer": _read_state(
            directory / TRAINER_STATE, lambda p: json.loads(p.read_text("utf-8"))
        ),
    }


def _read_state(path: Path, read: Callable[[Path], Any]) -> Any:
    import pickle

    try:
        return read(path)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused as unsafe (it holds objects other than tensors; never unpickled)"
        ) from None
    except Exception as err:  # OSError, a truncated zip, bad JSON...
        raise CheckpointError(f"{path}: cannot load ({first_line(err)})") from None


def _load_tensors(path: Path) -> Any:
    return torch.load(path, weights_only=True)


# -- averaging -------------------------------------------------------------------------------------------------
def average_checkpoints(paths: list[Path], out_dir: Path, force: bool = False) -> Path:
    """The paper's checkpoint averaging: the element-wise mean of several checkpoints' weights.

    ``paths`` name OpenELM model directories (:func:`elmforge.layout.resolve_model_dir`:
    also ``step-N`` checkpoint directories) of one run (same shapes). The mean is taken in float64
    and stored in the checkpoints' dtype; config and tokenizer come from the last path. Written
    atomically to ``out_dir`` (HF layout), which may replace only an earlier average (with
    ``force``; see :func:`elmforge.files.claim_output`).
    """
    from safetensors import safe_open

    from elmforge.layout import CONFIG, copy_model_files, resolve_model_dir
    from elmforge.model.integrity import (
        check_finite,
        check_openelm_config,
        read_config_json,
        read_openelm_config,
    )

    if not paths:
        raise CheckpointError("average: no checkpoints given")
    model_dirs = [resolve_model_dir(p) for p in paths]
    for model_dir in model_dirs:
        check_openelm_config(read_config_json(model_dir), str(model_dir / CONFIG))
    out_dir = claim_output(out_dir, "average", force, inputs=tuple(paths))
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for model_dir in model_dirs:
        weights = model_dir / WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{model_dir}: no model.safetensors")
        try:
            with safe_open(weights, "pt") as handle:
                keys = set(handle.keys())
                if total and keys != set(total):
                    raise CheckpointError(
                        f"{weights}: tensor names differ from {model_dirs[0] / WEIGHTS}"
                    )
                tensors = {key: handle.get_tensor(key) for key in keys}
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{weights}: corrupt or truncated ({first_line(err)})") from None
        check_finite(tensors, str(weights))
        for key, tensor in tensors.items():
            if key in total and tensor.shape != total[key].shape:
                raise CheckpointError(
                    f"{weights}: {key} has shape {tuple(tensor.shape)}, expected "
                    f"{tuple(total[key].shape)} (as in {model_dirs[0] / WEIGHTS})"
                )
            dtypes[key] = tensor.dtype
            total[key] = total[key] + tensor.double() if key in total else tensor.double()
    averaged = {k: (v / len(model_dirs)).to(dtypes[k]) for k, v in total.items()}
    last = model_dirs[-1]
    config = read_openelm_config(last)
    # Checked before anything is written, so an error names the checkpoint, not a temporary.
    model = model_from_state(config, averaged, str(last))
    with atomic_directory(out_dir, verb="average") as tmp:
        from elmforge.modeldir.complete import complete_model_dir, is_instruct, read_config

        # The last checkpoint's small files (tokenizer, chat template), then the averaged model.
        copy_model_files(last, tmp, weights="skip")
        save_model(model, tmp)
        instruct = is_instruct(out_dir) or is_instruct(last, read_config(last))
        complete_model_dir(tmp, instruct=instruct)
        sources = [str(p) for p in model_dirs]
        (tmp / "averaged_from.json").write_text(json.dumps(sources, indent=1), encoding="utf-8")
    return Path(out_dir)


def average_command(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    last: int | None = None,
    force: bool = False,
) -> tuple[Path, list[Path]]:
    """``elmforge average``: the given checkpoints (or, with ``last``, the newest intact ones of
    the one run directory given) averaged into ``out_dir``; returns it and what was averaged."""
    if last is not None:
        if len(paths) != 1:
            raise ConfigError("--last N takes exactly one run directory")
        sources = latest_checkpoints(Path(paths[0]), last)
    else:
        sources = [Path(p) for p in paths]
    return average_checkpoints(sources, Path(out_dir), force=force), sources
