"""The layout of a run directory, named in one place.

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
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
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
    {CONFIG, METRICS, TENSORBOARD, LOSS_PLOT, TOKENIZER, CHECKPOINTS, FINAL, ADAPTER}
)


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

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
