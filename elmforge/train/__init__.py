"""Pretraining: run configs, the training loop, checkpoints, distributed set-up, logging."""

from elmforge.train.checkpoint import average_checkpoints
from elmforge.train.config import RunConfig
from elmforge.train.loop import pretrain

__all__ = ["RunConfig", "average_checkpoints", "pretrain"]
