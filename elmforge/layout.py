"""Where things are on disk, named in one place: the HF-layout model directory, the run directory
and its checkpoints, and what a MODEL argument names. Torch-free: every layer may import it.

A model directory holds ``config.json`` (Apple's schema), the weights (``model.safetensors``) and,
when complete (:mod:`elmforge.modeldir.complete`), the tokenizer files, ``generation_config.json``
and the chat template. Every verb that takes a model resolves its argument with
:func:`resolve_model_dir`: a model directory, a run directory (its ``final/``) or a training
checkpoint (``checkpoints/step-N``, its ``model/``).

A run directory (``elmforge pretrain``, ``elmforge finetune``, each run of a study) holds::

    config.yaml          the resolved run config (what resume compares against)
    metrics.jsonl        one JSON object per logged step
    tb/                  TensorBoard event files
    loss.png             the loss curve
    tokenizer/           a tokenizer the run trained itself (data.tokenizer: bpe)
    checkpoints/step-NNNNNNNN/   resumable checkpoints (elmforge.train.checkpoint), each with
                         model/ (HF layout) beside the optimizer, RNG and trainer state
    final/               the finished model, a complete HF-layout model directory
    adapter/             fine-tuning with PEFT: the adapter in PEFT's own format
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from elmforge.errors import CheckpointError

# -- the model directory -------------------------------------------------------------------------
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
# A PEFT adapter directory (a run's adapter/, a fine-tuning checkpoint's model/).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# -- the run directory ---------------------------------------------------------------------------
RUN_CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
LOSS_PLOT = "loss.png"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
FINAL = "final"
ADAPTER = "adapter"
# Inside a checkpoint: the model directory (any verb that loads a model accepts the checkpoint).
CHECKPOINT_MODEL = "model"
RESERVED_NAMES = frozenset(
    {RUN_CONFIG, METRICS, TENSORBOARD, LOSS_PLOT, TOKENIZER, CHECKPOINTS, FINAL, ADAPTER}
)


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def loss_plot(self) -> Path:
        return self.root / LOSS_PLOT

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run's directory (its config plus checkpoints or metrics)."""
    run = RunDir(path)
    return (
        run.root.is_dir()
        and run.config.is_file()
        and (run.checkpoints.is_dir() or run.metrics.is_file())
    )


def enclosing_run_dir(path: str | os.PathLike) -> Path | None:
    """The run directory ``path`` is in (or is), if any."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if is_run_dir(candidate):
            return candidate
    return None


# -- checkpoints inside a run --------------------------------------------------------------------
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Step directories of a run, oldest first (no verification)."""
    root = RunDir(run_dir).checkpoints
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint directory (expected step-NNNNNNNN)")
    return int(match.group(1))


# -- what MODEL names ----------------------------------------------------------------------------
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
